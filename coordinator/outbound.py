"""Requests to servers outside the cluster (channel server, release server) through the proxy the
environment names for them (`HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`, read by `wire.proxies`, as the agent
reads them for its downloads): the arguments aiohttp needs for it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from wire.proxies import Proxy

REDIRECTS = frozenset({301, 302, 303, 307, 308})


def proxy_options(url: str, proxy: Proxy | None) -> dict[str, Any]:
    """aiohttp's request arguments for going to `url` through `proxy` (none: straight there). Its
    credentials go with the CONNECT of an https URL (`proxy_headers`), but with the request itself for an
    http URL: aiohttp sends `proxy_headers` only with a CONNECT."""
    if proxy is None:
        return {}
    if urlsplit(url).scheme == "https":
        return {"proxy": proxy.url, "proxy_headers": proxy.headers}
    return {"proxy": proxy.url, "headers": proxy.headers}
