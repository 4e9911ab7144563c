"""Which process is this node's k3s: exact rules, no guessing.

Aspects: `server` and `agent` processes with options (`--cluster-init`) match, also when the title is one
space-joined string as k3s and setproctitle leave it in /proc/PID/cmdline; other k3s subcommands
(`kubectl`, `crictl`, `--version`), containerd and shell wrappers do not; a `k3s init` wrapper counts only
when nothing else matches; host paths are resolved under the host root, and in the sandbox a process of
another node's root is never ours; the symlinks of the binary's directories are followed within the host
root (an absolute target re-rooted there, `..` stopping at it, a loop an error), in the sandbox too; none
or several candidates is an error naming them; a binary that is a symlink (relative, or absolute and so not
even under the host root) is refused with an error naming the link, also in a linked directory, while a
regular file beside such links is taken; a process whose path loops is skipped, not the whole scan;
`same_binary` tells one file place spelt two ways (an older agent's journal) from two.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.discovery import (
    MAX_SYMLINKS,
    DiscoveryError,
    ProcessInfo,
    match_k3s,
    parse_command,
    resolve_binary,
    resolve_in_root,
    same_binary,
)

HOST = Path("/host")
LIVE = HOST / "usr/local/bin/k3s"


def proc(pid: int, *cmdline: str) -> ProcessInfo:
    return ProcessInfo(pid, tuple(cmdline), 1000.0 + pid)


@pytest.mark.parametrize(("cmdline", "expected"), [
    (("/usr/local/bin/k3s", "server"), ("/usr/local/bin/k3s", "server", False)),
    (("/usr/local/bin/k3s", "agent", "--server", "https://x:6443"), ("/usr/local/bin/k3s", "agent", False)),
    (("/usr/local/bin/k3s", "--debug", "server", "--cluster-init"), ("/usr/local/bin/k3s", "server", False)),
    (("/usr/local/bin/k3s server --cluster-init", "", ""), ("/usr/local/bin/k3s", "server", False)),
    (("/bin/k3s", "init", "--", "/bin/k3s", "server"), ("/bin/k3s", "server", True)),
    (("k3s", "server"), ("k3s", "server", False)),
    (("/usr/local/bin/k3s", "kubectl", "get", "nodes"), None),
    (("/usr/local/bin/k3s", "--version"), None),
    (("/usr/local/bin/k3s", "crictl", "ps"), None),
    (("containerd", "-c", "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"), None),
    (("/bin/sh", "-c", "sleep 0.1; exec /usr/local/bin/k3s server"), None),
    (("/usr/local/bin/k3s-server",), None),
    ((), None),
])
def test_parse_command(cmdline: tuple[str, ...], expected: tuple[str, str, bool] | None) -> None:
    assert parse_command(cmdline) == expected


@pytest.mark.parametrize(("started_as", "root", "expected"), [
    ("/usr/local/bin/k3s", HOST, LIVE),
    ("/opt/bin/k3s", HOST, HOST / "opt/bin/k3s"),
    ("/sandbox/n1/usr/local/bin/k3s", Path("/sandbox/n1"), Path("/sandbox/n1/usr/local/bin/k3s")),
    ("/s/n10/usr/local/bin/k3s", Path("/s/n1"), Path("/s/n1/s/n10/usr/local/bin/k3s")),
    ("/usr/local/bin/k3s", Path("/"), Path("/usr/local/bin/k3s")),
])
def test_resolve_binary(started_as: str, root: Path, expected: Path) -> None:
    assert resolve_binary(started_as, root) == expected


def test_one_server_matches() -> None:
    found = match_k3s([proc(1, "/sbin/init"), proc(42, "/usr/local/bin/k3s", "server", "--cluster-init"),
                       proc(50, "/usr/local/bin/k3s", "kubectl", "get", "pods")], HOST, {LIVE})
    assert (found.pid, found.role, found.binary) == (42, "server", LIVE)
    assert found.host_binary == "/usr/local/bin/k3s"


def test_wrapper_is_used_only_without_the_real_process() -> None:
    wrapper = proc(10, "/usr/local/bin/k3s", "init", "--", "/usr/local/bin/k3s", "agent")
    assert match_k3s([wrapper, proc(11, "/usr/local/bin/k3s", "agent")], HOST, {LIVE}).pid == 11
    assert match_k3s([wrapper], HOST, {LIVE}).wrapper


def test_other_sandbox_nodes_are_never_ours() -> None:
    n1, n2 = Path("/s/n1"), Path("/s/n2")
    processes = [proc(5, "/s/n2/usr/local/bin/k3s server"), proc(6, "/s/n1/usr/local/bin/k3s agent")]
    existing = {n1 / "usr/local/bin/k3s", n2 / "usr/local/bin/k3s"}
    assert match_k3s(processes, n1, existing).pid == 6
    assert match_k3s(processes, n2, existing).pid == 5
    with pytest.raises(DiscoveryError, match="no k3s"):
        match_k3s(processes[:1], n1, existing)


def test_no_process_is_an_error() -> None:
    with pytest.raises(DiscoveryError, match="no k3s server or agent process found"):
        match_k3s([proc(1, "/sbin/init")], HOST, {LIVE})


def test_binary_missing_under_host_root_is_not_a_match() -> None:
    with pytest.raises(DiscoveryError):
        match_k3s([proc(42, "/usr/local/bin/k3s", "server")], HOST, set())


def test_several_candidates_are_refused() -> None:
    other = HOST / "opt/bin/k3s"
    processes = [proc(42, "/usr/local/bin/k3s", "server"), proc(43, "/opt/bin/k3s", "agent")]
    with pytest.raises(DiscoveryError, match=r"several k3s processes.*pid 42.*pid 43"):
        match_k3s(processes, HOST, {LIVE, other})


def test_a_symlinked_binary_is_refused_naming_the_link(tmp_path: Path) -> None:
    bin_dir = tmp_path / "usr/local/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "k3s-v1.30.4").write_text("#!/bin/sh\n")
    (bin_dir / "k3s").symlink_to("k3s-v1.30.4")  # relative: replacing it would replace the link
    with pytest.raises(DiscoveryError, match=r"symlink \(/usr/local/bin/k3s -> k3s-v1.30.4\)"):
        match_k3s([proc(7, "/usr/local/bin/k3s", "server")], tmp_path)
    (bin_dir / "k3s").unlink()
    (bin_dir / "k3s").symlink_to("/opt/k3s/k3s-v1.30.4")  # absolute: not even under the host root
    with pytest.raises(DiscoveryError, match=r"/opt/k3s/k3s-v1\.30\.4"):
        match_k3s([proc(7, "/usr/local/bin/k3s", "server")], tmp_path)
    (bin_dir / "k3s").unlink()
    (bin_dir / "k3s").write_text("#!/bin/sh\n")
    (bin_dir / "kubectl").symlink_to("k3s")  # install.sh's links beside the file
    found = match_k3s([proc(7, "/usr/local/bin/k3s", "server"), proc(8, "/usr/local/bin/kubectl", "get")],
                      tmp_path)
    assert found.pid == 7 and found.binary == bin_dir / "k3s"


def _k3s_file(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    return path


def test_a_directory_linked_absolutely_on_the_host_is_followed_within_the_host_root(tmp_path: Path) -> None:
    live = _k3s_file(tmp_path / "opt/local/bin/k3s")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/local").symlink_to("/opt/local")  # the host's /opt/local, not the agent's
    found = match_k3s([proc(7, "/usr/local/bin/k3s", "server")], tmp_path)
    assert found.binary == live and found.host_binary == "/usr/local/bin/k3s"
    # Started by its name from a PATH directory that is such a link; in the sandbox (a path already
    # under the root) the same.
    assert match_k3s([proc(8, "k3s", "server")], tmp_path).binary == live
    assert resolve_binary(f"{tmp_path}/usr/local/bin/k3s", tmp_path) == live


def test_links_are_followed_chroot_like(tmp_path: Path) -> None:
    live = _k3s_file(tmp_path / "opt/local/bin/k3s")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/local").symlink_to("../../../../../../opt/./local")  # `..` stops at the root
    assert resolve_in_root(tmp_path, "/usr/local/bin/k3s") == live
    (tmp_path / "usr/local").unlink()
    (tmp_path / "usr/local").symlink_to("/usr/lib/../site")  # a link to a link
    (tmp_path / "usr/site").symlink_to("../opt/local/")
    assert resolve_in_root(tmp_path, "/usr/local/bin/k3s") == live
    assert resolve_in_root(tmp_path, "/usr/bin/k3s") == tmp_path / "usr/bin/k3s"  # not there: as it is
    (tmp_path / "a").symlink_to("/b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(DiscoveryError, match=rf"/a/bin/k3s: more than {MAX_SYMLINKS} symlinks"):
        resolve_in_root(tmp_path, "/a/bin/k3s")


def test_a_symlinked_binary_in_a_linked_directory_is_refused(tmp_path: Path) -> None:
    _k3s_file(tmp_path / "opt/local/bin/k3s-v1.30.4")
    (tmp_path / "opt/local/bin/k3s").symlink_to("/opt/local/bin/k3s-v1.30.4")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/local").symlink_to("/opt/local")
    with pytest.raises(DiscoveryError, match=r"symlink \(/usr/local/bin/k3s -> /opt/local/bin/k3s-v1\.30"):
        match_k3s([proc(7, "/usr/local/bin/k3s", "server")], tmp_path)


def test_a_process_whose_path_loops_is_skipped_not_the_scan(tmp_path: Path) -> None:
    live = _k3s_file(tmp_path / "usr/local/bin/k3s")
    (tmp_path / "a").symlink_to("/b")
    (tmp_path / "b").symlink_to("a")
    found = match_k3s([proc(6, "/a/k3s", "agent"), proc(7, "/usr/local/bin/k3s", "server")], tmp_path)
    assert found.binary == live


def test_same_binary_is_the_same_name_in_the_same_directory_however_spelt(tmp_path: Path) -> None:
    live = _k3s_file(tmp_path / "var/usrlocal/bin/k3s")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/local").symlink_to("../var/usrlocal")  # Fedora CoreOS
    unresolved = tmp_path / "usr/local/bin/k3s"  # as an agent before resolve_in_root journalled it
    assert same_binary(live, live) and same_binary(unresolved, live) and same_binary(live, unresolved)
    assert same_binary(unresolved.with_name(".k3s-abc"), live.with_name(".k3s-abc")), "need not exist"
    assert not same_binary(unresolved, live.with_name("k3s-old"))
    assert not same_binary(tmp_path / "usr/bin/k3s", live)
    assert not same_binary(tmp_path / "gone/k3s", tmp_path / "also-gone/k3s")
