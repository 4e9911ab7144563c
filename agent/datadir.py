"""Which data directory the next k3s unpacks its release into, found as k3s itself finds it.

A new k3s release unpacks about three times its binary into `<data-dir>/data/<hash>` on its first start;
`agent.install.check_unpack_space` checks the room there before a stage. k3s's self-extracting wrapper
(`findDataDir` in k3s's cmd/k3s/main.go, since v1.27.16, v1.28.12, v1.29.7 and v1.30.3) picks the
directory, the first of these that is set and not empty:

1. the environment variable `K3S_DATA_DIR`;
2. `--data-dir` or `-d` on the command line (`--data-dir X`, `--data-dir=X`, `-d X`, `-d=X`, `-dX`; read
   as spf13/pflag reads them there: the last one wins, unknown flags and their values are skipped, `--`
   ends the flags);
3. the key `data-dir` of k3s's config files: `K3S_CONFIG_FILE`, else `/etc/rancher/k3s/config.yaml`, then
   its drop-ins `<file>.d/*.yaml` and `*.yml` in name order, a later file overriding an earlier one
   (`data-dir+` appends with a comma, as k3s does). The wrapper does not read `--config`/`-c` here (k3s's
   `configfilearg.MustFindString` is given no config flags), so neither do we. `data_dir` and `d` are
   not keys it reads either;
4. `/var/lib/rancher/k3s` (k3s run as root; a rootless k3s's `~/.rancher/k3s` is not looked at).

Before all of these, the directory the running k3s unpacked its own release into says it, when it runs
one: k3s's wrapper execs `<data-dir>/data/<hash>/bin/<program>`, and `/proc/PID/exe` names it
(`unpacked_into`). It is what the rules above chose at its start, from an environment and arguments that
are no longer readable (below), and its service starts the new release the same way.

Sources 1 and 2 come from the running k3s process (`/proc/PID/environ`, `/proc/PID/cmdline`): its service
starts the new release with the same environment and arguments. A real k3s server or agent blanks both
early (it sets its process title, `<binary> server`, with gspt, which clears the memory of its arguments
and environment to hide secrets), so on a real node they read as nothing and the config files decide. The
sandbox's stand-in keeps its arguments in its title (its environment is blanked the same way); a process
that sets no title is read in full. With no process, the config files and then the default decide.

A value from the environment or the command line is used as it is; one from a config file has `~`,
`$HOME` and `${HOME}` replaced by the process's `HOME`, as k3s does. A relative path is joined to the
process's working directory (the target of `/proc/PID/cwd`). When the working directory or `HOME` is not
known (no process, or a blanked environment), the value cannot be placed: a warning, and the default is
checked. So is it when a config file cannot be read or parsed (k3s itself would refuse to start): the
warning names the file. Every host path is resolved under the host root with its links followed within it
(`discovery.resolve_host_path`), the last component too.

Pure rules first (`unpacked_into`, `parse_environ`, `parse_cmdline`, `data_dir_flag`, `process_setting`,
`dropin_names`, `config_setting`, `absolute_setting`), then the edge that reads /proc and the files
(`find_data_dir`).
"""

from __future__ import annotations

import datetime
import logging
import os
import posixpath
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import yaml

from agent.discovery import DiscoveryError, resolve_host_path

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"
"""k3s's data directory when nothing sets one (k3s run as root; servers and agents alike)."""
DEFAULT_CONFIG_FILE = "/etc/rancher/k3s/config.yaml"
DATA_DIR_ENV = "K3S_DATA_DIR"
CONFIG_FILE_ENV = "K3S_CONFIG_FILE"
DATA_DIR_KEY = "data-dir"
_HOMES = ("$HOME", "${HOME}", "~")
"""What k3s (wrangler's resolvehome) replaces by the home directory in a config file's value, in order."""
PROC = Path("/proc")
_T = TypeVar("_T")


class ConfigError(Exception):
    """A k3s config file that cannot be read or parsed; the message names the file and the cause."""


@dataclass(frozen=True)
class DataDir:
    host_path: str
    """The directory as k3s sees it (absolute)."""
    path: Path
    """The same directory as the agent sees it (under the host root)."""
    source: str
    """Where it was found, for messages: `k3s's default`, `K3S_DATA_DIR of k3s pid 42`, ..."""


# -- pure rules ---------------------------------------------------------------------------------------------

def parse_environ(data: bytes) -> dict[str, str]:
    """The variables of a NUL-separated environment (`/proc/PID/environ`). A name given twice keeps its
    first value, as Go's `os.Getenv` does; an entry without `=` (blanked memory) is skipped."""
    env: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq and name:
            env.setdefault(os.fsdecode(name), os.fsdecode(value))
    return env


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """The arguments of a NUL-separated command line (`/proc/PID/cmdline`), trailing empty ones dropped. A
    process title set with setproctitle is one string: it is split on spaces (a value holding a space is
    cut there, as `discovery.normalise_cmdline` does)."""
    parts = [os.fsdecode(part) for part in data.split(b"\0")]
    while parts and not parts[-1]:
        parts.pop()
    if len(parts) == 1 and " " in parts[0]:
        return tuple(parts[0].split())
    return tuple(parts)


def data_dir_flag(argv: Sequence[str]) -> str | None:
    """The value of `--data-dir`/`-d` in `argv` as k3s's wrapper reads it (spf13/pflag, unknown flags
    allowed), None when it is not given or empty.

    As in pflag: every argument is looked at, positional ones skipped; the last `--data-dir` wins, its value
    the next argument whatever it is; `--` ends the flags, and so do `--help`, `-h`, a malformed `---x` and a
    `--data-dir` missing its value (what was found before stays). Unknown flags are skipped (pflag also
    skips an unknown flag's value unless it starts with `-`: a positional argument either way). `-d` may end
    a group of one-letter flags (`-xd X`) and have its value attached (`-dX`, `-d=X`); an unknown letter
    followed by `=` ends its group. pflag takes a one-dash long flag for a group too: `-data-dir X` is
    `-d` with `ata-dir` attached."""
    value = ""
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if len(arg) < 2 or arg[0] != "-":
            continue
        if arg[1] == "-":
            if arg == "--" or arg[2] in "-=":
                break
            name, eq, inline = arg[2:].partition("=")
            if name == "help":
                break
            if name == DATA_DIR_KEY:
                if eq:
                    value = inline
                elif i < len(argv):
                    value, i = argv[i], i + 1
                else:
                    break
            continue
        found = _short_flags(arg[1:], argv, i)
        if found is None:
            break
        i = found[0]
        if found[1] is not None:
            value = found[1]
    return value or None


def _short_flags(shorthands: str, argv: Sequence[str], i: int) -> tuple[int, str | None] | None:
    """A group of one-letter flags (`shorthands`: the argument without its `-`) followed by `argv[i:]`:
    (index of the next argument to read, the value of `-d` or None), or None where pflag stops."""
    while shorthands:
        letter, rest = shorthands[0], shorthands[1:]
        if letter == "d":
            if len(rest) > 1 and rest[0] == "=":
                return i, rest[1:]
            if rest:
                return i, rest
            if i < len(argv):
                return i + 1, argv[i]
            return None
        if letter == "h":
            return None
        if len(rest) > 1 and rest[0] == "=":  # an unknown `-x=value`
            break
        shorthands = rest
    return i, None


def process_setting(env: Mapping[str, str], argv: Sequence[str]) -> tuple[str, str] | None:
    """(value, what set it) from a k3s process's environment and arguments, in k3s's order: `K3S_DATA_DIR`
    before `--data-dir`. None when neither sets a value: the config files decide."""
    if env.get(DATA_DIR_ENV):
        return env[DATA_DIR_ENV], DATA_DIR_ENV
    flag = data_dir_flag(argv)
    if flag is not None:
        return flag, "--data-dir"
    return None


def dropin_names(names: Iterable[str]) -> list[str]:
    """The drop-in files k3s reads among the names of a config file's `.d` directory (its subdirectories
    left out by the caller): `*.yaml` and `*.yml`, any case, in name order."""
    return sorted(n for n in names if n.lower().endswith((".yaml", ".yml")))


def _as_string(value: object) -> str:
    """A YAML scalar as k3s turns it into a flag's text (wrangler's `convert.ToString`)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | datetime.date):
        return str(value)
    raise ValueError(f"{DATA_DIR_KEY} is not a single value: {value!r}")


def config_setting(files: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """(value, file that set it last) of the key `data-dir` over k3s's config files, given as (name,
    text) in the order k3s reads them (the config file, then its drop-ins). A later file overrides an
    earlier one; `data-dir+` appends to it after a comma. None when the value ends up unset or empty.

    `ConfigError` naming the file when one is not YAML or not a mapping at its top (k3s would refuse to
    start), or gives a mapping or a list of several items as the value (k3s would take its Go text as a
    path). As in k3s, only the first YAML document of a file counts; a one-item list is its item."""
    value, source = "", ""
    for name, text in files:
        try:
            loaded = next(yaml.safe_load_all(text), None)
        except yaml.YAMLError as exc:
            raise ConfigError(f"k3s config file {name} is not valid YAML: {exc}") from exc
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise ConfigError(f"k3s config file {name} is not a mapping of settings but a "
                              f"{type(loaded).__name__}")
        for key, raw in loaded.items():
            text_key = key if isinstance(key, str) else ""  # (only a string can name the key)
            append = text_key.endswith("+")
            if text_key.removesuffix("+") != DATA_DIR_KEY:
                continue
            try:
                item = _as_string(raw)
            except ValueError as exc:
                raise ConfigError(f"k3s config file {name}: {exc}") from None
            value, source = (f"{value},{item}" if append else item), name
    return (value, source) if value else None


def absolute_setting(value: str, *, from_config: bool, cwd: str | None, home: str | None) -> str | None:
    """`value` as an absolute, normalised host path: from a config file, `~`, `$HOME` and `${HOME}` are
    replaced by `home` first; a relative path is joined to the process's working directory `cwd`. None
    when it needs a `cwd` or `home` that is not known."""
    if from_config:
        for token in _HOMES:
            if token in value:
                if home is None:
                    return None
                value = value.replace(token, home)
    if not value.startswith("/"):
        if cwd is None:
            return None
        value = posixpath.join(cwd, value)
    return "/" + posixpath.normpath(value).lstrip("/")


# -- the edge: /proc and the config files -------------------------------------------------------------------

def unpacked_into(exe: str) -> str | None:
    """The data directory a running k3s unpacked its release into, from the program it executes
    (`/proc/PID/exe`): k3s's wrapper execs `<data-dir>/data/<hash>/bin/<program>` (`stageAndRun`). None
    for any other program (a k3s that is not the wrapper's, the sandbox's stand-in)."""
    exe = exe.removesuffix(" (deleted)")  # (the release's files may be gone since; the directory is not)
    parts = PurePosixPath(exe).parts
    if not exe.startswith("/") or len(parts) < 6 or parts[-2] != "bin" or parts[-4] != "data":
        return None
    if len(parts[-3]) < 16 or not all(c in string.hexdigits for c in parts[-3]):  # (a SHA-256, in hex)
        return None
    return str(PurePosixPath(*parts[:-4]))


def _default(host_root: Path) -> DataDir:
    try:
        path = resolve_host_path(host_root, DEFAULT_DATA_DIR, follow_last=True)
    except DiscoveryError as exc:  # a link loop on the way: the plain place, as the agent did before
        log.warning("k3s default data directory: %s", exc)
        path = host_root / DEFAULT_DATA_DIR.lstrip("/")
    return DataDir(DEFAULT_DATA_DIR, path, "k3s's default")


def _read_proc(pid: int, path: Path, what: str, read: Callable[[Path], _T]) -> _T | None:
    """`read(path)` for a file of `/proc/<pid>`; None when it cannot be read, with a warning while the
    process is there."""
    try:
        return read(path)
    except (FileNotFoundError, ProcessLookupError):
        log.info("k3s pid %d is gone: its %s is not known", pid, what)
    except OSError as exc:
        log.warning("cannot read the %s of k3s pid %d at %s: %s", what, pid, path, exc.strerror or exc)
    return None


def read_process(pid: int, proc: Path = PROC) -> tuple[dict[str, str], tuple[str, ...], str | None]:
    """(environment, arguments, working directory) of process `pid` from `proc`; what cannot be read is
    empty or None, a working directory that was deleted too."""
    base = proc / str(pid)
    argv = _read_proc(pid, base / "cmdline", "command line", Path.read_bytes)
    environ = _read_proc(pid, base / "environ", "environment", Path.read_bytes)
    cwd = _read_proc(pid, base / "cwd", "working directory", os.readlink)
    if cwd is not None and (not cwd.startswith("/") or cwd.endswith(" (deleted)")):
        cwd = None
    return (parse_environ(environ) if environ is not None else {},
            parse_cmdline(argv) if argv is not None else (), cwd)


def read_config_files(host_root: Path, config: str) -> list[tuple[str, str]]:
    """(host path, text) of the k3s config file `config` (absolute, a host path) if it exists, then of its
    drop-ins; `ConfigError` naming the file that cannot be read."""
    found: list[tuple[str, Path]] = []
    main = resolve_host_path(host_root, config, follow_last=True)
    if main.exists():
        found.append((config, main))
    dropins = resolve_host_path(host_root, config + ".d", follow_last=True)
    try:
        entries = [e.name for e in os.scandir(dropins) if not e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        entries = []
    except OSError as exc:
        raise ConfigError(f"k3s config drop-in directory {config}.d cannot be read: "
                          f"{exc.strerror or exc}") from exc
    for name in dropin_names(entries):
        host = f"{config}.d/{name}"
        found.append((host, resolve_host_path(host_root, host, follow_last=True)))
    files: list[tuple[str, str]] = []
    for host, path in found:
        try:
            files.append((host, path.read_bytes().decode()))
        except OSError as exc:
            raise ConfigError(f"k3s config file {host} cannot be read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"k3s config file {host} is not UTF-8: {exc}") from exc
    return files


def find_data_dir(host_root: Path, pid: int | None, proc: Path = PROC) -> DataDir:
    """k3s's data directory on this node, as the k3s of process `pid` (None: none runs) would find it on
    its next start; the default, with a warning saying why, when what sets it cannot be read or placed."""
    if pid is not None:
        exe = _read_proc(pid, proc / str(pid) / "exe", "program", os.readlink)
        unpacked = unpacked_into(exe) if exe is not None else None
        if unpacked is not None:
            try:
                path = resolve_host_path(host_root, unpacked, follow_last=True)
            except DiscoveryError as exc:
                log.warning("k3s data directory %s (k3s pid %d runs %s): %s", unpacked, pid, exe, exc)
            else:
                return DataDir(unpacked, path, f"where k3s pid {pid} runs its release from")
    env, argv, cwd = read_process(pid, proc) if pid is not None else ({}, (), None)
    of = f" of k3s pid {pid}"
    setting = process_setting(env, argv)
    from_config = setting is None
    if setting is not None:
        setting = (setting[0], setting[1] + of)
    else:
        config = absolute_setting(env.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE, from_config=False,
                                  cwd=cwd, home=None)
        if config is None:
            log.warning("k3s config file %s%s is relative to a working directory that is not known: "
                        "checking room in the default data directory %s", env[CONFIG_FILE_ENV], of,
                        DEFAULT_DATA_DIR)
            return _default(host_root)
        try:
            setting = config_setting(read_config_files(host_root, config))
        except (ConfigError, DiscoveryError) as exc:
            log.warning("%s: checking room in the default data directory %s", exc, DEFAULT_DATA_DIR)
            return _default(host_root)
        if setting is not None:
            setting = (setting[0], f"{DATA_DIR_KEY} in {setting[1]}")
    if setting is None:
        log.debug("k3s data directory: the default %s", DEFAULT_DATA_DIR)
        return _default(host_root)
    value, source = setting
    absolute = absolute_setting(value, from_config=from_config, cwd=cwd, home=env.get("HOME"))
    if absolute is None:
        log.warning("k3s data directory %r (%s) needs a working directory or HOME that is not known: "
                    "checking room in the default data directory %s", value, source, DEFAULT_DATA_DIR)
        return _default(host_root)
    try:
        return DataDir(absolute, resolve_host_path(host_root, absolute, follow_last=True), source)
    except DiscoveryError as exc:
        log.warning("k3s data directory %s (%s): %s; checking room in the default data directory %s",
                    absolute, source, exc, DEFAULT_DATA_DIR)
        return _default(host_root)
