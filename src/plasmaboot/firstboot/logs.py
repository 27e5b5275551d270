"""JSON log lines for journald: ``timestamp``, ``level``, ``service``, ``operation``, ``message``.

structlog renders them; the seeds' field names are kept so existing
``journalctl ... | grep '"level":"ERROR"'`` habits keep working.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = frozenset({"agent_token", "token", "authorization", "password"})


def _upper_level(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["level"] = {"warning": "WARN"}.get(method, method.upper())
    return event


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _SECRET_KEYS & event.keys():
        event[key] = "<redacted>"
    return event


def _seed_field_order(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    first = ("timestamp", "level", "service", "operation", "message")
    ordered = {key: event.pop(key) for key in first if key in event}
    return {**ordered, **event}


def configure_logging(stream: TextIO = sys.stdout) -> None:
    """One JSON object per line on ``stream`` (stdout, which systemd hands to journald)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _upper_level,
            _drop_secrets,
            structlog.processors.EventRenamer("message"),
            _seed_field_order,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def service_logger(service: str, operation: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry the service and operation the seeds' format requires."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger.bind(service=service, operation=operation)
