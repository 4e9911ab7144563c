"""A stand-in for the k3s binary, so the sandbox and the tests can upgrade "k3s" without the real thing.

`build_standin` writes one executable file per version: a small Python script (shebang: this
interpreter) with its version, architecture and behaviour embedded, so each build's bytes and SHA-256
differ like real releases do. The script imports its behaviour from `sandbox.standin.runtime`:

- `k3s --version` prints what real k3s prints (`k3s version <tag> (<commit>)`, `go version ...`);
- `k3s server|agent [...]` looks like real k3s in the process table (title `<its path> server ...`),
  registers its Node with the sandbox's API server and keeps it Ready with `kubeletVersion` = its
  version, and on SIGTERM marks the Node NotReady and exits 0;
- behaviour `crash` exits 1 at once for server/agent (checksum and `--version` are fine: a bad release),
  `never-ready` runs but never becomes Ready.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

Behaviour = Literal["ok", "crash", "never-ready"]
BEHAVIOURS: tuple[Behaviour, ...] = ("ok", "crash", "never-ready")

_TEMPLATE = '''#!{python}
# k3s stand-in (sandbox): version {version!r}, arch {arch!r}, behaviour {behaviour!r}
import sys

from sandbox.standin.runtime import main

sys.exit(main(sys.argv, version={version!r}, arch={arch!r}, behaviour={behaviour!r},
              startup_seconds={startup_seconds!r}))
'''


def build_standin(
    dest: Path,
    version: str,
    *,
    arch: str = "amd64",
    behaviour: Behaviour = "ok",
    startup_seconds: float = 0.5,
) -> Path:
    """Write the stand-in k3s for `version` to `dest` (mode 0755) and return `dest`.

    The file is written to a temporary name and renamed, so a reader never sees half a binary.
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"stand-in behaviour {behaviour!r} is not one of {BEHAVIOURS}")
    text = _TEMPLATE.format(
        python=sys.executable, version=version, arch=arch, behaviour=behaviour,
        startup_seconds=startup_seconds,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(dest)
    return dest


__all__ = ["BEHAVIOURS", "Behaviour", "build_standin"]
