"""`sandbox.netns`: a node's namespace reaches the hub, can be cut off and restored, and leaves nothing.

Aspects covered:
- a process in a node's namespace reaches a server listening on the hub address (real TCP);
- after `cut` the same request times out; after `restore` it works again;
- `close` removes every namespace, veth and the hub address (checked with `ip`), also when called twice.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sandbox import netns

pytestmark = pytest.mark.skipif(not netns.available(), reason="needs root and the ip tool")

PROBE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=1.5).status)"


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def probe(fabric: netns.NetnsFabric, index: int, url: str) -> bool:
    result = subprocess.run(fabric.command(index, [sys.executable, "-c", PROBE, url]),
                            capture_output=True, text=True, timeout=20)
    return result.returncode == 0 and result.stdout.strip() == "200"


def test_cut_restore_and_cleanup() -> None:
    fabric = netns.NetnsFabric()
    fabric.open()
    server: ThreadingHTTPServer | None = None
    try:
        fabric.add_node(0)
        fabric.add_node(1)
        server = ThreadingHTTPServer((fabric.hub, 0), Hello)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://{fabric.hub}:{server.server_address[1]}/"
        assert probe(fabric, 0, url) and probe(fabric, 1, url)
        fabric.cut(0)
        assert not probe(fabric, 0, url)
        assert probe(fabric, 1, url), "cutting node 0 must not affect node 1"
        fabric.restore(0)
        assert probe(fabric, 0, url)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        fabric.close()
    assert netns.list_namespaces(fabric.prefix) == []
    assert netns.list_links(fabric.prefix) == []
    with pytest.raises(OSError):
        socket.create_server((fabric.hub, 0)).close()
    fabric.close()
