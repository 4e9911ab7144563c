"""Root fixtures shared by unit, integration and e2e tests: the API server emulator and its clients.

- `apiserver`: a running `ThreadedApiServer` (in memory), stopped after the test;
- `kubeconfig`: a kubeconfig for it in tmp_path;
- `kubectl(*args, check=True, input=None, timeout=30)`: /usr/bin/kubectl with that kubeconfig and a
  private discovery cache; raises with stdout/stderr in the message when `check` and it fails;
  `kubectl.prefix` is the argv prefix, for tests that need a Popen;
- `kube_api`: an official `kubernetes.client.ApiClient` for it, closed afterwards;
- `no_leaks` (also applied by the `no_leaks` marker): fails a test that leaves threads or child
  processes behind.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox.apiserver import ThreadedApiServer
from sandbox.cluster import PROXY_VARIABLES

KUBECTL = "/usr/bin/kubectl"

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_leaks: fail the test if it leaves threads or child processes")
    # Every server of the tests is on loopback: a proxy set for this machine (for its package registries,
    # say) must not be asked for them, in this process nor in the ones it starts. The tests of proxies
    # set their own (tests/integration/forward_proxy.py).
    for name in [n for n in os.environ if n.lower() in PROXY_VARIABLES]:
        del os.environ[name]


@pytest.fixture
def apiserver() -> Iterator[ThreadedApiServer]:
    with ThreadedApiServer() as server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: ThreadedApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    cache = tmp_path / "kube-cache"

    def run(*args: str, check: bool = True, input: str | None = None, timeout: float = 30) -> Any:
        cmd = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    run.prefix = [KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache)]  # type: ignore[attr-defined]
    return run


@pytest.fixture
def kube_api(kubeconfig: Path) -> Iterator[Any]:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        api.close()


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    deadline = time.monotonic() + 5
    while True:
        extra_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        extra_children = _children() - children_before
        if (not extra_threads and not extra_children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra_threads, f"test leaked threads: {[t.name for t in extra_threads]}"
    assert not extra_children, f"test leaked child processes: {sorted(extra_children)}"


@pytest.fixture(autouse=True)
def _no_leaks_marker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("no_leaks") is not None:
        request.getfixturevalue("no_leaks")
