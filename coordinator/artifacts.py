"""k3s release artifacts: asset and checksum-file names per arch, URLs, checksum parsing, and a fetcher.

Assets live at `<base>/<tag>/<asset>` with `+` written `%2B` (base default
https://github.com/k3s-io/k3s/releases/download): binaries `k3s` (amd64), `k3s-arm64`, `k3s-armhf`,
`k3s-s390x`; checksums `sha256sum-<arch>.txt` (amd64, arm64, arm: the armhf file is `arm`, s390x),
lines `<64 hex>  <asset>`. Releases are immutable, so `ArtifactFetcher` keeps one good answer per
(version, arch) forever and retries failures on the next call. Errors: `ArtifactError` naming URL/cause.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from coordinator.outbound import REDIRECTS, proxy_options
from wire.messages import Artifact
from wire.proxies import ProxyError, proxy_for

DEFAULT_BASE_URL = "https://github.com/k3s-io/k3s/releases/download"
ASSETS = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf", "s390x": "k3s-s390x"}
CHECKSUM_FILES = {arch: f"sha256sum-{arch}.txt" for arch in ASSETS}
_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
MAX_BODY = 1 << 20
MAX_REDIRECTS = 10


class ArtifactError(Exception):
    """No verified artifact for a version/arch (the message names the URL or arch and the cause)."""


def _arch(arch: str) -> str:
    norm = {"armhf": "arm", "x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)
    if norm not in ASSETS:
        raise ArtifactError(f"unsupported architecture {arch!r} (k3s ships {', '.join(ASSETS)})")
    return norm


def asset_name(arch: str) -> str:
    return ASSETS[_arch(arch)]


def release_url(base: str, version: str, filename: str) -> str:
    return f"{base.rstrip('/')}/{quote(version, safe='')}/{filename}"


def asset_url(base: str, version: str, arch: str) -> str:
    return release_url(base, version, asset_name(arch))


def checksum_url(base: str, version: str, arch: str) -> str:
    return release_url(base, version, CHECKSUM_FILES[_arch(arch)])


def parse_checksums(text: str) -> dict[str, str]:
    """asset name -> lowercase sha256, from `sha256sum` output; other lines are ignored. A name listed
    twice with different sums is an `ArtifactError`: neither can be trusted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            name, sha = m.group(2), m.group(1).lower()
            if out.setdefault(name, sha) != sha:
                raise ArtifactError(f"the checksum file lists {name} twice with different sums")
    return out


def artifact_for(base: str, version: str, arch: str, checksum_text: str) -> Artifact:
    name = asset_name(arch)
    try:
        sha = parse_checksums(checksum_text).get(name)
    except ArtifactError as exc:
        raise ArtifactError(f"{checksum_url(base, version, arch)}: {exc}") from None
    if sha is None:
        raise ArtifactError(f"{checksum_url(base, version, arch)} lists no checksum for {name}")
    return Artifact(url=asset_url(base, version, arch), sha256=sha, name=name)


class ArtifactFetcher:
    """Resolves Artifacts over HTTP, caching each good (version, arch) answer for good."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str = DEFAULT_BASE_URL, timeout: float = 10.0
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.timeout = timeout
        self.cache: dict[tuple[str, str], Artifact] = {}

    async def get(self, version: str, arch: str) -> Artifact:
        key = (version, _arch(arch))
        if key in self.cache:
            return self.cache[key]
        body = await self._fetch(checksum_url(self.base_url, version, arch))
        art = artifact_for(self.base_url, version, arch, body)
        self.cache[key] = art
        return art

    async def _fetch(self, url: str) -> str:
        """The text at `url`, redirects followed one at a time (a mirror may send us on to its storage), each
        hop through the proxy the environment names for its own URL (`wire.proxies`): NO_PROXY and the
        proxy's credentials hold per hop, as the agent's downloads do. A redirect from https to http is
        refused: the binary is verified against this file."""
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                proxy = proxy_for(url)
            except ProxyError as exc:
                raise ArtifactError(f"GET {url}: {exc}") from exc
            via = f" (through proxy {proxy})" if proxy else ""
            try:
                async with self.session.get(
                    url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=self.timeout),
                    **proxy_options(url, proxy),
                ) as resp:
                    location = resp.headers.get("Location")
                    if resp.status not in REDIRECTS or not location:
                        body = (await resp.content.read(MAX_BODY)).decode("utf-8", errors="replace")
                        if resp.status != 200:
                            raise ArtifactError(f"GET {url}{via}: answered {resp.status}")
                        return body
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise ArtifactError(f"GET {url}{via}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
            moved = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(moved).scheme != "https":
                raise ArtifactError(f"GET {url}{via}: redirected to {moved}, not https: refused")
            url = moved
        raise ArtifactError(f"GET {first}: more than {MAX_REDIRECTS} redirects")
