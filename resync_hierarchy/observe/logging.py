"""structlog loggers for the package.

The library never configures logging globally: it asks structlog for a
logger, and whatever the application configured applies. The CLI configures
structlog for itself (readable on a terminal, JSON otherwise).
"""

from __future__ import annotations

import sys
from typing import Any

import structlog

__all__ = ["configure_cli_logging", "get_logger"]


def get_logger(name: str) -> Any:
    """A structlog logger bound to ``logger=name``."""
    return structlog.get_logger(name).bind(logger=name)


def configure_cli_logging(*, json: bool | None = None, level: int = 30) -> None:
    """Logs to stderr: readable on a terminal, JSON lines when not (or when ``json``)."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
