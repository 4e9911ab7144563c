"""The wire format rejects what it must and round-trips what it accepts.

Aspects: unknown fields are refused (a typo is an error, not silence), checksums must be 64 lowercase
hex digits, progress is bounded, and every message survives JSON both ways unchanged.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wire.messages import (
    Action,
    AgentPhase,
    AgentState,
    Artifact,
    Instruction,
    LeaseAssignment,
    Report,
)

SHA = "a" * 64


def lease() -> LeaseAssignment:
    return LeaseAssignment(
        lease_id="server-plan/n1/1",
        plan="server-plan",
        node="n1",
        target_version="v1.30.4+k3s1",
        plan_hash="h",
        artifact=Artifact(url="http://127.0.0.1/k3s", sha256=SHA, name="k3s"),
    )


def test_instruction_round_trips_through_json() -> None:
    instruction = Instruction(action=Action.STAGE, lease=lease(), reason="granted")
    assert Instruction.model_validate_json(instruction.model_dump_json()) == instruction


def test_state_defaults_to_idle() -> None:
    state = AgentState(node="n1", agent_version="0.1.0", arch="amd64")
    assert state.phase is AgentPhase.IDLE and state.lease_id is None


@pytest.mark.parametrize("sha", ["A" * 64, "a" * 63, "g" * 64, ""])
def test_artifact_rejects_malformed_checksums(sha: str) -> None:
    with pytest.raises(ValidationError):
        Artifact(url="http://x/k3s", sha256=sha, name="k3s")


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Report.model_validate({"node": "n1", "lease_id": "x", "phase": "staged", "bogus": 1})


@pytest.mark.parametrize("progress", [-0.1, 1.5])
def test_progress_is_a_fraction(progress: float) -> None:
    with pytest.raises(ValidationError):
        AgentState(node="n1", agent_version="0", arch="amd64", progress=progress)


def test_unknown_phase_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Report.model_validate({"node": "n1", "lease_id": "x", "phase": "exploded"})
