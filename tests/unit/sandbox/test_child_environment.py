"""The sandbox's agents and coordinator get this process's environment without its proxy: every server
of the sandbox is on this machine, so a proxy set for the outside (a CI's, say) must not be asked for them;
`extra_env` may still set one, to rehearse behind a proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.cluster import Sandbox, SandboxConfig


def test_children_get_no_proxy_of_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("HTTPS_PROXY", "http://corp:3128"), ("http_proxy", "http://corp:3128"),
                        ("NO_PROXY", "example.com"), ("ALL_PROXY", "socks5://corp:1080"), ("KEPT", "1")):
        monkeypatch.setenv(name, value)
    env = Sandbox(SandboxConfig(state_dir=tmp_path))._env()
    assert not {"HTTPS_PROXY", "http_proxy", "NO_PROXY", "ALL_PROXY"} & set(env)
    assert (env["KEPT"], env["PYTHONUNBUFFERED"]) == ("1", "1")
    rehearsal = Sandbox(SandboxConfig(state_dir=tmp_path, extra_env={"HTTPS_PROXY": "http://127.0.0.1:3128"}))
    assert rehearsal._env()["HTTPS_PROXY"] == "http://127.0.0.1:3128"
