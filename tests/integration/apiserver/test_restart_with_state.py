"""`python -m sandbox.apiserver --state FILE` keeps everything across a restart.

Aspects covered:
- the CLI prints one `listening on http://HOST:PORT` line, writes the kubeconfig, exits 0 on SIGTERM;
- after a restart objects, resourceVersions and minted tokens are still there;
- a watch resuming from a resourceVersion taken before the restart gets the missed changes replayed;
- a watch from a resourceVersion older than the kept history gets 410 Expired (small history, in-process).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from sandbox.apiserver.errors import ApiError
from sandbox.apiserver.resources import Registry
from sandbox.apiserver.selectors import matcher
from sandbox.apiserver.store import Store


@contextmanager
def _served(state: Path, kubeconfig: Path) -> Iterator[Any]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.apiserver",
            "--port",
            "0",
            "--state",
            str(state),
            "--kubeconfig-out",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        with client.ApiClient(cfg) as api:
            yield api
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_restart_keeps_objects_versions_tokens_and_replays_watches(tmp_path: Path) -> None:
    state, kc = tmp_path / "state.db", tmp_path / "kubeconfig"
    with _served(state, kc) as api:
        core = client.CoreV1Api(api)
        core.create_node({"metadata": {"name": "n1", "labels": {"a": "1"}}})
        core.create_namespaced_service_account("default", {"metadata": {"name": "sa"}})
        token = core.create_namespaced_service_account_token("sa", "default", {"spec": {}}).status.token
        before = core.list_node().metadata.resource_version
        core.patch_node("n1", {"metadata": {"labels": {"a": "2"}}})
        core.create_node({"metadata": {"name": "n2"}})
        n1_rv = core.read_node("n1").metadata.resource_version
    with _served(state, kc) as api:
        core = client.CoreV1Api(api)
        assert core.read_node("n1").metadata.resource_version == n1_rv
        assert core.read_node("n1").metadata.labels == {"a": "2"}
        seen = [
            (e["type"], e["object"].metadata.name)
            for e in watch.Watch().stream(core.list_node, resource_version=before, timeout_seconds=1)
        ]
        assert seen == [("MODIFIED", "n1"), ("ADDED", "n2")]
        review = client.AuthenticationV1Api(api).create_token_review({"spec": {"token": token}})
        assert review.status.authenticated
        assert review.status.user.username == "system:serviceaccount:default:sa"


def test_watch_older_than_history_is_expired() -> None:
    store = Store(history_limit=3)
    nodes = Registry().lookup("", "v1", "nodes")
    assert nodes is not None
    for i in range(6):
        store.create(nodes, None, {"metadata": {"name": f"n{i}"}})
    with pytest.raises(ApiError) as exc:
        store.watch(nodes, None, matcher([], []), "1")
    assert exc.value.code == 410 and exc.value.reason == "Expired"
    w = store.watch(nodes, None, matcher([], []), str(store.rv - 1))
    assert w.queue.qsize() == 1
