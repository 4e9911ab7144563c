"""The import rules that keep the layers honest (see STYLE.md).

- `agent` never imports `kubernetes` nor `coordinator` (it is small and talks only to the coordinator);
- production packages (`coordinator`, `agent`, `wire`) never import `sandbox`;
- inside `coordinator`, only the `coordinator.kube` adapter imports `kubernetes`;
- `wire` imports neither side.

Imports are read from the source with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("agent"), ids=str)
def test_agent_imports_neither_kubernetes_nor_coordinator(path: Path) -> None:
    bad = {m for m in imported_modules(path) if top(m) in {"kubernetes", "coordinator", "sandbox"}}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sources("wire"), ids=str)
def test_wire_imports_no_side(path: Path) -> None:
    bad = {m for m in imported_modules(path) if top(m) in {"kubernetes", "coordinator", "agent", "sandbox"}}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sources("coordinator"), ids=str)
def test_coordinator_uses_kubernetes_only_in_its_adapter(path: Path) -> None:
    modules = imported_modules(path)
    assert not {m for m in modules if top(m) in {"sandbox", "agent"}}, f"{path} imports sandbox/agent"
    in_adapter = (ROOT / "coordinator" / "kube") in path.parents or path.name == "kube.py"
    if not in_adapter:
        bad = {m for m in modules if top(m) == "kubernetes"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)} outside coordinator.kube"


def test_the_rules_see_real_files() -> None:
    """Guard against the rules passing vacuously because the globs match nothing."""
    assert sources("wire") and sources("agent") and sources("coordinator")
