"""Serving the agent API over TLS: the listener's certificate, kept current as its files are replaced.

Agents send their ServiceAccount token with every request; over plain HTTP anyone on the pod network could
read one and act for that node until it expires. With `--tls-cert-file` and `--tls-private-key-file` the
coordinator serves HTTPS (the status endpoints too). The files are typically a `kubernetes.io/tls` Secret
that cert-manager renews in place: they are looked at every `RELOAD_INTERVAL` seconds and loaded again
when they changed, for the connections made from then on. A pair that does not load (a half-written
renewal, a key that does not match) is logged and the last good one is kept until the next look.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("coordinator.tls")

RELOAD_INTERVAL = 30.0
"""Seconds between two looks at the certificate files."""


@contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path to a private in-memory copy of `data` (a memfd: the root file system may be read-only)."""
    fd = os.memfd_create("coordinator-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


class ServingCertificate:
    """The server side's `ssl.SSLContext` (TLS 1.2 or later) loaded from a certificate and key file."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._files()
        self.context.load_cert_chain(cert_file, key_file)  # OSError / ssl.SSLError: the caller says which

    def _files(self) -> tuple[tuple[int, int, int], ...]:
        """What tells a changed file: inode (a Secret volume swaps a symlink), size and mtime."""
        stats = (os.stat(self.cert_file), os.stat(self.key_file))
        return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last load; True if a new pair is in use.

        The live context is only given a pair that loaded into a scratch context first, from in-memory
        copies of the files: OpenSSL installs a certificate before its key and drops a key that does not
        match it, so loading a mismatched pair (the certificate renewed, the key not yet) straight into
        the live context would leave it with no key, and every handshake would fail."""
        try:
            stamp = self._files()
            if stamp == self._stamp:
                return False
            cert_pem, key_pem = self.cert_file.read_bytes(), self.key_file.read_bytes()
            with _in_memory(cert_pem) as cert, _in_memory(key_pem) as key:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # a pair?
                self.context.load_cert_chain(cert, key)  # the very bytes just checked
        except (OSError, ssl.SSLError) as exc:
            log.error("serving certificate %s not reloaded, the last one stays in use: %s", self.cert_file,
                      exc)
            return False
        self._stamp = stamp
        log.info("serving certificate %s reloaded", self.cert_file)
        return True

    async def keep_current(self, interval: float = RELOAD_INTERVAL) -> None:
        """Reload the pair whenever its files change, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
