"""Settings come from flags, then SUC's environment variables, then documented defaults.

Aspects covered:
- defaults (namespace system-upgrade, listen 0.0.0.0:8080, 15m polling, release base URL);
- SUC's variable names (SYSTEM_UPGRADE_CONTROLLER_NAMESPACE, SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL,
  POD_NAME) are read, and a flag wins over its variable;
- SUC's Job deadlines (SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS, ..._MAX) in whole seconds;
- Go-style durations (15m, 1h30m, 250ms, plain seconds) and clear errors for bad values;
- the real CLI: `--help` documents every flag, a bad value exits 2 with a message naming the setting;
- leader-election `claim`: take a free or expired Lease, renew our own, never take a live one; `released`
  gives ours up so that another replica takes it at once.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from coordinator import config
from coordinator.election import claim, released


def test_defaults() -> None:
    s = config.load([], env={})
    assert (s.namespace, s.host, s.port) == ("system-upgrade", "0.0.0.0", 8080)
    assert s.polling_interval == 900.0
    assert s.release_base_url == config.DEFAULT_RELEASE_BASE_URL
    assert s.kubeconfig is None and not s.leader_elect
    assert not (s.safety.allow_downgrade or s.safety.allow_minor_skip or s.safety.allow_agent_skew)
    assert s.max_held_polls == 1000
    assert config.load([], env={"COORDINATOR_MAX_HELD_POLLS": "50"}).max_held_polls == 50
    flag_wins = config.load(["--max-held-polls", "7"], env={"COORDINATOR_MAX_HELD_POLLS": "50"})
    assert flag_wins.max_held_polls == 7
    assert s.agent_username == "system:serviceaccount:system-upgrade:k3s-upgrade-agent"
    other_ns = config.load(["--namespace", "up"], env={"COORDINATOR_AGENT_SERVICE_ACCOUNT": "agents"})
    assert other_ns.agent_username == "system:serviceaccount:up:agents"
    elsewhere = config.load(["--agent-service-account", "nodes/agent"], env={})
    assert elsewhere.agent_username == "system:serviceaccount:nodes:agent"


def test_suc_environment_names_and_flag_precedence() -> None:
    env = {
        "SYSTEM_UPGRADE_CONTROLLER_NAMESPACE": "upgrades",
        "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL": "1h30m",
        "POD_NAME": "coord-0",
        "COORDINATOR_LEADER_ELECT": "true",
    }
    s = config.load([], env=env)
    assert (s.namespace, s.polling_interval, s.pod_name, s.identity, s.leader_elect) == (
        "upgrades",
        5400.0,
        "coord-0",
        "coord-0",
        True,
    )
    s = config.load(["--namespace", "other", "--polling-interval", "2s", "--listen", "127.0.0.1:0"], env=env)
    assert (s.namespace, s.polling_interval, s.host, s.port) == ("other", 2.0, "127.0.0.1", 0)


def test_job_deadlines_take_sucs_names_and_whole_seconds() -> None:
    d = config.load([], env={}).timeouts
    assert (d.job_deadline, d.job_deadline_max) == (900.0, 0.0)
    env = {"SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS": "1800",
           "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS_MAX": "3600"}
    t = config.load([], env=env).timeouts
    assert (t.job_deadline, t.job_deadline_max) == (1800.0, 3600.0)
    t = config.load(["--job-active-deadline-seconds", "0"], env=env).timeouts
    assert (t.job_deadline, t.job_deadline_max) == (0.0, 3600.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("90s", 90), ("1h30m", 5400), ("250ms", 0.25), ("2.5", 2.5), ("1m30s", 90)],
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text, "--x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--polling-interval", "soon"], "--polling-interval"),
        (["--verify-timeout", "-5"], "negative"),
        (["--verify-timeout", "inf"], "--verify-timeout: 'inf' is not a finite duration"),
        (["--restart-stable", "nan"], "--restart-stable: 'nan' is not a finite duration"),
        (["--verify-timeout", "0"], r"--verify-timeout must be > 0 \(no node could be verified\)"),
        (["--polling-interval", "0s"], r"--polling-interval must be > 0 \(the channels would be asked"),
        (["--resync-interval", "0"], r"--resync-interval must be > 0"),
        (["--agent-heartbeat-timeout", "0ms"], r"--agent-heartbeat-timeout must be > 0"),
        (["--poll-wait-max", "0"], r"--poll-wait-max must be > 0 \(every agent would poll without being"),
        (["--listen", "8080"], "--listen"),
        (["--release-base-url", "ftp://x"], "--release-base-url"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--max-held-polls", "0"], "--max-held-polls"),
        (["--job-active-deadline-seconds", "15m"], r"--job-active-deadline-seconds: '15m' is not a whole"),
        (["--job-active-deadline-seconds", "-1"], "--job-active-deadline-seconds: '-1'"),
        (["--job-active-deadline-seconds-max", "1e3"], "--job-active-deadline-seconds-max: '1e3'"),
        (["--job-active-deadline-seconds", "9" * 400], "--job-active-deadline-seconds"),
        (["--max-held-polls", "many"], "--max-held-polls"),
        (["--agent-service-account", "a/b/c"], "--agent-service-account"),
        (["--agent-service-account", "system:serviceaccount:x:y"], "--agent-service-account"),
        (["--agent-service-account", "ns/"], "--agent-service-account"),
    ],
)
def test_bad_values_name_the_setting(argv: list[str], fragment: str) -> None:
    with pytest.raises(config.ConfigError, match=fragment):
        config.load(argv, env={})


def test_cli_help_and_bad_value_exit_code() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for flag in (
        "--kubeconfig",
        "--namespace",
        "--listen",
        "--leader-elect",
        "--release-base-url",
        "--polling-interval",
        "--pod-name",
        "--agent-heartbeat-timeout",
        "--verify-timeout",
    ):
        assert flag in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "coordinator", "--listen", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--listen" in bad.stderr


def test_leader_claim() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fresh = claim(None, "a", now, 15)
    assert fresh is not None and fresh["holderIdentity"] == "a"
    assert claim(fresh, "b", now + timedelta(seconds=10), 15) is None, "a live lease is never taken"
    renewed = claim(fresh, "a", now + timedelta(seconds=10), 15)
    assert renewed is not None and renewed["renewTime"] != fresh["renewTime"]
    taken = claim(fresh, "b", now + timedelta(seconds=16), 15)
    assert taken is not None and taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1


def test_leader_release() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    held = claim(None, "a", now, 15)
    assert released(held, "b", now) is None and released(None, "a", now) is None, "only the holder's"
    free = released(held, "a", now + timedelta(seconds=1))
    assert free is not None and free["holderIdentity"] == "" and free["leaseTransitions"] == 0
    taken = claim(free, "b", now + timedelta(seconds=1), 15)  # at once, not 15 s later
    assert taken is not None and taken["holderIdentity"] == "b"
