"""`KubeCluster` reaches an HTTPS API server the way a k3s kubeconfig describes it.

A throwaway CA (trustme) issues the server's certificate for 127.0.0.1 and a client certificate; the
kubeconfig carries them inline (`certificate-authority-data`, `client-certificate-data`,
`client-key-data`), as /etc/rancher/k3s/k3s.yaml does. The server requires the client certificate.

Aspects covered:
- a request goes through: the server verified our client certificate and we verified its certificate;
- a server whose certificate another CA issued is refused (KubeUnavailable, naming the request).
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from coordinator.kube import errors
from coordinator.kube.client import KubeCluster
from coordinator.kube.resources import NODES


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(path: Path, port: int, ca: trustme.CA, client: trustme.LeafCert) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        f"certificate-authority-data: {b64(ca.cert_pem.bytes())}}}}}]\n"
        f"users: [{{name: u, user: {{client-certificate-data: {b64(client.cert_chain_pems[0].bytes())}, "
        f"client-key-data: {b64(client.private_key_pem.bytes())}}}}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    return path


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, trustme.CA, list[str]]]:
    ca = trustme.CA()
    peers: list[str] = []

    async def handle(req: web.Request) -> web.Response:
        cert = req.transport.get_extra_info("peercert") if req.transport else None
        subject = dict(x[0] for x in (cert or {}).get("subject", ()))
        peers.append(str(subject.get("commonName") or subject))
        return web.json_response({"kind": "List", "items": [], "metadata": {"resourceVersion": "1"}})

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield runner.addresses[0][1], ca, peers
    finally:
        await runner.cleanup()


async def test_client_certificate_and_server_ca_from_the_kubeconfig(
    server: tuple[int, trustme.CA, list[str]], tmp_path: Path
) -> None:
    port, ca, peers = server
    client = ca.issue_cert("admin.k3s.local", common_name="system-admin")
    cluster = KubeCluster.connect(str(kubeconfig(tmp_path / "kc", port, ca, client)))
    try:
        items, rv = await cluster.list_objects(NODES)
    finally:
        await cluster.aclose()
    assert (items, rv) == ([], "1")
    assert peers == ["system-admin"]


async def test_a_server_certificate_from_another_ca_is_refused(
    server: tuple[int, trustme.CA, list[str]], tmp_path: Path
) -> None:
    port, _ca, peers = server
    other = trustme.CA()
    client = other.issue_cert("admin.k3s.local", common_name="system-admin")
    cluster = KubeCluster.connect(str(kubeconfig(tmp_path / "kc", port, other, client)))
    try:
        with pytest.raises(errors.KubeUnavailable) as info:
            await cluster.list_objects(NODES)
    finally:
        await cluster.aclose()
    assert "list nodes" in str(info.value) and "certificate" in str(info.value).lower()
    assert peers == []
