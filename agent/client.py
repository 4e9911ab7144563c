"""The coordinator client: long-poll for instructions, post reports, with the node's ServiceAccount token.

The token file is read on every request, so a rotated projected token is picked up without a restart.
Errors: `CoordinatorUnavailable` (temporary: connection refused, timeouts, 5xx, 401 while the token
rotates; retry later) and `Rejected` (permanent for this message: the coordinator answered 4xx).
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from pydantic import BaseModel, ValidationError

from wire.messages import API_VERSION, AgentState, Instruction, Report


class CoordinatorUnavailable(Exception):
    """The coordinator could not be reached or answered with a temporary error."""


class Rejected(Exception):
    """The coordinator refused the message (4xx)."""


class CoordinatorClient:
    def __init__(self, base_url: str, node: str, token_file: Path, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.node = node
        self.token_file = token_file
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _token(self) -> str | None:
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, body: BaseModel, wait: float, params: dict[str, str]) -> Instruction:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{self.base_url}/{API_VERSION}/agents/{self.node}/{path}"
        try:
            async with self._session.post(
                url, data=body.model_dump_json(), headers=headers, params=params,
                timeout=aiohttp.ClientTimeout(total=wait + self.timeout),
            ) as response:
                text = await response.text()
                if response.status >= 500 or response.status in (401, 429):
                    raise CoordinatorUnavailable(f"POST {url} answered {response.status}: {text[:300]}")
                if response.status >= 400:
                    raise Rejected(f"POST {url} answered {response.status}: {text[:300]}")
                try:
                    return Instruction.model_validate_json(text)
                except ValidationError as exc:
                    raise CoordinatorUnavailable(f"POST {url} answered a bad instruction: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise CoordinatorUnavailable(f"POST {url} failed: {exc or type(exc).__name__}") from exc

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        return await self._post("poll", state, wait, {"wait": f"{wait:g}"})

    async def report(self, report: Report) -> Instruction:
        return await self._post("report", report, 0.0, {})
