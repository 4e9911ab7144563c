"""The agent API over TLS: the coordinator serves HTTPS with `--tls-cert-file`/`--tls-private-key-file`,
the agent verifies it with `--coordinator-ca-file`, and a renewed certificate is picked up in place.

Aspects: the agent's client polls through HTTPS when it trusts the certificate's CA, and fails as
`CoordinatorUnavailable` (certificate verify failed) when it does not; a renewed pair written over the files
is in use after `reload_if_changed` (an agent trusting only the new CA gets through, one trusting only the
old does not), while a pair that does not load (a key of another certificate, or a new certificate whose
key is not written yet) leaves the last good one serving; `python -m coordinator` with the two flags
announces https:// and serves /healthz over TLS, and exits 2 naming the files when they do not make a
pair; the agent refuses a CA file with an http:// URL.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from agent.client import CoordinatorClient, CoordinatorUnavailable
from agent.config import parse_args
from coordinator.api import BrokerSlot, IdleBroker, NodeAuthenticator, add_agent_routes
from coordinator.kube.protocol import TokenIdentity
from coordinator.tls import ServingCertificate
from wire.messages import Action, AgentState

NODE, TOKEN = "node-a", "tok-a"


class Reviewer:
    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None:
        return TokenIdentity(username="system:serviceaccount:system-upgrade:agent", node=NODE) \
            if token == TOKEN else None


def write_pair(ca: trustme.CA, cert_file: Path, key_file: Path) -> None:
    """A certificate for 127.0.0.1 signed by `ca`, written over the files as a Secret volume swaps them."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    for path, pem in ((cert_file, issued.cert_chain_pems), (key_file, [issued.private_key_pem])):
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(b"".join(blob.bytes() for blob in pem))
        os.replace(tmp, path)


def ca_file(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


class Served:
    def __init__(self, url: str, tls: ServingCertificate, tmp: Path) -> None:
        self.url, self.tls, self.tmp = url, tls, tmp

    async def poll_trusting(self, ca: Path | None) -> Action:
        token = self.tmp / "token"
        token.write_text(TOKEN)
        client = CoordinatorClient(self.url, NODE, token, timeout=5.0, ca_file=ca)
        state = AgentState(node=NODE, agent_version="test", arch="amd64", k3s_version="v1.30.3+k3s1")
        try:
            return (await client.poll(state, 0.0)).action
        finally:
            await client.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(trustme.CA(), cert, key)  # replaced below: the one the fixture's CA signs
    first = trustme.CA()
    write_pair(first, cert, key)
    ca_file(first, tmp_path / "first-ca.pem")
    tls = ServingCertificate(cert, key)
    app = web.Application()
    add_agent_routes(app, NodeAuthenticator(Reviewer()), BrokerSlot(IdleBroker(max_wait=0.1)), 1.0)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    try:
        yield Served(f"https://127.0.0.1:{runner.addresses[0][1]}", tls, tmp_path)
    finally:
        await runner.cleanup()


async def test_the_agent_polls_over_tls_when_it_trusts_the_ca(served: Served) -> None:
    assert await served.poll_trusting(served.tmp / "first-ca.pem") == Action.IDLE
    with pytest.raises(CoordinatorUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await served.poll_trusting(None)  # the system's CAs do not sign it


async def test_a_renewed_certificate_is_served_and_a_broken_one_is_not(served: Served) -> None:
    cert, key = served.tls.cert_file, served.tls.key_file
    assert not served.tls.reload_if_changed()  # nothing changed
    renewed = trustme.CA()
    write_pair(renewed, cert, key)
    assert served.tls.reload_if_changed()
    new_ca = ca_file(renewed, served.tmp / "renewed-ca.pem")
    assert await served.poll_trusting(new_ca) == Action.IDLE
    with pytest.raises(CoordinatorUnavailable):
        await served.poll_trusting(served.tmp / "first-ca.pem")
    # Half a renewal: a key that is not the certificate's. The renewed pair keeps serving.
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(key))
    assert not served.tls.reload_if_changed()
    assert await served.poll_trusting(new_ca) == Action.IDLE
    # The other half first: a new certificate before its key (OpenSSL would drop the live key for it).
    write_pair(renewed, cert, key)  # back to a good pair
    assert served.tls.reload_if_changed()
    third = trustme.CA()
    third.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
    assert not served.tls.reload_if_changed()
    assert await served.poll_trusting(new_ca) == Action.IDLE


def _coordinator(tmp_path: Path, cert: Path, key: Path) -> subprocess.Popen[str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0",
         "--tls-cert-file", str(cert), "--tls-private-key-file", str(key)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_coordinator_process_serves_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(ca, cert, key)
    proc = _coordinator(tmp_path, cert, key)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("coordinator listening on https://127.0.0.1:"), line
        context = ssl.create_default_context(cafile=str(ca_file(ca, tmp_path / "ca.pem")))
        with urllib.request.urlopen(f"{line.split(' on ', 1)[1].strip()}/healthz", timeout=5,
                                    context=context) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_the_coordinator_refuses_a_key_of_another_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(trustme.CA(), cert, key)
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
    proc = _coordinator(tmp_path, cert, key)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and str(cert) in err and "cannot serve TLS" in err, err


def test_the_agent_takes_a_ca_file_only_for_https(tmp_path: Path) -> None:
    ca = ca_file(trustme.CA(), tmp_path / "ca.pem")
    config = parse_args(["--node", NODE, "--coordinator", "https://coordinator:8080",
                         "--coordinator-ca-file", str(ca)])
    assert config.coordinator_ca_file == ca
    with pytest.raises(SystemExit):
        parse_args(["--node", NODE, "--coordinator", "http://coordinator:8080",
                    "--coordinator-ca-file", str(ca)])
