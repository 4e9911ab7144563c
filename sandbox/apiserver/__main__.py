"""`python -m sandbox.apiserver --host H --port P [--state FILE] [--kubeconfig-out FILE]`.

Prints exactly one line `listening on http://HOST:PORT` (flushed) once it accepts connections; SIGTERM
or SIGINT stop it cleanly (watches closed, state file closed; every write is already on disk). Logs are
JSON lines on stderr. Environment: `SANDBOX_APISERVER_TOKEN` (token in the written kubeconfig,
default `admin-token`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from sandbox.apiserver.server import ApiServer


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sandbox.apiserver", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=6443, help="port to listen on; 0 picks a free one (default 6443)"
    )
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="SQLite file keeping the state across restarts (default: in memory only)",
    )
    p.add_argument(
        "--kubeconfig-out", type=Path, default=None, help="write a kubeconfig for this server here"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("SANDBOX_APISERVER_TOKEN", "admin-token"),
        help="bearer token put in the kubeconfig (default admin-token)",
    )
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    server = ApiServer(args.state)
    await server.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.kubeconfig_out is not None:
            server.write_kubeconfig(args.kubeconfig_out, args.token)
        print(f"listening on {server.url}", flush=True)
        logging.getLogger("sandbox.apiserver").info("listening on %s (state %s)", server.url, args.state)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
