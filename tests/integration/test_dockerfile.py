"""The Dockerfile is lint-clean and the steps it runs work (no Docker daemon here to build it).

Aspects: hadolint passes; the image's base is pinned by tag in both stages and the final stage runs as a
non-root user; the package builds from the tree and installs into a fresh virtualenv exactly like the
build stage does (offline: a wheel without build isolation, dependencies from the project's venv), and
both console scripts from that venv start (`--help`) from the installed copy, not the work tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def test_hadolint_passes() -> None:
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bases_are_pinned_and_the_image_is_non_root() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(bases) == 2 and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith(("0", "root")), users


def test_package_installs_into_a_fresh_venv_and_entry_points_start(tmp_path: Path) -> None:
    dist, venv, src = tmp_path / "dist", tmp_path / "venv", tmp_path / "src"
    copied = re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", DOCKERFILE.read_text(), re.M)
    src.mkdir()
    for line in copied:  # exactly what the build stage copies (so a missing package fails here)
        for name in line.split():
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
         str(src)], capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = dist.glob("k3s_upgrader-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "--no-deps", "-q",
         str(wheel)], capture_output=True, text=True, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    site = next((ROOT / ".venv/lib").glob("python3*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(site)}  # dependencies only: .pth (the editable tree) is not read
    probe = "import agent, coordinator; print(agent.__file__)"
    where = subprocess.run([str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr
    for script in ("k3s-upgrade-agent", "k3s-upgrade-coordinator"):
        result = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=60)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert "usage" in result.stdout.lower()
