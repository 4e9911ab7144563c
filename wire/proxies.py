"""Which HTTP proxy, if any, a request to a URL outside the cluster goes through: `HTTPS_PROXY`,
`HTTP_PROXY` and `NO_PROXY` from the environment, read as k3s itself reads them (Go's `httpproxy`).

Both sides use it for what they fetch from the release servers: the agent its k3s binary (`agent.download`),
the coordinator channel answers and checksum files (`coordinator.resolver`). Neither uses it to reach the
other or the API server: those are in the cluster, and a proxy meant for the outside would break them.
One implementation, so the two sides never disagree about a URL.

- `HTTPS_PROXY` / `https_proxy` for https URLs, `HTTP_PROXY` / `http_proxy` for http ones; the uppercase
  name wins when both are set (as in Go, so a node's k3s and its agent agree; curl and Python prefer the
  lowercase one), an empty value is unset. A value without a scheme is an `http://` URL.
  Only `http://` proxies are supported (an https URL goes through one with CONNECT, so its TLS is still
  end to end); an `https://` or `socks5://` proxy is a `ProxyError` naming the variable.
- Credentials in the proxy URL (`http://user:p%40ss@proxy:3128`) are sent as `Proxy-Authorization: Basic`.
- `no_proxy` / `NO_PROXY`: comma-separated entries; `*` exempts every URL; a host name exempts itself and
  its subdomains (`example.com` and `.example.com` alike); an IP address exempts itself; a CIDR range
  (`10.42.0.0/16`, `fd00::/8`, as k3s's own docs put in `NO_PROXY`) exempts the IP addresses in it; an
  entry with `:port` exempts that port only. A URL whose host is an IP address is exempted only by an
  address, a range or `*` (as in Go: `NO_PROXY=2.3` does not exempt 10.1.2.3).

Messages never hold the credentials of a proxy URL (`ProxyError` shows the value with them masked).

Pure: the environment is a parameter (`os.environ` by default). Standard library only.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class ProxyError(ValueError):
    """The environment names a proxy this code cannot use (the message names the variable and why)."""


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy: where to connect, and the `Proxy-Authorization` value if it wants credentials."""

    host: str
    port: int
    authorization: str | None = None

    @property
    def url(self) -> str:
        """The proxy as a URL without its credentials (for aiohttp's `proxy=`, and for messages)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What a request through the proxy adds (to its CONNECT, or to an http URL's request)."""
        return {"Proxy-Authorization": self.authorization} if self.authorization else {}

    def __str__(self) -> str:
        return self.url


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) of `name`, uppercase first; None when neither is set to something."""
    for variable in (name.upper(), name.lower()):
        value = environ.get(variable, "").strip()
        if value:
            return variable, value
    return None


def _masked(value: str) -> str:
    """A proxy URL as it may be shown: any user and password replaced by `***`."""
    scheme, sep, rest = value.rpartition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def _parse_proxy(variable: str, value: str) -> Proxy:
    raw = value if "://" in value else f"http://{value}"
    parts = urlsplit(raw)
    shown = f"{variable}={_masked(value)!r}"
    if parts.scheme.lower() != "http":
        raise ProxyError(f"{shown}: only http:// proxies are supported, not {parts.scheme}://")
    try:
        port = 80 if parts.port is None else parts.port
    except ValueError as exc:
        raise ProxyError(f"{shown}: {exc}") from None
    if not parts.hostname:
        raise ProxyError(f"{shown}: no proxy host in it")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(parts.hostname, port, authorization)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _exempt(entry: str, host: str, port: int) -> bool:
    """Whether one NO_PROXY entry exempts `host` (lowercase, no trailing dot) on `port`."""
    entry = entry.strip().lower()
    if not entry:
        return False
    if entry == "*":
        return True
    if "/" in entry:  # a CIDR range
        address = _ip(host)
        try:
            return address is not None and address in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    if (address := _ip(entry)) is not None:  # an IPv6 address holds colons: no port split
        return _ip(host) == address
    name, colon, entry_port = entry.rpartition(":")
    if colon and entry_port.isdigit():
        if int(entry_port) != port:
            return False
        entry = name
        if (address := _ip(entry)) is not None:
            return _ip(host) == address
    if _ip(host) is not None:  # a name never matches an address
        return False
    entry = entry.removeprefix("*").lstrip(".").rstrip(".")
    return bool(entry) and (host == entry or host.endswith("." + entry))


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy a request to `url` goes through, or None (no proxy set for its scheme, or exempted)."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    found = _env(env, f"{scheme}_proxy")
    if found is None:
        return None
    host = parts.hostname.rstrip(".")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None  # a bad port: the request fails on it, with or without a proxy
    exemptions = _env(env, "no_proxy")
    if exemptions is not None and any(_exempt(e, host, port) for e in exemptions[1].split(",")):
        return None
    return _parse_proxy(*found)
