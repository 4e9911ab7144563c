"""`python -m coordinator` runs on uvloop's event loop (see the module docstring of coordinator.__main__).

Aspects: `main` runs `serve` on a uvloop loop and returns 0 when it ends; an error out of `serve` is
logged and gives exit status 1.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvloop

import coordinator.__main__ as entry


@pytest.fixture(autouse=True)
def root_logging() -> Any:
    """`main` installs its JSON handler on the root logger: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_serve_runs_on_a_uvloop_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type] = []

    async def serve(settings: Any, tls: Any = None) -> None:
        seen.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(entry, "serve", serve)
    assert entry.main([]) == 0
    assert seen == [uvloop.Loop]


def test_an_error_out_of_serve_gives_exit_status_1(monkeypatch: pytest.MonkeyPatch) -> None:
    async def serve(settings: Any, tls: Any = None) -> None:
        raise RuntimeError("the API server said no")

    monkeypatch.setattr(entry, "serve", serve)
    assert entry.main([]) == 1
