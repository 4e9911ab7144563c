"""Our own errors for everything that goes wrong talking to the Kubernetes API.

The rest of the coordinator never sees a `kubernetes` exception; the adapter translates them:

    KubeError                      base; `temporary` says whether retrying later can help
    ├── KubeUnavailable            network error, 5xx, 429 without a budget meaning (temporary)
    ├── NotFound                   404 (permanent for this object)
    ├── Conflict                   409 on a conditional write (re-read and decide again)
    │   └── LeaseTableConflict     409 on the lease table specifically
    ├── Forbidden                  401/403 for the coordinator itself (permanent: fix RBAC)
    ├── Invalid                    400/422 (permanent: our request or the object is wrong)
    ├── Expired                    410 on a watch: re-list (temporary); on a list's continue token the
    │                              adapter itself reads the list whole
    └── EvictionBlocked            429 from pods/eviction: a PodDisruptionBudget says not now (temporary)
"""

from __future__ import annotations


class KubeError(Exception):
    """A Kubernetes API call failed; the message names the object and the cause."""

    temporary = True

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeUnavailable(KubeError):
    temporary = True


class NotFound(KubeError):
    temporary = False


class Conflict(KubeError):
    temporary = True


class LeaseTableConflict(Conflict):
    """Someone else changed the lease table since we read it: re-read and decide again."""


class Forbidden(KubeError):
    temporary = False


class Invalid(KubeError):
    temporary = False


class EvictionBlocked(KubeError):
    """The Eviction API answered 429: a PodDisruptionBudget does not allow this eviction now."""

    temporary = True


class Expired(KubeError):
    """410 Gone: the resourceVersion a watch started from (or a paged list reads at) is too old."""

    temporary = True
