"""The one logging setup: the line formats, the request context, and that no secret is
ever written, whichever logger writes it."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
import structlog

from plasmaboot import logs

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")


def json_lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_carry_time_level_logger_event_and_fields() -> None:
    out = io.StringIO()
    assert logs.configure("INFO", "json", stream=out) == "json"
    logs.get_logger("plasmaboot.test").info("lease bound", mac="52:54:00:00:00:01", ip="10.0.0.5")
    logs.get_logger("plasmaboot.test").debug("below the level")
    [line] = json_lines(out)
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
    assert ISO_UTC.match(str(line["timestamp"]))
    assert line["level"] == "info" and line["logger"] == "plasmaboot.test"
    assert line["event"] == "lease bound"
    assert (line["mac"], line["ip"]) == ("52:54:00:00:00:01", "10.0.0.5")


def test_library_records_come_out_in_the_same_format() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    logging.getLogger("aiohttp.server").warning("Error handling request from %s", "10.0.0.9")
    [line] = json_lines(out)
    assert line["logger"] == "aiohttp.server" and line["level"] == "warning"
    assert line["event"] == "Error handling request from 10.0.0.9"
    assert ISO_UTC.match(str(line["timestamp"]))


def test_exceptions_are_one_json_line() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    try:
        raise RuntimeError("store gone: postgresql://pb:hunter2@db/pb")
    except RuntimeError:
        logs.get_logger("plasmaboot.test").exception("lease write failed", withheld=3)
    [line] = json_lines(out)
    assert line["level"] == "error" and line["withheld"] == 3
    assert "RuntimeError: store gone: postgresql://pb:<redacted>@db/pb" in str(line["exception"])


def test_tracebacks_on_a_terminal_are_redacted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    logs.configure("INFO", "console", stream=out)
    try:
        raise RuntimeError("store gone: postgresql://pb:hunter2@db/pb")
    except RuntimeError:
        logs.get_logger("plasmaboot.test").exception("lease write failed")
    assert "Traceback" in out.getvalue() and "pb:<redacted>@db" in out.getvalue()
    assert "hunter2" not in out.getvalue()


def test_a_request_context_names_the_node_until_reset() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    log = logs.get_logger("plasmaboot.test")
    token = logs.bind_context(mac="52:54:00:00:00:02")
    log.info("script served")
    logs.bind_context(node="node02")  # learnt later in the same request
    log.info("token spent")
    logging.getLogger("asyncio").warning("slow callback")  # a library line in the request
    logs.reset_context(token)
    log.info("between requests")
    first, second, library, after = json_lines(out)
    assert first["mac"] == "52:54:00:00:00:02" and "node" not in first
    assert (second["mac"], second["node"]) == ("52:54:00:00:00:02", "node02")
    assert (library["mac"], library["node"]) == ("52:54:00:00:00:02", "node02")
    assert "mac" not in after and "node" not in after


def test_what_a_call_passes_wins_over_the_context() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    with logs.context(mac="52:54:00:00:00:03"):
        logs.get_logger("plasmaboot.test").info("lease bound", mac="52:54:00:00:00:04")
    assert json_lines(out)[0]["mac"] == "52:54:00:00:00:04"


def test_secrets_are_redacted_in_ours_and_the_libraries_lines() -> None:
    out = io.StringIO()
    logs.configure("DEBUG", "json", stream=out)
    logs.get_logger("plasmaboot.test").info(
        "connecting to postgresql://pb:hunter2@db.example:5432/pb",
        token="boot-token-1",
        agent_token="agent-token-1",
        admin_token="admin-token-1",
        password="hunter2",
        client_secret="secret-1",
        headers={"Authorization": "Bearer bearer-1", "Accept": "text/plain"},
        store="postgresql://pb:hunter2@db.example/pb",
        note="sent Authorization: Bearer bearer-2 upstream",
        password_env="PB_BMC_PASSWORD",
        token_kind="boot",
    )
    logging.getLogger("psycopg.pool").warning("cannot connect to postgres://u:hunter2@db/pb")
    text = out.getvalue()
    for secret in ("hunter2", "token-1", "secret-1", "bearer-1", "bearer-2"):
        assert secret not in text
    ours, library = json_lines(out)
    assert ours["event"] == "connecting to postgresql://pb:<redacted>@db.example:5432/pb"
    assert ours["token"] == ours["password"] == ours["client_secret"] == logs.REDACTED
    assert ours["headers"] == {"Authorization": logs.REDACTED, "Accept": "text/plain"}
    assert ours["store"] == "postgresql://pb:<redacted>@db.example/pb"
    assert (ours["password_env"], ours["token_kind"]) == ("PB_BMC_PASSWORD", "boot")
    assert library["event"] == "cannot connect to postgres://u:<redacted>@db/pb"


def test_redaction_happens_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    """Not configured (a test, a library user): the stdlib record is already clean, and
    reads as `event key=value` to anything that calls getMessage()."""
    caplog.set_level(logging.INFO, logger="plasmaboot.test")
    logs.get_logger("plasmaboot.test").info("power request", op="power_on", password="hunter2")
    [record] = caplog.records
    assert record.name == "plasmaboot.test"
    assert record.getMessage() == "power request op=power_on password=<redacted>"


def test_console_lines_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    assert logs.configure("INFO", stream=out) == "console"
    logs.get_logger("plasmaboot.test").info("lease bound", mac="52:54:00:00:00:05")
    line = out.getvalue().strip()
    assert "lease bound" in line and "mac=52:54:00:00:00:05" in line
    assert "[plasmaboot.test]" in line and "info" in line
    assert not line.startswith("{")


def test_the_format_follows_the_stream_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    assert logs.resolve_format(None, io.StringIO()) == "json"
    assert logs.resolve_format(None, Tty()) == "console"
    assert logs.resolve_format("json", Tty()) == "json"
    assert logs.resolve_format("console", io.StringIO()) == "console"
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    assert logs.resolve_format(None, Tty()) == "json"
    assert logs.resolve_format("console", Tty()) == "console"
    with pytest.raises(ValueError, match="log format"):
        logs.resolve_format("xml", Tty())


def test_configuring_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("INFO", "json", stream=first)
    logs.configure("INFO", "json", stream=second)
    logs.get_logger("plasmaboot.test").warning("once")
    assert first.getvalue() == "" and len(json_lines(second)) == 1


def test_structlog_get_logger_takes_the_same_road() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    structlog.get_logger("plasmaboot.other").warning("via structlog", token="t-1")
    [line] = json_lines(out)
    assert (line["logger"], line["event"], line["token"]) == (
        "plasmaboot.other",
        "via structlog",
        logs.REDACTED,
    )
