"""structlog loggers for the package.

The library never configures logging globally. When the application has
configured structlog, our events go wherever it said. When it has not,
structlog's default would print to stdout, which would corrupt the output of
programs that print data (``--json``); our events then go to stderr instead,
rendered readably on a terminal and as JSON lines otherwise. The CLI
configures structlog for itself the same way.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import structlog

__all__ = ["configure_cli_logging", "get_logger"]


def _renderer(as_json: bool) -> Any:
    if as_json:
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=False)


def _fallback_processors() -> list[Any]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _renderer(not sys.stderr.isatty()),
    ]


class _PackageLogger:
    """Looks up the effective logger at each event (events are rare: state
    changes and rate-limited errors), so configuring structlog after import
    still takes effect, as does ``structlog.testing.capture_logs()``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name).bind(logger=self._name)
        return structlog.wrap_logger(
            structlog.PrintLogger(file=sys.stderr),
            processors=_fallback_processors(),
            wrapper_class=structlog.make_filtering_bound_logger(20),
        ).bind(logger=self._name)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        # A broken log sink (a closed file, a full pipe) must never turn a
        # cache operation into a failure: the event is dropped instead.
        with contextlib.suppress(Exception):  # nowhere left to report it
            getattr(self._target(), level)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def get_logger(name: str) -> _PackageLogger:
    """The package's logger called ``name``."""
    return _PackageLogger(name)


def configure_cli_logging(*, json: bool | None = None, level: int = 30) -> None:
    """Logs to stderr: readable on a terminal, JSON lines when not (or when ``json``)."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _renderer(as_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
