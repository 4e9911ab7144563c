"""The agent's flags refuse values that would make it misbehave, at start-up, naming the flag.

Aspects: `--retry-backoff` and `--max-backoff` (and their environment variables) refuse 0, negative
numbers, NaN and infinity (0 or less made every retry happen at once, a busy loop), and take positive ones;
a `--coordinator-ca-file` that does not exist is taken (its requests fail, logged, until it does: an agent
restarted mid-upgrade must still roll back, which needs no coordinator).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_args

BASE = ["--node", "n1", "--coordinator", "http://coordinator:8080"]


@pytest.mark.parametrize("flag", ["--retry-backoff", "--max-backoff"])
@pytest.mark.parametrize("value", ["0", "-1", "-0.5", "nan", "inf"])
def test_a_backoff_that_is_not_a_positive_number_is_refused(
        flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args([*BASE, f"{flag}={value}"])
    assert exc.value.code == 2
    assert f"{flag} (or " in capsys.readouterr().err


@pytest.mark.parametrize(("env", "flag"), [("RETRY_BACKOFF_SECONDS", "--retry-backoff"),
                                           ("MAX_BACKOFF_SECONDS", "--max-backoff")])
def test_a_backoff_from_the_environment_is_checked_too(
        env: str, flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(env, "0")
    with pytest.raises(SystemExit):
        parse_args(BASE)
    assert f"{flag} (or {env}) 0.0 is not a positive number of seconds" in capsys.readouterr().err


def test_positive_backoffs_are_taken() -> None:
    config = parse_args([*BASE, "--retry-backoff", "0.25", "--max-backoff", "5"])
    assert (config.retry_backoff, config.max_backoff) == (0.25, 5.0)


def test_a_ca_file_that_does_not_exist_is_left_to_the_requests(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    config = parse_args(["--node", "n1", "--coordinator", "https://coordinator:8080",
                         "--coordinator-ca-file", str(missing)])
    assert config.coordinator_ca_file == missing
