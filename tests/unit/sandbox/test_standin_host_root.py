"""A stand-in k3s finds its simulated node from its own path, as the sandbox lays nodes out.

Aspects: `<root>/usr/local/bin/k3s` gives `<root>`; a binary elsewhere has no node root; the node's
config.yaml under that root supplies the node name (not the machine's hostname).
"""

from __future__ import annotations

from pathlib import Path

from sandbox.standin.runtime import host_root_of, load_config


def test_host_root_is_the_path_above_usr_local_bin(tmp_path: Path) -> None:
    assert host_root_of(str(tmp_path / "n1" / "usr/local/bin/k3s")) == tmp_path / "n1"


def test_a_binary_elsewhere_has_no_node_root(tmp_path: Path) -> None:
    assert host_root_of(str(tmp_path / "opt/bin/k3s")) is None
    assert host_root_of(str(tmp_path / "local/bin/k3s")) is None


def test_node_name_comes_from_the_nodes_config(tmp_path: Path) -> None:
    config = tmp_path / "etc/rancher/k3s/config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("node-name: server-7\nnode-labels: [a=b]\n")
    root = host_root_of(str(tmp_path / "usr/local/bin/k3s"))
    cfg = load_config(root)
    assert cfg.node_name == "server-7" and cfg.labels == {"a": "b"}
