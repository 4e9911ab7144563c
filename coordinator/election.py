"""Leader election (`--leader-elect`) with a coordination.k8s.io Lease named `k3s-upgrade-coordinator`.

Standard semantics (as client-go's leaderelection): the holder renews `spec.renewTime` every third of
`leaseDurationSeconds`; anyone may take the lease once `renewTime + leaseDurationSeconds` has passed;
every write is conditional on the resourceVersion read, so two replicas never both win. A leader that
cannot renew within the lease duration steps down (stops writing) before another replica may take over.

The decision (`claim`) is a pure function of the Lease as read, our identity and the clock; the loop
(`LeaderElector.run`) does the I/O. Safety of the lease table does not depend on this: every table
write is conditional anyway; election just keeps a second replica from wasting work. A replica that
stops (SIGTERM) gives the Lease up once it has stopped writing (`released`), so the next one takes over
at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from coordinator.kube.errors import Conflict, KubeError
from coordinator.kube.protocol import Cluster

log = logging.getLogger("coordinator.election")


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def claim(
    spec: Mapping[str, Any] | None, identity: str, now: datetime, duration: float
) -> dict[str, Any] | None:
    """The Lease spec to write to hold (or take) leadership now, or None if someone else validly holds it."""
    seconds = max(1, round(duration))
    if spec is None:
        return {
            "holderIdentity": identity,
            "leaseDurationSeconds": seconds,
            "acquireTime": _fmt(now),
            "renewTime": _fmt(now),
            "leaseTransitions": 0,
        }
    holder = spec.get("holderIdentity")
    renew = _parse(spec.get("renewTime"))
    held_for = float(spec.get("leaseDurationSeconds") or seconds)
    if holder == identity:
        return {**spec, "renewTime": _fmt(now), "leaseDurationSeconds": seconds}
    if holder and renew is not None and renew + timedelta(seconds=held_for) > now:
        return None
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": seconds,
        "acquireTime": _fmt(now),
        "renewTime": _fmt(now),
        "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1,
    }


def released(spec: Mapping[str, Any] | None, identity: str, now: datetime) -> dict[str, Any] | None:
    """The Lease spec that gives leadership up (no holder: anyone may take it at once, as client-go's
    `ReleaseOnCancel` writes), or None when we do not hold it."""
    if spec is None or spec.get("holderIdentity") != identity:
        return None
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _fmt(now)}


class LeaderElector:
    """Runs the election loop; `leading` is set while this replica may write."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        name: str,
        identity: str,
        duration: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cluster = cluster
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = duration
        self._clock = clock
        self.leading = asyncio.Event()
        self.changed = asyncio.Event()
        """Set on every gain or loss of leadership (the caller clears it)."""

    def _set(self, leading: bool) -> None:
        if leading != self.leading.is_set():
            (self.leading.set if leading else self.leading.clear)()
            self.changed.set()
            log.info(
                "leadership %s",
                "acquired" if leading else "lost",
                extra={"identity": self.identity, "lease": f"{self._namespace}/{self._name}"},
            )

    async def try_once(self) -> bool:
        """One attempt to acquire or renew; True if we hold the lease afterwards."""
        current = await self._cluster.get_lease(self._namespace, self._name)
        spec = claim(current.spec if current else None, self.identity, self._clock(), self._duration)
        if spec is None:
            return False
        try:
            await self._cluster.write_lease(
                self._namespace, self._name, {}, spec, current.resource_version if current else None
            )
        except Conflict:
            return False
        return True

    async def release(self, limit: float = 2.0) -> None:
        """Give the Lease up, once this replica has stopped writing and `run` is cancelled, so that the next
        replica takes over at once rather than a lease duration later (a Deployment rollout). Best effort:
        a failure is logged, and the Lease then expires as it would after a crash."""
        if not self.leading.is_set():
            return
        try:
            async with asyncio.timeout(limit):
                current = await self._cluster.get_lease(self._namespace, self._name)
                spec = released(current.spec if current else None, self.identity, self._clock())
                if current is None or spec is None:
                    return
                await self._cluster.write_lease(
                    self._namespace, self._name, {}, spec, current.resource_version
                )
        except (KubeError, TimeoutError) as exc:
            log.warning("leadership not released (it expires on its own): %s",
                        exc or f"no answer within {limit:g} s")
            return
        self._set(False)
        log.info("leadership released", extra={"identity": self.identity})

    async def run(self) -> None:
        """Forever: renew/acquire every third of the duration; step down when renewals keep failing.

        An attempt gets at most a third of the duration, and while leading no longer than until two thirds
        of it have passed since the last renewal: a renewal that hangs on a slow API server ends the lead
        then, before another replica may take the Lease, not when the request finally times out."""
        last_ok: datetime | None = None
        margin = self._duration * 2 / 3
        while True:
            limit = self._duration / 3
            if self.leading.is_set() and last_ok is not None:
                limit = max(0.0, min(limit, margin - (self._clock() - last_ok).total_seconds()))
            try:
                async with asyncio.timeout(limit):
                    ok = await self.try_once()
                if ok:
                    last_ok = self._clock()
                self._set(ok)
            except (KubeError, TimeoutError) as exc:
                log.warning("leader election attempt failed: %s", exc or f"no answer within {limit:.1f} s")
                # Step down before the lease could expire for the others (with a safety margin).
                if last_ok is None or (self._clock() - last_ok).total_seconds() >= margin - 0.05:
                    self._set(False)
            await asyncio.sleep(self._duration / 3)


async def act_while_leading(
    elector: LeaderElector,
    start: Callable[[], None],
    stop: Callable[[], Awaitable[None]],
    done: asyncio.Event,
) -> None:
    """Call `start` when leadership is gained and await `stop` when it is lost, until `done` is set."""
    while not done.is_set():
        changed = asyncio.create_task(elector.changed.wait())
        finished = asyncio.create_task(done.wait())
        await asyncio.wait({changed, finished}, return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
        finished.cancel()
        await asyncio.gather(changed, finished, return_exceptions=True)
        elector.changed.clear()
        if done.is_set():
            break
        if elector.leading.is_set():
            start()
        else:
            await stop()
