"""Which data directory the new k3s unpacks into: found as k3s's wrapper finds it, then checked for room.

Aspects: a process's environment (NUL-separated, first of a repeated name, blanked memory) and command line
(NUL-separated or one title string); `--data-dir`/`-d` in every spelling pflag accepts, the last winning,
`--`/`--help`/`-h`/a missing value ending the flags, groups of one-letter flags, unknown flags skipped;
`K3S_DATA_DIR` before the flag before the config files; the config file's `data-dir` overridden by
drop-ins in name order (`*.yaml`/`*.yml`, any case), `data-dir+` appending, an empty value meaning the
default, `data_dir`/`d` ignored, bad YAML or a non-mapping an error naming the file; paths made absolute
(`~`/`$HOME` from a config file, relative ones against the working directory, none known: no path).
On a fake host root and /proc: the default; config file, drop-ins, `K3S_CONFIG_FILE` (`--config` not
followed, as k3s's wrapper does not); flag and variable of the process; links of the host followed within
the host root (the data directory or the config file being one); a path already under the host root (the
sandbox); a gone process, a relative value without a working directory, a `~` without HOME, a broken or
unreadable config: the default, with a warning naming the cause. The room check looks in the nearest
existing directory and names the data directory and where it came from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.datadir import (
    ConfigError,
    DataDir,
    absolute_setting,
    config_setting,
    data_dir_flag,
    dropin_names,
    find_data_dir,
    parse_cmdline,
    parse_environ,
    process_setting,
    unpacked_into,
)
from agent.download import NoSpace
from agent.install import check_unpack_space

K3S = "/usr/local/bin/k3s"


# -- the process ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "env"), [
    (b"PATH=/usr/bin\0K3S_DATA_DIR=/srv/k3s\0", {"PATH": "/usr/bin", "K3S_DATA_DIR": "/srv/k3s"}),
    (b"K3S_DATA_DIR=/a\0K3S_DATA_DIR=/b\0", {"K3S_DATA_DIR": "/a"}),  # Go's os.Getenv: the first
    (b"A=x=y\0", {"A": "x=y"}),
    (b"\0" * 64, {}),  # blanked by a process title (gspt)
    (b"\0\0\0ATH\0K3S_DATA_DIR=/srv\0", {"K3S_DATA_DIR": "/srv"}),
    (b"=x\0", {}),
    (b"", {}),
])
def test_environment_of_a_process(data: bytes, env: dict[str, str]) -> None:
    assert parse_environ(data) == env


def test_environment_keeps_bytes_that_are_not_utf8() -> None:
    assert os.fsencode(parse_environ(b"K3S_DATA_DIR=/srv/\xff\0")["K3S_DATA_DIR"]) == b"/srv/\xff"


@pytest.mark.parametrize(("data", "argv"), [
    (b"/usr/local/bin/k3s\0server\0--data-dir\0/srv\0", (K3S, "server", "--data-dir", "/srv")),
    (b"/usr/local/bin/k3s server -d /srv\0", (K3S, "server", "-d", "/srv")),  # a process title
    (b"/usr/local/bin/k3s server\0\0\0\0\0", (K3S, "server")),  # gspt's title, the rest blanked
    (b"k3s\0server\0-d\0\0--x\0", ("k3s", "server", "-d", "", "--x")),  # an empty argument stays
    (b"", ()),
])
def test_command_line_of_a_process(data: bytes, argv: tuple[str, ...]) -> None:
    assert parse_cmdline(data) == argv


@pytest.mark.parametrize(("args", "value"), [
    ((), None),
    (("server",), None),
    (("server", "--data-dir", "/srv"), "/srv"),
    (("server", "--data-dir=/srv"), "/srv"),
    (("server", "-d", "/srv"), "/srv"),
    (("server", "-d=/srv"), "/srv"),
    (("server", "-d/srv"), "/srv"),
    (("server", "-d=", "x"), "="),  # as pflag: `-d` with `=` attached
    (("server", "-d==x"), "=x"),
    (("--data-dir", "/a", "server", "-d", "/b"), "/b"),  # the last one, before or after the subcommand
    (("server", "-d", "/a", "--data-dir="), None),  # the last one is empty: not set
    (("server", "--data-dir=", "x"), None),
    (("server", "--data-dir", "--cluster-init"), "--cluster-init"),  # its value, whatever it is
    (("server", "-d", "/a", "--data-dir"), "/a"),  # a missing value stops the flags
    (("server", "-d"), None),
    (("server", "--", "-d", "/srv"), None),
    (("server", "-d", "/a", "--", "-d", "/b"), "/a"),
    (("server", "--help", "-d", "/srv"), None),
    (("server", "-h", "-d", "/srv"), None),
    (("server", "---d", "-d", "/srv"), None),  # bad flag syntax stops pflag
    (("server", "--=x", "-d", "/srv"), None),
    (("server", "--token", "-d", "/srv"), "/srv"),  # an unknown flag does not take a `-` value
    (("server", "--token", "secret", "-d", "/srv"), "/srv"),
    (("server", "--data-dirs", "/x"), None),
    (("server", "--disable=traefik", "--cluster-init"), None),
    (("agent", "-s", "https://a:6443", "-t", "tok", "-d", "/srv"), "/srv"),
    (("server", "-xd", "/srv"), "/srv"),  # `-d` at the end of a group of one-letter flags
    (("server", "-xd/srv"), "/srv"),
    (("server", "-x=d", "/srv"), None),  # an unknown `-x=value` ends its group
    (("server", "-xh", "-d", "/srv"), None),
    (("server", "-data-dir", "/srv"), "ata-dir"),  # pflag's reading of a one-dash long flag
    (("server", "-", "-d", "/srv"), "/srv"),  # `-` alone is a positional argument
])
def test_data_dir_flag_as_pflag_reads_it(args: tuple[str, ...], value: str | None) -> None:
    assert data_dir_flag((K3S, *args)) == value


@pytest.mark.parametrize(("env", "argv", "setting"), [
    ({"K3S_DATA_DIR": "/env"}, (K3S, "server", "-d", "/flag"), ("/env", "K3S_DATA_DIR")),
    ({"K3S_DATA_DIR": ""}, (K3S, "server", "-d", "/flag"), ("/flag", "--data-dir")),
    ({}, (K3S, "server", "--data-dir=/flag"), ("/flag", "--data-dir")),
    ({"K3S_CONFIG_FILE": "/c.yaml"}, (K3S, "server"), None),
    ({}, (), None),
])
def test_the_variable_before_the_flag(env: dict[str, str], argv: tuple[str, ...],
                                      setting: tuple[str, str] | None) -> None:
    assert process_setting(env, argv) == setting


# -- the config files ----------------------------------------------------------------------------------------

def test_dropins_are_yaml_files_in_name_order() -> None:
    names = ["b.yaml", "a.yml", "C.YAML", "d.Yml", "x.txt", "y.yaml~", "z.json", ".yaml", "10-a.yaml"]
    assert dropin_names(names) == [".yaml", "10-a.yaml", "C.YAML", "a.yml", "b.yaml", "d.Yml"]


MAIN = "/etc/rancher/k3s/config.yaml"
D10 = "/etc/rancher/k3s/config.yaml.d/10.yaml"
D20 = "/etc/rancher/k3s/config.yaml.d/20.yaml"


@pytest.mark.parametrize(("files", "setting"), [
    ([], None),
    ([(MAIN, "data-dir: /srv/k3s\n")], ("/srv/k3s", MAIN)),
    ([(MAIN, "node-name: n1\n")], None),
    ([(MAIN, "")], None),
    ([(MAIN, "# nothing\n")], None),
    ([(MAIN, "data-dir: /a\n"), (D10, "data-dir: /b\n")], ("/b", D10)),
    ([(MAIN, "data-dir: /a\n"), (D10, "data-dir: /b\n"), (D20, "node-name: n\n")], ("/b", D10)),
    ([(D10, "data-dir: /b\n"), (D20, "data-dir: /c\n")], ("/c", D20)),
    ([(MAIN, "data-dir: /a\n"), (D10, "data-dir:\n")], None),  # an empty value: the default again
    ([(MAIN, "data-dir: /a\n"), (D10, "data-dir: ''\n")], None),
    ([(MAIN, "data-dir: /a\n"), (D10, "data-dir+: /b\n")], ("/a,/b", D10)),  # as k3s appends
    ([(MAIN, "data_dir: /a\nd: /b\n")], None),  # not keys k3s's wrapper reads
    ([(MAIN, "data-dir: /a\ndata-dir: /b\n")], ("/b", MAIN)),
    ([(MAIN, "data-dir: 1234\n")], ("1234", MAIN)),
    ([(MAIN, "data-dir: [/a]\n")], ("/a", MAIN)),
    ([(MAIN, "data-dir: /a\n---\ndata-dir: /b\n")], ("/a", MAIN)),  # the first document only
    ([(MAIN, "data-dir: /a\n---\n: : [\n")], ("/a", MAIN)),
    ([(MAIN, "1: x\ntrue: y\ndata-dir: /a\n")], ("/a", MAIN)),
])
def test_data_dir_in_config_files(files: list[tuple[str, str]], setting: tuple[str, str] | None) -> None:
    assert config_setting(files) == setting


@pytest.mark.parametrize(("text", "cause"), [
    ("data-dir: [/a\n", "is not valid YAML"),
    ("data-dir: /a\n  bad: indent\n", "is not valid YAML"),
    ("- data-dir: /a\n", "is not a mapping of settings but a list"),
    ("just text\n", "is not a mapping of settings but a str"),
    ("data-dir: [/a, /b]\n", "data-dir is not a single value"),
    ("data-dir: {a: b}\n", "data-dir is not a single value"),
])
def test_a_config_file_k3s_cannot_use_is_an_error_naming_it(text: str, cause: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_setting([(MAIN, "data-dir: /ok\n"), (D10, text)])
    assert D10 in str(caught.value) and cause in str(caught.value)


@pytest.mark.parametrize(("value", "from_config", "cwd", "home", "absolute"), [
    ("/srv/k3s", False, None, None, "/srv/k3s"),
    ("/srv/../data/./k3s/", False, None, None, "/data/k3s"),
    ("//srv//k3s", True, None, None, "/srv/k3s"),
    ("k3s", False, "/opt", None, "/opt/k3s"),
    ("../k3s", False, "/opt/x", None, "/opt/k3s"),
    ("k3s", False, None, None, None),
    ("~/k3s", False, "/", "/root", "/~/k3s"),  # from the variable or the flag: taken as it is
    ("~/k3s", True, "/", "/root", "/root/k3s"),
    ("$HOME/k3s", True, None, "/home/u", "/home/u/k3s"),
    ("${HOME}/k3s", True, None, "/home/u", "/home/u/k3s"),
    ("~/k3s", True, "/", None, None),
    ("data", True, "/", None, "/data"),
])
def test_absolute_setting(value: str, from_config: bool, cwd: str | None, home: str | None,
                          absolute: str | None) -> None:
    assert absolute_setting(value, from_config=from_config, cwd=cwd, home=home) == absolute


# -- the edge: a fake host root and /proc --------------------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "etc/rancher/k3s").mkdir(parents=True)
    (root / "var/lib/rancher/k3s").mkdir(parents=True)
    return root


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return tmp_path / "proc"


def k3s_process(proc: Path, *argv: str, env: dict[str, str] | None = None, cwd: str | None = "/",
                pid: int = 42) -> int:
    """A fake /proc/<pid> with the process's command line, environment and working directory."""
    base = proc / str(pid)
    base.mkdir(parents=True)
    (base / "cmdline").write_bytes(b"".join(os.fsencode(a) + b"\0" for a in (K3S, *argv)))
    (base / "environ").write_bytes(b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in (env or {}).items()))
    if cwd is not None:
        (base / "cwd").symlink_to(cwd)
    return pid


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


H = "4f6e9a2c0b1d3e5f" * 4  # the hash k3s names a release's directory by


@pytest.mark.parametrize(
    ("exe", "data_dir"),
    [
        (f"/var/lib/rancher/k3s/data/{H}/bin/k3s-server", "/var/lib/rancher/k3s"),
        (f"/srv/k3s/data/{H}/bin/k3s-agent", "/srv/k3s"),
        (f"/srv/k3s/data/{H}/bin/k3s-server (deleted)", "/srv/k3s"),  # its release's files removed since
        (f"/data/{H}/bin/k3s", None),  # no room for a data directory above
        ("/usr/local/bin/k3s", None),  # a k3s that is not the wrapper's
        ("/usr/bin/python3.11", None),  # the sandbox's stand-in
        (f"/srv/k3s/data/{H}/sbin/k3s", None),
        (f"srv/k3s/data/{H}/bin/k3s", None),  # not absolute
        ("/opt/data/k3s/bin/k3s", None),  # a k3s installed under some data/ directory, not unpacked
    ],
)
def test_unpacked_into(exe: str, data_dir: str | None) -> None:
    assert unpacked_into(exe) == data_dir


def test_the_release_a_k3s_runs_from_names_it_before_anything_else(host: Path, proc: Path) -> None:
    """Its arguments and environment blanked (a real k3s), its config naming nothing: the program it runs
    says where its --data-dir (from its unit's ExecStart, say) put it."""
    pid = k3s_process(proc, "server", env={})
    (proc / str(pid) / "exe").symlink_to(f"/srv/k3s/data/{H}/bin/k3s-server")
    write(host / "etc/rancher/k3s/config.yaml", "node-name: n1\n")
    assert find_data_dir(host, pid, proc) == DataDir(
        "/srv/k3s", host / "srv/k3s", f"where k3s pid {pid} runs its release from"
    )
    (proc / str(pid) / "exe").unlink()
    (proc / str(pid) / "exe").symlink_to("/usr/local/bin/k3s")  # not the wrapper's: the rules decide
    assert find_data_dir(host, pid, proc).source == "k3s's default"


def test_the_default_without_process_nor_config(host: Path, proc: Path) -> None:
    assert find_data_dir(host, None, proc) == DataDir("/var/lib/rancher/k3s", host / "var/lib/rancher/k3s",
                                                     "k3s's default")


def test_the_config_file_and_its_dropins(host: Path, proc: Path) -> None:
    pid = k3s_process(proc, "server")
    write(host / "etc/rancher/k3s/config.yaml", "node-name: n1\ndata-dir: /srv/a\n")
    assert find_data_dir(host, pid, proc) == DataDir("/srv/a", host / "srv/a",
                                                    "data-dir in /etc/rancher/k3s/config.yaml")
    write(host / "etc/rancher/k3s/config.yaml.d/20-b.yaml", "data-dir: /srv/b\n")
    write(host / "etc/rancher/k3s/config.yaml.d/10-c.yml", "data-dir: /srv/c\n")
    write(host / "etc/rancher/k3s/config.yaml.d/30-d.txt", "data-dir: /srv/d\n")
    (host / "etc/rancher/k3s/config.yaml.d/40-e.yaml").mkdir()  # a directory is not read
    found = find_data_dir(host, pid, proc)
    assert found.host_path == "/srv/b"
    assert found.source == "data-dir in /etc/rancher/k3s/config.yaml.d/20-b.yaml"
    (host / "etc/rancher/k3s/config.yaml").unlink()  # drop-ins count without the file
    assert find_data_dir(host, None, proc).host_path == "/srv/b"


def test_k3s_config_file_variable_names_the_file_and_its_dropins(host: Path, proc: Path) -> None:
    write(host / "etc/rancher/k3s/config.yaml", "data-dir: /srv/default-file\n")
    write(host / "opt/k3s/k3s.yaml", "data-dir: /srv/a\n")
    write(host / "opt/k3s/k3s.yaml.d/1.yaml", "data-dir: /srv/b\n")
    pid = k3s_process(proc, "server", env={"K3S_CONFIG_FILE": "/opt/k3s/k3s.yaml"})
    assert find_data_dir(host, pid, proc).host_path == "/srv/b"


def test_config_flag_is_not_followed_as_k3s_wrapper_does_not(host: Path, proc: Path) -> None:
    write(host / "opt/k3s/k3s.yaml", "data-dir: /srv/a\n")
    pid = k3s_process(proc, "server", "--config", "/opt/k3s/k3s.yaml")
    assert find_data_dir(host, pid, proc).source == "k3s's default"


def test_the_process_before_the_config_files(host: Path, proc: Path) -> None:
    write(host / "etc/rancher/k3s/config.yaml", "data-dir: /srv/config\n")
    flag = k3s_process(proc, "server", "--data-dir", "/srv/flag", pid=10)
    assert find_data_dir(host, flag, proc) == DataDir("/srv/flag", host / "srv/flag",
                                                     "--data-dir of k3s pid 10")
    both = k3s_process(proc, "server", "-d", "/srv/flag", env={"K3S_DATA_DIR": "/srv/env"}, pid=11)
    assert find_data_dir(host, both, proc) == DataDir("/srv/env", host / "srv/env",
                                                     "K3S_DATA_DIR of k3s pid 11")


def test_a_process_title_that_blanked_the_rest_leaves_it_to_the_config(host: Path, proc: Path) -> None:
    write(host / "etc/rancher/k3s/config.yaml", "data-dir: /srv/config\n")
    (proc / "7").mkdir(parents=True)
    (proc / "7/cmdline").write_bytes(b"/usr/local/bin/k3s server" + b"\0" * 40)
    (proc / "7/environ").write_bytes(b"\0" * 300)
    (proc / "7/cwd").symlink_to("/")
    assert find_data_dir(host, 7, proc).host_path == "/srv/config"


def test_relative_values_against_the_working_directory(host: Path, proc: Path) -> None:
    pid = k3s_process(proc, "server", "-d", "data", cwd="/opt/k3s", pid=1)
    assert find_data_dir(host, pid, proc).path == host / "opt/k3s/data"
    write(host / "opt/k3s/conf.yaml", "data-dir: ../state\n")
    pid = k3s_process(proc, "server", env={"K3S_CONFIG_FILE": "conf.yaml"}, cwd="/opt/k3s", pid=2)
    assert find_data_dir(host, pid, proc).path == host / "opt/state"


def test_home_in_a_config_file(host: Path, proc: Path) -> None:
    write(host / "etc/rancher/k3s/config.yaml", "data-dir: ~/.rancher/k3s\n")
    pid = k3s_process(proc, "server", env={"HOME": "/home/k"})
    assert find_data_dir(host, pid, proc).path == host / "home/k/.rancher/k3s"


@pytest.mark.parametrize("case", ["relative without cwd", "home without HOME", "config relative without cwd"])
def test_a_value_that_cannot_be_placed_falls_back_to_the_default(host: Path, proc: Path, case: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    if case == "relative without cwd":
        pid = k3s_process(proc, "server", "-d", "data", cwd=None)
    elif case == "home without HOME":
        write(host / "etc/rancher/k3s/config.yaml", "data-dir: ~/k3s\n")
        pid = k3s_process(proc, "server")
    else:
        pid = k3s_process(proc, "server", env={"K3S_CONFIG_FILE": "conf.yaml"}, cwd=None)
    with caplog.at_level(logging.WARNING, logger="agent.datadir"):
        found = find_data_dir(host, pid, proc)
    assert found.source == "k3s's default"
    assert "not known" in caplog.text and "/var/lib/rancher/k3s" in caplog.text


@pytest.mark.parametrize(("name", "content", "cause"), [
    ("config.yaml", "data-dir: [/srv\n", "/etc/rancher/k3s/config.yaml is not valid YAML"),
    ("config.yaml.d/50.yaml", "- a\n", "/etc/rancher/k3s/config.yaml.d/50.yaml is not a mapping"),
    ("config.yaml.d/50.yaml", b"data-dir: /\xff\n", "/etc/rancher/k3s/config.yaml.d/50.yaml is not UTF-8"),
    ("config.yaml", None, "/etc/rancher/k3s/config.yaml cannot be read"),  # a directory
])
def test_a_broken_config_falls_back_to_the_default_naming_it(host: Path, proc: Path, name: str,
                                                             content: str | bytes | None, cause: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = host / "etc/rancher/k3s" / name
    if content is None:
        path.mkdir(parents=True)
    elif isinstance(content, bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    else:
        write(path, content)
    with caplog.at_level(logging.WARNING, logger="agent.datadir"):
        found = find_data_dir(host, k3s_process(proc, "server"), proc)
    assert found == DataDir("/var/lib/rancher/k3s", host / "var/lib/rancher/k3s", "k3s's default")
    assert cause in caplog.text, caplog.text


def test_a_gone_process_leaves_it_to_the_config(host: Path, proc: Path) -> None:
    write(host / "etc/rancher/k3s/config.yaml", "data-dir: /srv/config\n")
    proc.mkdir()
    assert find_data_dir(host, 4242, proc).host_path == "/srv/config"


def test_links_of_the_host_are_followed_within_the_host_root(host: Path, proc: Path) -> None:
    """The host's absolute links point into the host, not into the agent's container."""
    (host / "var/lib/rancher/k3s").rmdir()
    (host / "data/rancher/k3s").mkdir(parents=True)
    (host / "var/lib/rancher/k3s").symlink_to("/data/rancher/k3s")  # the data directory itself
    assert find_data_dir(host, None, proc).path == host / "data/rancher/k3s"
    write(host / "etc/k3s/real.yaml", "data-dir: /mnt/k3s\n")
    (host / "etc/rancher/k3s/config.yaml").symlink_to("/etc/k3s/real.yaml")  # the config file
    (host / "mnt").mkdir()
    (host / "mnt/k3s").symlink_to("/data/k3s")  # a data directory of its own
    assert find_data_dir(host, None, proc).path == host / "data/k3s"
    write(host / "etc/k3s/real.yaml", "data-dir: /mnt/disk/k3s\n")
    (host / "mnt/disk").symlink_to("/data")  # a directory on the way
    assert find_data_dir(host, None, proc).path == host / "data/k3s"


def test_a_path_already_under_the_host_root_is_taken_as_it_is(host: Path, proc: Path) -> None:
    """The sandbox: every node's files are on one file system, a node's paths under its root."""
    pid = k3s_process(proc, "server", "--data-dir", str(host / "srv/k3s"))
    assert find_data_dir(host, pid, proc).path == host / "srv/k3s"


# -- the room ------------------------------------------------------------------------------------------------

def test_room_is_looked_for_where_the_data_directory_will_be(tmp_path: Path) -> None:
    binary = tmp_path / "k3s"
    binary.write_bytes(b"x" * 1000)
    check_unpack_space(DataDir("/srv/k3s", tmp_path / "srv/k3s", "k3s's default"), binary, 0, True)
    huge = 1 << 62
    with pytest.raises(NoSpace) as missing:
        check_unpack_space(DataDir("/srv/k3s", tmp_path / "srv/k3s", "--data-dir of k3s pid 9"), binary, huge,
                           False)
    assert str(missing.value).startswith(f"not enough free space in {tmp_path} for the new k3s to unpack")
    assert "about 3000 needed (3 times the binary)" in str(missing.value)
    assert str(missing.value).endswith(
        "(k3s's data directory is /srv/k3s, --data-dir of k3s pid 9, not created yet)")
    (tmp_path / "srv/k3s").mkdir(parents=True)
    with pytest.raises(NoSpace) as present:
        check_unpack_space(DataDir("/srv/k3s", tmp_path / "srv/k3s", "k3s's default"), binary, huge, True)
    assert f"in {tmp_path / 'srv/k3s'} for" in str(present.value)
    assert "about 4000 needed (3 times the binary and the binary itself)" in str(present.value)
    assert str(present.value).endswith("(k3s's data directory is /srv/k3s, k3s's default)")
