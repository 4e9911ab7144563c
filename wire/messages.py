"""Bodies of the agent API (`/v1/...`), validated with pydantic at both ends.

The agent drives a small state machine on its node; the coordinator tells it what to do next.
Every exchange is the agent posting its `AgentState` (poll) or a `Report` (a phase change) and the
coordinator answering with an `Instruction`. The full protocol is described in docs/protocol.md.

    agent phase:  idle -> downloading -> staged -> applying -> restarted
                  -> (idle after finish | rolling_back -> rolled_back)
                  any phase -> failed
    instruction:  idle | stage | apply | rollback | finish

Nothing in here performs I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "v1"
"""Path prefix of the agent API: `/v1/agents/{node}/poll` and `/v1/agents/{node}/report`."""

TOKEN_AUDIENCE = "k3s-upgrade-coordinator"
"""Audience of the projected ServiceAccount token an agent presents (Authorization: Bearer)."""

PREFETCH_SINCE = (0, 2, 0)
"""The first agent version that takes `Instruction.prefetch` (an older one rejects the field)."""


def speaks_prefetch(agent_version: str) -> bool:
    """Whether an agent of `agent_version` (`AgentState.agent_version`) may be told to prefetch."""
    found = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", agent_version)  # 0.2.0, 0.2, 0.3.0rc1, 1.0.0-rc1
    return found is not None and tuple(int(g or 0) for g in found.groups()) >= PREFETCH_SINCE


def to_wire(body: BaseModel) -> str:
    """A body as sent: fields that are None are left out, so a peer of the version before a field was
    added (bodies reject unknown fields) reads it as long as the new field is unset."""
    return body.model_dump_json(exclude_none=True)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentPhase(StrEnum):
    """Where the agent is in the upgrade of its node."""

    IDLE = "idle"
    """Nothing in flight; the host runs the binary it had."""
    DOWNLOADING = "downloading"
    """Fetching and verifying the artifact; nothing on the host has changed."""
    STAGED = "staged"
    """The verified binary sits next to the live one as a temporary file; nothing has changed yet."""
    APPLYING = "applying"
    """Replacing the binary and restarting k3s."""
    RESTARTED = "restarted"
    """The new k3s process runs and stayed up; the coordinator now verifies the Node."""
    ROLLING_BACK = "rolling_back"
    """Restoring the previous binary and restarting k3s."""
    ROLLED_BACK = "rolled_back"
    """The previous binary runs again after a failed upgrade."""
    FAILED = "failed"
    """The lease failed; `error` says why. The host runs a complete binary (old or, if rollback was
    impossible, whatever `k3s_version` reports)."""


class Action(StrEnum):
    """What the coordinator asks an agent to do."""

    IDLE = "idle"
    """No work: keep the current binary, poll again."""
    STAGE = "stage"
    """Download and verify `lease.artifact`, then report `staged`. Change nothing on the host."""
    APPLY = "apply"
    """The node is cordoned/drained as the plan asks: replace the binary, restart, report `restarted`."""
    ROLLBACK = "rollback"
    """The node did not verify (or the plan was withdrawn after apply): restore the previous binary."""
    FINISH = "finish"
    """The coordinator verified and labelled the node: drop the rollback copy and return to idle."""


class Artifact(_Body):
    """The k3s binary for one version and architecture."""

    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(description="Release asset name, e.g. k3s or k3s-arm64.")


class LeaseAssignment(_Body):
    """The upgrade lease the coordinator granted this node."""

    lease_id: str = Field(description="Opaque, unique per grant; echoed in every report.")
    plan: str
    node: str
    target_version: str = Field(description="e.g. v1.30.4+k3s1")
    plan_hash: str
    artifact: Artifact
    restart_stable_seconds: float = Field(
        default=10.0, ge=0, description="How long the new k3s must stay up before `restarted`."
    )
    restart_timeout_seconds: float = Field(
        default=120.0, gt=0, description="How long to wait for a new k3s process before rolling back."
    )


class Prefetch(_Body):
    """A binary this node will soon be granted a lease for: download and verify it now, before its turn
    (see docs/protocol.md, "Prefetch"). Nothing on the host changes."""

    artifact: Artifact
    target_version: str


class Instruction(_Body):
    """The coordinator's answer to every poll and report."""

    action: Action
    lease: LeaseAssignment | None = None
    reason: str = ""
    poll_after_seconds: float = Field(default=1.0, ge=0)
    prefetch: Prefetch | None = Field(
        default=None,
        description="With `idle` only: the binary to download before this node's turn (None: none now).",
    )


class AgentState(_Body):
    """Posted on every poll (`POST /v1/agents/{node}/poll?wait=SECONDS`): who the agent is and where it is.

    The coordinator answers at once when it has an instruction that differs from what the agent is
    doing, otherwise after `wait` seconds at most (long-poll), with `Action.IDLE` or the current one.
    """

    node: str
    agent_version: str
    arch: str = Field(description="GOARCH-style: amd64, arm64, arm")
    k3s_version: str | None = Field(default=None, description="Version of the running k3s, if found.")
    k3s_binary: str | None = Field(default=None, description="Host path of the running k3s binary.")
    lease_id: str | None = None
    phase: AgentPhase = AgentPhase.IDLE
    progress: float | None = Field(default=None, ge=0, le=1)
    error: str | None = None
    prefetched: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of a prefetched binary the agent holds, verified, ready to be applied.",
    )


class Report(_Body):
    """A phase change of a lease (`POST /v1/agents/{node}/report`). Retried by the agent until answered."""

    node: str
    lease_id: str
    phase: AgentPhase
    k3s_version: str | None = None
    error: str | None = None
    detail: str = ""


class ErrorBody(_Body):
    """Every non-2xx answer of the agent API."""

    error: str
    status: int
