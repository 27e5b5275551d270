"""One logging setup for every plasmaboot process: structlog in front, stdlib logging behind.

Modules log key-value events through `get_logger(name)`::

    log.info("lease bound", mac=mac, ip=ip, node=hostname)

Those loggers hand each event to the stdlib logger of that name, so ours and the
libraries' (aiohttp, asyncio, httpx, psycopg) meet in one handler that `configure()`
puts on the root logger, and pytest's caplog sees them as ordinary records. The handler
writes one line per event to stderr:

- JSON lines when stderr is not a terminal (a service under systemd, a log file), or
  when asked (`--log-format json`, PLASMABOOT_LOG_FORMAT=json);
- aligned readable lines on a terminal (or `console`).

Either way a line has an ISO UTC timestamp, the level, the logger's name, the event and
its key-values, plus what the code handling a request bound with `bind_context` (the
node, the MAC, the client's address), so every line about a request names what it
concerns. Secrets never reach a handler: values under keys that name one (token,
password, secret, authorization, ...) are replaced, and so is the password of a URL,
in every record, ours and the libraries'.
"""

from __future__ import annotations

import contextvars
import io
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

FORMAT_ENV = "PLASMABOOT_LOG_FORMAT"
LEVEL_ENV = "PLASMABOOT_LOG_LEVEL"
FORMATS = ("auto", "json", "console")
REDACTED = "<redacted>"

# A key naming a secret: its value is never written (`password_env`, the *name* of an
# environment variable, or `token_kind` are not secrets and do not match).
_SECRET_KEY = re.compile(
    r"(token|password|passwd|secret|authorization|cookie|credentials?|api_?key)s?$", re.I
)
# scheme://user:password@host: the password goes, the user name stays.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]*@", re.I)
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}", re.I)
_PLAIN = (str, int, float, bool, type(None), list, tuple, dict)

# What a request's lines carry (node, mac, ...): one ContextVar set and reset per request.
# Cheaper than structlog's one-variable-per-key contextvars (~10x), which matters on the
# DHCP packet path; structlog's own contextvars are merged as well.
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "plasmaboot_log_context", default=MappingProxyType({})
)
_HANDLER_NAME = "plasmaboot"


def bind_context(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add `fields` to every line logged in this context until `reset_context(token)`.

    A request's handler binds what it concerns (node, mac) on the way in and resets on
    the way out; fields bound later in the same request (the node, once a token names it)
    are undone by that same reset."""
    current = _CONTEXT.get()
    return _CONTEXT.set({**current, **fields} if current else fields)


def reset_context(token: contextvars.Token[Mapping[str, Any]]) -> None:
    _CONTEXT.reset(token)


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """`bind_context` for a block."""
    token = bind_context(**fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def merge_context(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The bound request fields; what a call passes itself wins."""
    for key, value in _CONTEXT.get().items():
        event.setdefault(key, value)
    return event


# ---- redaction -------------------------------------------------------------------------


def redact_text(text: str) -> str:
    """`text` with URL passwords and bearer tokens replaced."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)
    if " " in text:
        text = _BEARER.sub(rf"\g<1> {REDACTED}", text)
    return text


def _redacted(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and _SECRET_KEY.search(k) and v is not None
            else _redacted(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple) and not _is_exc_info(value):
        return type(value)(_redacted(v, depth + 1) for v in value)
    return value


def _is_exc_info(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], type)


def redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A processor: no secret leaves in a log line (keys that name one, URL passwords,
    bearer tokens), whichever logger wrote it."""
    for key, value in event.items():
        if key == "exc_info":
            continue
        if _SECRET_KEY.search(key) and value is not None:
            event[key] = REDACTED
        elif not isinstance(value, int | float | bool):
            event[key] = _redacted(value)
    return event


# ---- our loggers -----------------------------------------------------------------------


class Event(dict[str, Any]):
    """The event dict as a LogRecord's msg. The formatter `configure()` installs reads the
    dict; anything else that calls getMessage() (pytest's caplog, logging's last resort
    before `configure()`) reads ``event key=value ...``."""

    def __str__(self) -> str:
        fields = (f"{k}={v}" for k, v in self.items() if k not in ("event", "exc_info"))
        return " ".join([str(self.get("event", "")), *fields])


def _to_record(logger: WrappedLogger, method: str, event: EventDict) -> Any:
    """The last processor of our loggers: the stdlib call's arguments, the event dict as
    the record's msg (ProcessorFormatter renders it), exc_info as the record's too."""
    kwargs: dict[str, Any] = {"extra": {"_logger": logger, "_name": method}}
    exc_info = event.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
        if exc_info[0] is None:
            exc_info = None
    if exc_info:
        event["exc_info"] = kwargs["exc_info"] = exc_info
    else:
        event.pop("exc_info", None)
    return (Event(event),), kwargs


_CHAIN: tuple[Processor, ...] = (
    structlog.stdlib.filter_by_level,  # a disabled level costs one check, nothing more
    structlog.stdlib.PositionalArgumentsFormatter(),  # log.info("%s bound", mac) still reads
    structlog.contextvars.merge_contextvars,
    merge_context,
    redact,
    _to_record,
)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger writing through the stdlib logger `name`."""
    return structlog.stdlib.BoundLogger(logging.getLogger(name), _CHAIN, {})


# ---- the handler -----------------------------------------------------------------------


def _plain_values(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Addresses, paths and the like as their text, the same in JSON and on a terminal."""
    for key, value in event.items():
        if not isinstance(value, _PLAIN) and key != "exc_info":
            event[key] = str(value)
    return event


def _lead(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    first = ("timestamp", "level", "logger", "event")
    return {**{key: event.pop(key) for key in first if key in event}, **event}


def _prepare() -> list[Processor]:
    return [
        structlog.stdlib.add_logger_name,  # needs the record: before remove_processors_meta
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _plain_values,
    ]


def renderer(fmt: str, stream: TextIO) -> list[Processor]:
    """The tail of the handler's chain for `fmt` ("json" or "console")."""
    if fmt == "json":
        return [
            structlog.processors.format_exc_info,
            _redact_traceback,
            _lead,
            structlog.processors.JSONRenderer(default=str),
        ]
    colors = bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ
    return [
        structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=_plain_traceback,
            sort_keys=False,
        )
    ]


def _redact_traceback(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A traceback quotes messages (a connection URL, say): redacted like any text."""
    if isinstance(event.get("exception"), str):
        event["exception"] = redact_text(event["exception"])
    return event


def _plain_traceback(out: TextIO, exc_info: ExcInfo) -> None:
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    out.write(redact_text(text.getvalue()))


def resolve_format(requested: str | None, stream: TextIO) -> str:
    """json or console: `requested`, else PLASMABOOT_LOG_FORMAT, else by the stream."""
    fmt = (requested or os.environ.get(FORMAT_ENV) or "auto").strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        return "console" if getattr(stream, "isatty", lambda: False)() else "json"
    return fmt


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    return number


class _Handler(logging.Handler):
    """Writes to `stream`, or to whatever sys.stderr (sys.stdout) is when a line is
    written, as logging's last resort does: a test's capture, a redirected stream."""

    def __init__(self, stream: TextIO | None, stdout: bool) -> None:
        super().__init__()
        self.stream = stream
        self.stdout = stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream or (sys.stdout if self.stdout else sys.stderr)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _stdlib_logger(*args: Any) -> logging.Logger:
    """structlog.get_logger(name): that stdlib logger; unnamed: plasmaboot's."""
    return logging.getLogger(str(args[0]) if args else "plasmaboot")


def _lower(logger: logging.Logger, level: int) -> None:
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)


def configure(
    level: int | str | None = None,
    fmt: str | None = None,
    *,
    stream: TextIO | None = None,
    render: Sequence[Processor] | None = None,
    libraries: int | str | None = None,
    stdout: bool = False,
) -> str:
    """Send every record (ours, structlog's, the libraries') to one handler; return the
    format chosen. Calling it again replaces the handler it installed before.

    level: plasmaboot's loggers' (default PLASMABOOT_LOG_LEVEL, else INFO); libraries:
    the other loggers' (default: the same). Loggers are lowered to these, never raised,
    so a handler someone else attached (a test's capture) keeps what it asked for.
    fmt: "json", "console" or "auto" (default: PLASMABOOT_LOG_FORMAT, else auto: JSON
    unless the stream is a terminal). stream: default sys.stderr (`stdout`: sys.stdout)
    as it is at each write.
    render: the handler chain's tail, instead of `fmt`'s (a program with its own line
    shape); it gets the event dict with the request context merged and secrets redacted.
    """
    threshold = _level(level if level is not None else os.environ.get(LEVEL_ENV) or "INFO")
    target = stream or (sys.stdout if stdout else sys.stderr)
    chosen = resolve_format(fmt, target) if render is None else "custom"
    tail = list(render) if render is not None else [*_prepare(), *renderer(chosen, target)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, merge_context, redact],
        processors=tail,
    )
    handler = _Handler(stream, stdout)
    handler.set_name(_HANDLER_NAME)
    others = _level(libraries) if libraries is not None else threshold
    handler.setLevel(min(threshold, others))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    _lower(root, others)
    _lower(logging.getLogger("plasmaboot"), threshold)
    # structlog.get_logger() anywhere takes the same road as get_logger(name).
    structlog.configure(
        processors=list(_CHAIN),
        logger_factory=_stdlib_logger,
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    return chosen
