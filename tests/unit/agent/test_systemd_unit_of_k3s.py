"""`--systemd-unit auto`: the unit a k3s process runs in, read from its `/proc/PID/cgroup`.

Aspects: install.sh's units on cgroup v2 (`k3s.service` on servers, `k3s-agent.service` on agents,
`k3s-<name>.service` with INSTALL_K3S_NAME) and on cgroup v1 (the `name=systemd` hierarchy, whatever other
controllers list); a process in no service (a login session, a container, the root cgroup) has none, nor
one in a service not named `k3s*` (a k3s started by hand from an ssh login, a user manager's).
"""

from __future__ import annotations

import pytest

from agent.restart import unit_from_cgroup


@pytest.mark.parametrize(("text", "unit"), [
    ("0::/system.slice/k3s.service\n", "k3s.service"),
    ("0::/system.slice/k3s-agent.service\n", "k3s-agent.service"),
    ("0::/system.slice/k3s-edge.service\n", "k3s-edge.service"),
    ("12:memory:/system.slice/k3s.service\n1:name=systemd:/system.slice/k3s-agent.service\n0::/\n",
     "k3s-agent.service"),
    ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-0a1b.scope\n", None),
    ("0::/\n", None),
    ("0::/system.slice/ssh.service\n", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.service\n", None),
    ("0::/../../system.slice/k3s.service\n", "k3s.service"),
    ("", None),
])
def test_the_unit_k3s_runs_in(text: str, unit: str | None) -> None:
    assert unit_from_cgroup(text) == unit
