"""Channel resolution: a channel URL answers with a redirect whose Location basename is the version.

`version_from_location` is the pure judgement (`.../releases/tag/v1.30.1+k3s1` -> `v1.30.1+k3s1`);
`resolve_channel` does the one GET, never following redirects, as SUC does. Anything but a 30x whose
Location names a k3s version raises `ChannelError` (the message names the URL and the cause), so a lying
or broken channel server changes nothing.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import aiohttp

from coordinator.outbound import REDIRECTS, proxy_options
from coordinator.versions import is_version
from wire.proxies import ProxyError, proxy_for

MAX_BODY = 64 * 1024


class ChannelError(Exception):
    """The channel did not name a version (temporary: retried at the next poll)."""


def version_from_location(url: str, location: str | None) -> str:
    if not location:
        raise ChannelError(f"channel {url}: redirect without a Location header")
    path = urlsplit(location).path.rstrip("/")
    version = unquote(path.rsplit("/", 1)[-1])
    if not is_version(version):
        raise ChannelError(f"channel {url}: Location {location!r} does not end in a k3s version")
    return version


async def resolve_channel(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str:
    """GET `url` without following redirects (through the proxy the environment names for it, if any:
    `wire.proxies`) and return the version it points to."""
    try:
        proxy = proxy_for(url)
    except ProxyError as exc:
        raise ChannelError(f"channel {url}: {exc}") from exc
    via = f" (through proxy {proxy})" if proxy else ""
    try:
        async with session.get(
            url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s),
            **proxy_options(url, proxy),
        ) as resp:
            await resp.content.read(MAX_BODY)
            if resp.status not in REDIRECTS:
                raise ChannelError(
                    f"channel {url}{via}: answered {resp.status}, expected a redirect to a release")
            return version_from_location(url, resp.headers.get("Location"))
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ChannelError(f"channel {url}{via}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
