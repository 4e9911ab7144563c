"""The coordinator's settings: one frozen value built once in `main` from flags and environment.

Every setting has a documented default (see `--help`). Where system-upgrade-controller has an
environment variable for the same thing, we read the same name, so existing deployments keep working:

    SYSTEM_UPGRADE_CONTROLLER_NAMESPACE   --namespace          (default system-upgrade)
    SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL  --polling-interval   (default 15m)
    POD_NAME                              --pod-name           (the coordinator never evicts its own pod)

A flag wins over its environment variable. Bad values fail fast with a message naming the setting.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAMESPACE = "system-upgrade"
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_RELEASE_BASE_URL = "https://github.com/k3s-io/k3s/releases/download"
DEFAULT_POLLING_INTERVAL = 15 * 60.0
DEFAULT_MAX_HELD_POLLS = 1000
DEFAULT_PREFETCH_WAVES = 1
DEFAULT_AGENT_SERVICE_ACCOUNT = "k3s-upgrade-agent"
LEADER_LEASE_NAME = "k3s-upgrade-coordinator"
LEASE_TABLE_NAME = "k3s-upgrade-leases"


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the flag/variable and the value."""


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s)?"
    r"\s*(?:(\d+(?:\.\d+)?)ms)?\s*$"
)


def parse_duration(text: str, setting: str) -> float:
    """Seconds from a Go-style duration (`15m`, `1h30m`, `90s`, `250ms`) or a plain number of seconds."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        match = _DURATION.match(raw)
        if not raw or match is None or not any(match.groups()):
            raise ConfigError(
                f"{setting}: {text!r} is not a duration (examples: 15m, 90s, 1h30m, 2.5)"
            ) from None
        hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
        value = hours * 3600 + minutes * 60 + seconds + millis / 1000
    if value < 0:
        raise ConfigError(f"{setting}: {text!r} is negative")
    if not math.isfinite(value):
        raise ConfigError(f"{setting}: {text!r} is not a finite duration")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8080`) -> (host, port); port 0 means any free port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen: {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Timeouts:
    """How long the coordinator waits for things before acting (seconds)."""

    agent_heartbeat: float = 60.0
    """An agent unseen this long loses a granted/staged lease (a disrupted node keeps its slot)."""
    verify: float = 600.0
    """After `restarted`, how long the Node may take to be Ready on the target version."""
    restart_stable: float = 10.0
    """Told to agents: how long the new k3s must stay up before reporting `restarted`."""
    restart: float = 120.0
    """Told to agents: how long to wait for the new k3s process before rolling back."""
    poll_wait_max: float = 30.0
    """Upper bound of an agent long-poll (`?wait=`)."""
    resync: float = 30.0
    """Reconcile every plan at least this often even without events."""
    token_cache: float = 120.0
    """How long a successful TokenReview is trusted without asking again: as long as the API server
    caches webhook token reviews (2 min), and longer than a 30 s long-poll."""
    leader_lease: float = 15.0
    """Leader election: lease duration; renewed every third of it."""
    channel_request: float = 10.0
    """Timeout of one channel or checksum request."""
    job_deadline: float = 900.0
    """Default of a Plan's `jobActiveDeadlineSecs`: a lease not told to apply this long after its grant
    fails (0: no limit). SUC's default, as its manifest sets it."""
    job_deadline_max: float = 0.0
    """Ceiling of a Plan's `jobActiveDeadlineSecs` (0: none), as SUC's."""


@dataclass(frozen=True)
class Safety:
    """Safety checks that are on by default; each flag is an explicit opt-out documented in the README."""

    allow_downgrade: bool = False
    allow_minor_skip: bool = False
    allow_agent_skew: bool = False


@dataclass(frozen=True)
class Settings:
    """Everything the coordinator needs to run, validated."""

    kubeconfig: str | None = None
    """Path of a kubeconfig; None means in-cluster configuration."""
    namespace: str = DEFAULT_NAMESPACE
    host: str = "0.0.0.0"
    port: int = 8080
    leader_elect: bool = False
    identity: str = ""
    """This replica's name in leader election (default: POD_NAME, else hostname + pid)."""
    pod_name: str | None = None
    pod_namespace: str | None = None
    release_base_url: str = DEFAULT_RELEASE_BASE_URL
    polling_interval: float = DEFAULT_POLLING_INTERVAL
    timeouts: Timeouts = Timeouts()
    safety: Safety = Safety()
    log_level: str = "INFO"
    max_held_polls: int = DEFAULT_MAX_HELD_POLLS
    """Idle agent long-polls held at once (each costs about 15 KiB); beyond, agents are paced."""
    prefetch_waves: int = DEFAULT_PREFETCH_WAVES
    """Waves of nodes (a plan's concurrency each) that download the binary before their turn; 0: none."""
    tls_cert_file: Path | None = None
    """Serve HTTPS with this certificate (and `tls_key_file`); None: plain HTTP."""
    tls_key_file: Path | None = None
    agent_service_account: str = f"{DEFAULT_NAMESPACE}/{DEFAULT_AGENT_SERVICE_ACCOUNT}"
    """NAMESPACE/NAME of the ServiceAccount the agents run as: only its tokens are accepted."""

    @property
    def agent_username(self) -> str:
        """`agent_service_account` as the user a TokenReview names."""
        namespace, _, name = self.agent_service_account.partition("/")
        return f"system:serviceaccount:{namespace}:{name}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="k3s-upgrade-coordinator",
        description="Evaluate upgrade.cattle.io/v1 Plans and coordinate k3s upgrades node by node.",
    )
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (env KUBECONFIG); in-cluster if unset")
    p.add_argument(
        "--namespace",
        default=None,
        help=f"namespace of Plans and leases (env SYSTEM_UPGRADE_CONTROLLER_NAMESPACE; "
        f"default {DEFAULT_NAMESPACE})",
    )
    p.add_argument(
        "--listen",
        default=None,
        help=f"HOST:PORT of the HTTP server (env COORDINATOR_LISTEN; default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=None,
        help=f"elect one active replica with the Lease {LEADER_LEASE_NAME} (env COORDINATOR_LEADER_ELECT)",
    )
    p.add_argument(
        "--identity", default=None, help="leader-election identity (default: POD_NAME or host-pid)"
    )
    p.add_argument(
        "--pod-name", default=None, help="this pod's name, never evicted by a drain (env POD_NAME)"
    )
    p.add_argument("--pod-namespace", default=None, help="this pod's namespace (env POD_NAMESPACE)")
    p.add_argument(
        "--release-base-url",
        default=None,
        help=f"base of release downloads, a mirror for air-gapped sites (env K3S_RELEASE_BASE_URL; "
        f"default {DEFAULT_RELEASE_BASE_URL})",
    )
    p.add_argument(
        "--polling-interval",
        default=None,
        help="channel re-resolution interval (env SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL; default 15m)",
    )
    t = Timeouts()
    p.add_argument(
        "--agent-heartbeat-timeout",
        default=None,
        help=f"reclaim a granted/staged lease after this silence (default {t.agent_heartbeat:g}s)",
    )
    p.add_argument(
        "--verify-timeout",
        default=None,
        help=f"time for a restarted node to be Ready on the target (default {t.verify:g}s)",
    )
    p.add_argument(
        "--restart-stable",
        default=None,
        help=f"uptime the agent waits before reporting restarted (default {t.restart_stable:g}s)",
    )
    p.add_argument(
        "--restart-timeout",
        default=None,
        help=f"time the agent waits for the new k3s before rolling back (default {t.restart:g}s)",
    )
    p.add_argument(
        "--poll-wait-max", default=None, help=f"longest agent long-poll (default {t.poll_wait_max:g}s)"
    )
    p.add_argument(
        "--max-held-polls",
        default=None,
        help=f"idle agent long-polls held at once; beyond, agents far from their turn are told when to "
        f"poll again (env COORDINATOR_MAX_HELD_POLLS; default {DEFAULT_MAX_HELD_POLLS})",
    )
    p.add_argument(
        "--prefetch-waves",
        default=None,
        help="how many waves of nodes (a plan's concurrency each) after the ones upgrading download the "
        "binary before their turn, so a slot freed goes to a node that has it; 0: a node downloads once "
        f"granted (env COORDINATOR_PREFETCH_WAVES; default {DEFAULT_PREFETCH_WAVES})",
    )
    p.add_argument(
        "--tls-cert-file",
        default=None,
        help="serve HTTPS with this PEM certificate (chain), reloaded when the file changes "
        "(env COORDINATOR_TLS_CERT_FILE; default: plain HTTP)",
    )
    p.add_argument(
        "--tls-private-key-file",
        default=None,
        help="the PEM key of --tls-cert-file (env COORDINATOR_TLS_PRIVATE_KEY_FILE)",
    )
    p.add_argument(
        "--agent-service-account",
        default=None,
        help="the ServiceAccount the agents run as, [NAMESPACE/]NAME (NAMESPACE: --namespace); only its "
        "tokens are accepted (env COORDINATOR_AGENT_SERVICE_ACCOUNT; "
        f"default {DEFAULT_AGENT_SERVICE_ACCOUNT})",
    )
    p.add_argument(
        "--job-active-deadline-seconds",
        default=None,
        help="seconds a node's upgrade may take from its lease to the binary's replacement (the download, "
        "cordon and drain) when its Plan sets no jobActiveDeadlineSecs; 0: no limit "
        f"(env SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS; default {t.job_deadline:g})",
    )
    p.add_argument(
        "--job-active-deadline-seconds-max",
        default=None,
        help="the most a Plan's jobActiveDeadlineSecs may ask for; 0: no maximum "
        f"(env SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS_MAX; default {t.job_deadline_max:g})",
    )
    p.add_argument(
        "--resync-interval", default=None, help=f"reconcile at least this often (default {t.resync:g}s)"
    )
    p.add_argument(
        "--token-cache-ttl", default=None, help=f"TokenReview cache lifetime (default {t.token_cache:g}s)"
    )
    p.add_argument(
        "--leader-lease-duration", default=None, help=f"leader Lease duration (default {t.leader_lease:g}s)"
    )
    p.add_argument(
        "--allow-downgrade",
        action="store_true",
        default=None,
        help="opt in: let a plan move a node to an older version",
    )
    p.add_argument(
        "--allow-minor-skip",
        action="store_true",
        default=None,
        help="opt in: let a plan skip a minor version (e.g. 1.28 -> 1.30)",
    )
    p.add_argument(
        "--allow-agent-skew",
        action="store_true",
        default=None,
        help="opt in: let agent nodes run a newer version than the servers",
    )
    p.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (env LOG_LEVEL; default INFO)"
    )
    return p


def help_text() -> str:
    return _parser().format_help()


def _seconds(raw: str | None, setting: str, default: float) -> float:
    """A whole number of seconds >= 0 (SUC's form for its Job deadlines), else `default` when unset."""
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ConfigError(f"{setting}: {raw!r} is not a whole number of seconds >= 0 (0: no limit)")
    return float(int(text))


def _flag_bool(flag: bool | None, env: Mapping[str, str], name: str) -> bool:
    if flag is not None:
        return flag
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}: {raw!r} is not a boolean (true/false)")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from command-line flags, falling back to environment variables, then defaults."""
    env = os.environ if env is None else env
    a = _parser().parse_args(argv)

    def pick(flag: str | None, name: str, default: str | None = None) -> str | None:
        return flag if flag is not None else env.get(name, default)

    def dur(flag: str | None, name: str, setting: str, default: float) -> float:
        raw = pick(flag, name)
        return default if raw is None else parse_duration(raw, setting)

    host, port = parse_listen(pick(a.listen, "COORDINATOR_LISTEN", DEFAULT_LISTEN) or DEFAULT_LISTEN)
    namespace = (
        pick(a.namespace, "SYSTEM_UPGRADE_CONTROLLER_NAMESPACE", DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    )
    pod_name = pick(a.pod_name, "POD_NAME")
    d = Timeouts()
    timeouts = Timeouts(
        agent_heartbeat=dur(
            a.agent_heartbeat_timeout,
            "COORDINATOR_AGENT_HEARTBEAT_TIMEOUT",
            "--agent-heartbeat-timeout",
            d.agent_heartbeat,
        ),
        verify=dur(a.verify_timeout, "COORDINATOR_VERIFY_TIMEOUT", "--verify-timeout", d.verify),
        restart_stable=dur(
            a.restart_stable, "COORDINATOR_RESTART_STABLE", "--restart-stable", d.restart_stable
        ),
        restart=dur(a.restart_timeout, "COORDINATOR_RESTART_TIMEOUT", "--restart-timeout", d.restart),
        poll_wait_max=dur(a.poll_wait_max, "COORDINATOR_POLL_WAIT_MAX", "--poll-wait-max", d.poll_wait_max),
        resync=dur(a.resync_interval, "COORDINATOR_RESYNC_INTERVAL", "--resync-interval", d.resync),
        token_cache=dur(a.token_cache_ttl, "COORDINATOR_TOKEN_CACHE_TTL", "--token-cache-ttl", d.token_cache),
        leader_lease=dur(
            a.leader_lease_duration,
            "COORDINATOR_LEADER_LEASE_DURATION",
            "--leader-lease-duration",
            d.leader_lease,
        ),
        channel_request=d.channel_request,
        job_deadline=_seconds(
            pick(a.job_active_deadline_seconds, "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS"),
            "--job-active-deadline-seconds",
            d.job_deadline,
        ),
        job_deadline_max=_seconds(
            pick(a.job_active_deadline_seconds_max, "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS_MAX"),
            "--job-active-deadline-seconds-max",
            d.job_deadline_max,
        ),
    )
    if timeouts.restart <= 0:
        raise ConfigError("--restart-timeout must be > 0")
    polling = dur(a.polling_interval, "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL", "--polling-interval",
                  DEFAULT_POLLING_INTERVAL)
    for setting, value, why in (
        ("--polling-interval", polling, "the channels would be asked in a tight loop"),
        ("--resync-interval", timeouts.resync, "the coordinator would decide in a tight loop"),
        ("--agent-heartbeat-timeout", timeouts.agent_heartbeat, "every agent would count as gone"),
        ("--verify-timeout", timeouts.verify, "no node could be verified"),
        ("--poll-wait-max", timeouts.poll_wait_max, "every agent would poll without being held"),
    ):
        if value <= 0:
            raise ConfigError(f"{setting} must be > 0 ({why})")
    if timeouts.leader_lease < 1:
        raise ConfigError("--leader-lease-duration must be at least 1s")
    safety = Safety(
        allow_downgrade=_flag_bool(a.allow_downgrade, env, "COORDINATOR_ALLOW_DOWNGRADE"),
        allow_minor_skip=_flag_bool(a.allow_minor_skip, env, "COORDINATOR_ALLOW_MINOR_SKIP"),
        allow_agent_skew=_flag_bool(a.allow_agent_skew, env, "COORDINATOR_ALLOW_AGENT_SKEW"),
    )
    base = (
        pick(a.release_base_url, "K3S_RELEASE_BASE_URL", DEFAULT_RELEASE_BASE_URL) or DEFAULT_RELEASE_BASE_URL
    ).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--release-base-url: {base!r} is not an http(s) URL")
    raw_held = pick(a.max_held_polls, "COORDINATOR_MAX_HELD_POLLS", str(DEFAULT_MAX_HELD_POLLS)) or ""
    if not raw_held.strip().isdigit() or int(raw_held) < 1:
        raise ConfigError(f"--max-held-polls: {raw_held!r} is not a whole number >= 1")
    raw_waves = pick(a.prefetch_waves, "COORDINATOR_PREFETCH_WAVES", str(DEFAULT_PREFETCH_WAVES)) or ""
    if not raw_waves.strip().isdigit():
        raise ConfigError(f"--prefetch-waves: {raw_waves!r} is not a whole number >= 0")
    agents = pick(
        a.agent_service_account, "COORDINATOR_AGENT_SERVICE_ACCOUNT", DEFAULT_AGENT_SERVICE_ACCOUNT
    ) or ""
    agents_ns, _, agents_name = agents.strip().rpartition("/")
    if not agents_name or ":" in agents or "/" in agents_ns:
        raise ConfigError(f"--agent-service-account: {agents!r} is not [NAMESPACE/]NAME")
    cert = pick(a.tls_cert_file, "COORDINATOR_TLS_CERT_FILE") or None
    key = pick(a.tls_private_key_file, "COORDINATOR_TLS_PRIVATE_KEY_FILE") or None
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert-file and --tls-private-key-file go together: give both or neither")
    for flag, path in (("--tls-cert-file", cert), ("--tls-private-key-file", key)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{flag}: {path} is not a file")
    level = (pick(a.log_level, "LOG_LEVEL", "INFO") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level: {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return Settings(
        kubeconfig=pick(a.kubeconfig, "KUBECONFIG") or None,
        namespace=namespace,
        host=host,
        port=port,
        leader_elect=_flag_bool(a.leader_elect, env, "COORDINATOR_LEADER_ELECT"),
        identity=a.identity or pod_name or f"{os.uname().nodename}-{os.getpid()}",
        pod_name=pod_name,
        pod_namespace=pick(a.pod_namespace, "POD_NAMESPACE"),
        release_base_url=base,
        polling_interval=polling,
        timeouts=timeouts,
        safety=safety,
        log_level=level,
        max_held_polls=int(raw_held),
        prefetch_waves=int(raw_waves),
        agent_service_account=f"{agents_ns or namespace}/{agents_name}",
        tls_cert_file=Path(cert) if cert else None,
        tls_key_file=Path(key) if key else None,
    )
