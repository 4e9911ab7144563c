"""The agent's flags refuse values that would make it misbehave, at start-up, naming the flag.

Aspects: every number flag (and its environment variable, converted as the flag is) refuses what is not a
number, NaN, infinity, and values out of its range: 0 or less seconds of backoff, heartbeat or request
timeout (a busy loop), a negative poll wait or space margin, fewer than 1 download attempt; sound values
are taken, as int where the flag counts;
a `--coordinator-ca-file` that does not exist is taken (its requests fail, logged, until it does: an agent
restarted mid-upgrade must still roll back, which needs no coordinator).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_args

BASE = ["--node", "n1", "--coordinator", "http://coordinator:8080"]


REFUSED = [  # (flag, its environment variable, values refused)
    ("--retry-backoff", "RETRY_BACKOFF_SECONDS", ["0", "-1", "-0.5", "nan", "inf", "abc"]),
    ("--max-backoff", "MAX_BACKOFF_SECONDS", ["0", "-1", "nan", "inf"]),
    ("--heartbeat", "HEARTBEAT_SECONDS", ["0", "-2", "nan", "x"]),
    ("--request-timeout", "REQUEST_TIMEOUT_SECONDS", ["0", "-1", "inf"]),
    ("--poll-wait", "POLL_WAIT_SECONDS", ["-1", "nan", "inf", ""]),
    ("--download-attempts", "DOWNLOAD_ATTEMPTS", ["0", "-3", "1.5", "many"]),
    ("--space-margin", "SPACE_MARGIN_BYTES", ["-1", "16MiB", "1e6", "9" * 400]),
]


@pytest.mark.parametrize(("flag", "env", "value"), [(f, e, v) for f, e, values in REFUSED for v in values])
def test_a_number_that_would_make_the_agent_misbehave_is_refused(
        flag: str, env: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args([*BASE, f"{flag}={value}"])
    assert exc.value.code == 2
    assert f"argument {flag}: {value!r} (the flag or {env}) is not " in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "env", "value"), [(f, e, values[0]) for f, e, values in REFUSED])
def test_the_environment_variable_is_checked_as_the_flag_is(
        flag: str, env: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit):
        parse_args(BASE)
    assert f"argument {flag}: {value!r} (the flag or {env}) is not " in capsys.readouterr().err


def test_sound_numbers_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_args([*BASE, "--retry-backoff", "0.25", "--max-backoff", "5", "--heartbeat", "0.5",
                         "--request-timeout", "3", "--poll-wait", "0", "--download-attempts", "1",
                         "--space-margin", "0"])
    got = (config.retry_backoff, config.max_backoff, config.heartbeat_seconds, config.request_timeout,
           config.poll_wait, config.download_attempts, config.space_margin)
    assert got == (0.25, 5.0, 0.5, 3.0, 0.0, 1, 0)
    assert isinstance(config.download_attempts, int) and isinstance(config.space_margin, int)
    monkeypatch.setenv("RETRY_BACKOFF_SECONDS", "2")
    monkeypatch.setenv("DOWNLOAD_ATTEMPTS", "7")
    config = parse_args(BASE)
    assert (config.retry_backoff, config.download_attempts, config.max_backoff) == (2.0, 7, 30.0)


def test_a_ca_file_that_does_not_exist_is_left_to_the_requests(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    config = parse_args(["--node", "n1", "--coordinator", "https://coordinator:8080",
                         "--coordinator-ca-file", str(missing)])
    assert config.coordinator_ca_file == missing


def test_the_log_level_is_one_of_four(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_args([*BASE, "--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit):
        parse_args([*BASE, "--log-level", "loud"])
    assert "argument --log-level: invalid choice: 'LOUD'" in capsys.readouterr().err
    monkeypatch.setenv("LOG_LEVEL", "warning")
    assert parse_args(BASE).log_level == "WARNING"
    monkeypatch.setenv("LOG_LEVEL", "LOUD")  # (which logging.basicConfig refused with a traceback)
    with pytest.raises(SystemExit):
        parse_args(BASE)
    refused = "--log-level (or LOG_LEVEL) 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"
    assert refused in capsys.readouterr().err
