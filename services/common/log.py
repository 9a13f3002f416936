"""Structured logs: one JSON object per line on stderr (stdout carries only the readiness line)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(role: str, ident: str, level: str = "info") -> structlog.stdlib.BoundLogger:
    """Configure structlog for this process and return a logger bound to the service's role and id."""
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        lvl = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(role=role, id=ident)


def get(**bind: object) -> structlog.stdlib.BoundLogger:
    """A logger with extra bound keys (for modules that do not hold the service's logger)."""
    return structlog.get_logger().bind(**bind)
