"""The package logs to stderr (never stdout) unless the application configured structlog."""

from __future__ import annotations

import json

import pytest
import structlog
from structlog.testing import capture_logs

from resync_hierarchy.observe.logging import configure_cli_logging, get_logger


def test_unconfigured_structlog_goes_to_stderr_not_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()
    get_logger("resync_hierarchy.test").warning("l2_error", kind="timeout")
    out, err = capsys.readouterr()
    assert out == ""
    assert "l2_error" in err
    assert "timeout" in err


def test_application_configuration_is_respected() -> None:
    log = get_logger("resync_hierarchy.test")  # created before the configuration
    with capture_logs() as captured:
        log.warning("breaker_opened", failures=5)
        log.info("note")
    assert captured[0]["event"] == "breaker_opened"
    assert captured[0]["logger"] == "resync_hierarchy.test"
    assert captured[0]["failures"] == 5
    assert [entry["log_level"] for entry in captured] == ["warning", "info"]


def test_cli_logging_writes_json_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure_cli_logging(json=True)
        get_logger("resync_hierarchy.test").error("boom", answer=42)
        out, err = capsys.readouterr()
    finally:
        structlog.reset_defaults()
    assert out == ""
    record = json.loads(err.strip().splitlines()[-1])
    assert (record["event"], record["answer"], record["level"]) == ("boom", 42, "error")


def test_a_broken_log_sink_never_fails_the_caller() -> None:
    import io

    sink = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sink))
    sink.close()
    try:
        get_logger("resync_hierarchy.test").warning("l2_error", kind="timeout")  # no raise
    finally:
        structlog.reset_defaults()
