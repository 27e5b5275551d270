"""JSON log lines for journald: ``timestamp``, ``level``, ``service``, ``operation``, ``message``.

structlog renders them through plasmaboot's one logging setup (``plasmaboot.logs``:
secrets redacted, the libraries' warnings in the same shape); the seeds' field names are
kept so existing ``journalctl ... | grep '"level":"ERROR"'`` habits keep working.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from plasmaboot import logs


def _upper_level(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["level"] = {"warning": "WARN", "exception": "ERROR"}.get(method, method.upper())
    return event


def _seed_field_order(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    first = ("timestamp", "level", "service", "operation", "message")
    ordered = {key: event.pop(key) for key in first if key in event}
    return {**ordered, **event}


def configure_logging(stream: TextIO | None = None) -> None:
    """One JSON object per line on ``stream`` (default stdout, which systemd hands to
    journald): every level of ours, the libraries' from WARNING."""
    logs.configure(
        "DEBUG",
        stream=stream,
        stdout=True,
        libraries="WARNING",
        render=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _upper_level,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            _seed_field_order,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
    )


def service_logger(service: str, operation: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry the service and operation the seeds' format requires."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger.bind(service=service, operation=operation)
