"""The wire format rejects what it must and round-trips what it accepts.

Aspects: unknown fields are refused (a typo is an error, not silence), checksums must be 64 lowercase
hex digits, progress is bounded, and every message survives JSON both ways unchanged; a body whose
fields added since (`prefetch`, `prefetched`) are unset reads with the models of before, and only agents
of a version that knows `prefetch` are told it.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from wire.messages import (
    Action,
    AgentPhase,
    AgentState,
    Artifact,
    Instruction,
    LeaseAssignment,
    Report,
    speaks_prefetch,
    to_wire,
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


# -- a peer of the version before `prefetch` / `prefetched` ----------------------------------------------

def _before_prefetch(model: type[BaseModel], new: str) -> type[BaseModel]:
    """`model` as it was before the field `new` was added (same fields, unknown ones refused)."""
    fields: dict[str, Any] = {
        name: (f.annotation, f) for name, f in model.model_fields.items() if name != new
    }
    return create_model(f"Old{model.__name__}", __config__=ConfigDict(extra="forbid"), **fields)


def test_bodies_without_the_new_fields_set_read_as_before() -> None:
    """While the DaemonSet rolls the agents over, old and new agents and coordinators talk to each other:
    a body whose new field is unset leaves it out (`to_wire`), so the old model reads it."""
    old_instruction = _before_prefetch(Instruction, "prefetch")
    old_state = _before_prefetch(AgentState, "prefetched")
    for ins in (Instruction(action=Action.IDLE), Instruction(action=Action.APPLY, lease=lease())):
        read = old_instruction.model_validate_json(to_wire(ins))
        assert read.model_dump() == ins.model_dump(exclude={"prefetch"})
        with pytest.raises(ValidationError):  # what `model_dump_json` would send: "prefetch": null
            old_instruction.model_validate_json(ins.model_dump_json())
    st = AgentState(node="n1", agent_version="0.2.0", arch="amd64", k3s_version="v1.30.3+k3s1")
    assert old_state.model_validate_json(to_wire(st)).model_dump() == st.model_dump(exclude={"prefetched"})
    # And a new peer reads what an old one sends (null fields included).
    sent = old_state(**st.model_dump(exclude={"prefetched"})).model_dump_json()
    assert AgentState.model_validate_json(sent) == st


@pytest.mark.parametrize(
    ("version", "speaks"),
    [("0.2.0", True), ("0.10.1", True), ("1.0.0-rc1", True), ("0.2.0+build.5", True), ("0.3.0rc1", True),
     ("0.2", True), ("v0.2.1", True), ("0.1.0", False), ("0.1.9", False), ("scripted", False), ("", False),
     ("x.2.0", False)],
)
def test_only_agents_that_know_the_field_are_told_to_prefetch(version: str, speaks: bool) -> None:
    assert speaks_prefetch(version) is speaks
