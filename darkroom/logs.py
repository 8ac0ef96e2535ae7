"""Structured logging: structlog, JSON lines when stderr is not a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from darkroom import tracing


def configure(level: str = "INFO", json: bool | None = None, *, trace_ids: bool = False) -> None:
    """Configure structlog (and the standard library's root logger) once per process;
    `trace_ids`: each line carries the `trace_id` and `span_id` it was logged in."""
    if json is None:
        json = not sys.stderr.isatty()
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([tracing.add_log_ids] if trace_ids else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric_level, logging.WARNING), stream=sys.stderr)
