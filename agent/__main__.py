"""`python -m agent` / `k3s-upgrade-agent`: parse settings, log JSON lines, run the loop until SIGTERM
(deferred while k3s is being replaced or restored: `agent.loop.run`)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from agent.config import parse_args
from agent.loop import run

log = logging.getLogger("agent")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        body.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=config.log_level, handlers=[handler])

    async def amain() -> None:
        """Run the loop until SIGTERM/SIGINT (which `run` defers while k3s is being replaced)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(config, stop)

    asyncio.run(amain())
    return 0


if __name__ == "__main__":
    sys.exit(main())
