"""Network namespaces for `--netns`: each node's agent in its own namespace, so a test can cut it off.

Layout (per sandbox, one random /16 in 10.100-199.x.x so parallel sandboxes do not collide):

    host: lo += <hub>/32 (10.B.0.1)         the coordinator and release server listen on the hub
    node i: netns <prefix>-<i>, veth pair  host side <prefix>h<i> 10.B.(i+1).1/30
                                           ns side   <prefix>n<i> 10.B.(i+1).2/30, default route via .1

From inside a namespace the hub is reachable through the node's veth. `cut(i)` takes the host side of
the veth down (packets are dropped silently, like a pulled cable), `restore(i)` brings it back.
`close()` deletes every namespace, veth and the hub address it created, and is safe to call twice.
Uses `ip netns` / `ip link` / `ip addr` and therefore needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass


class NetnsError(RuntimeError):
    """An `ip` command failed; the message names the command and its error output."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def available() -> bool:
    """True when network namespaces can be made here (root and the `ip` tool)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def list_namespaces(prefix: str = "") -> list[str]:
    """Names of the network namespaces that start with `prefix`."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.startswith(prefix)]


def list_links(prefix: str) -> list[str]:
    """Names of the host's links that start with `prefix`."""
    out = _ip("-o", "link", "show").stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    return names


@dataclass(frozen=True)
class NodeNet:
    index: int
    namespace: str
    host_link: str
    ns_link: str
    host_address: str
    ns_address: str


class NetnsFabric:
    """The namespaces of one sandbox. `prefix` (<= 6 characters) names everything it creates."""

    def __init__(self, prefix: str | None = None, *, block: int | None = None) -> None:
        self.prefix = prefix or f"k3s{random.randrange(16**3):03x}"
        if len(self.prefix) > 8:
            raise ValueError(f"netns prefix {self.prefix!r} is longer than 8 characters (link names <= 15)")
        self.block = block if block is not None else random.randrange(100, 200)
        self.hub = f"10.{self.block}.0.1"
        self.nodes: dict[int, NodeNet] = {}
        self._hub_added = False

    def open(self) -> None:
        """Add the hub address on the host's loopback."""
        _ip("addr", "add", f"{self.hub}/32", "dev", "lo")
        self._hub_added = True

    def add_node(self, index: int) -> NodeNet:
        """Create namespace, veth pair, addresses and route for node number `index` (0-based, < 250)."""
        if index in self.nodes:
            return self.nodes[index]
        if not 0 <= index < 250:
            raise ValueError(f"node index {index} out of range 0..249")
        net = NodeNet(
            index=index, namespace=f"{self.prefix}-{index}", host_link=f"{self.prefix}h{index}",
            ns_link=f"{self.prefix}n{index}", host_address=f"10.{self.block}.{index + 1}.1",
            ns_address=f"10.{self.block}.{index + 1}.2",
        )
        self.nodes[index] = net
        ns = net.namespace
        _ip("netns", "add", ns)
        _ip("link", "add", net.host_link, "type", "veth", "peer", "name", net.ns_link)
        _ip("link", "set", net.ns_link, "netns", ns)
        _ip("addr", "add", f"{net.host_address}/30", "dev", net.host_link)
        _ip("link", "set", net.host_link, "up")
        _ip("-n", ns, "addr", "add", f"{net.ns_address}/30", "dev", net.ns_link)
        _ip("-n", ns, "link", "set", net.ns_link, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", net.host_address)
        return net

    def command(self, index: int, argv: list[str]) -> list[str]:
        """`argv` wrapped to run inside node `index`'s namespace."""
        return ["ip", "netns", "exec", self.nodes[index].namespace, *argv]

    def cut(self, index: int) -> None:
        """Cut node `index` off the network (its packets are dropped, connections hang)."""
        _ip("link", "set", self.nodes[index].host_link, "down")

    def restore(self, index: int) -> None:
        _ip("link", "set", self.nodes[index].host_link, "up")

    def close(self) -> None:
        """Delete everything this fabric created; waits until the kernel has removed the links."""
        errors: list[str] = []
        for net in list(self.nodes.values()):
            for args in (("link", "del", net.host_link), ("netns", "del", net.namespace)):
                result = _ip(*args, check=False)
                if result.returncode != 0 and "Cannot find" not in result.stderr \
                        and "No such file" not in result.stderr:
                    errors.append(f"`ip {' '.join(args)}`: {result.stderr.strip()}")
        self.nodes.clear()
        if self._hub_added:
            result = _ip("addr", "del", f"{self.hub}/32", "dev", "lo", check=False)
            if result.returncode != 0 and "Cannot assign" not in result.stderr:
                errors.append(f"removing hub address {self.hub}: {result.stderr.strip()}")
            self._hub_added = False
        deadline = time.monotonic() + 10
        while (list_links(self.prefix) or list_namespaces(self.prefix + "-")) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = list_links(self.prefix) + list_namespaces(self.prefix + "-")
        if left:
            errors.append(f"still present after cleanup: {left}")
        if errors:
            raise NetnsError(f"netns cleanup of {self.prefix!r} incomplete: " + "; ".join(errors))

    def __enter__(self) -> NetnsFabric:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
