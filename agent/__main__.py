"""`python -m agent` / `k3s-upgrade-agent`: parse settings, log JSON lines, run the loop until SIGTERM.

When the loop asks for a fresh process (a lease is over and its download's modules are still loaded, see
`agent.loop`), the agent re-executes itself with the same command line and environment, keeping its pid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress

from agent.config import parse_args
from agent.loop import UPGRADE_ONLY_MODULES, run

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

    async def amain() -> bool:
        """True when the loop asked for a fresh process; False after SIGTERM/SIGINT."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(run(config, stop))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            return False
        return task.result() and not stop.is_set()

    while asyncio.run(amain()):
        if argv is None:  # our own command line: start afresh (returns only if the exec failed)
            _reexec()
        # Called with explicit arguments (in-process): carry on in this process.
    return 0


def _reexec() -> None:
    command = [sys.executable, *sys.orig_argv[1:]]
    log.info("lease over: starting the agent afresh to drop the download's modules (%s)",
             ", ".join(UPGRADE_ONLY_MODULES))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(command[0], command)
    except OSError as exc:
        log.warning("could not start afresh (%s); carrying on in this process", exc)


if __name__ == "__main__":
    sys.exit(main())
