"""`plasmaboot watch` without a server: the fleet model (order, resting, overdue, each
event once), the SSE reader and the admin token file rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from plasmaboot.lifecycle import State
from plasmaboot.remote import TOKEN_ENV, RemoteError, admin_token
from plasmaboot.store import EventRecord
from plasmaboot.watch.fleet import PROVISION_REQUESTED, Fleet, NodeRow
from plasmaboot.watch.sources import sse_events
from plasmaboot.watch.view import describe, duration

NOW = 10_000.0


def event(
    ident: int, node: str, before: str, after: str, kind: str, **detail: object
) -> EventRecord:
    return EventRecord(ident, NOW + ident, node, before, after, kind, "test", dict(detail))


def fleet(*rows: NodeRow, seen: int = 0, adopt_new: bool = False) -> Fleet:
    return Fleet(rows, {State.INSTALLING: 100.0}, seen=seen, adopt_new=adopt_new)


def test_rows_come_failed_then_overdue_then_moving_then_resting() -> None:
    view = fleet(
        NodeRow("a-active", State.ACTIVE, NOW, "joined"),
        NodeRow("b-moving", State.INSTALLING, NOW - 10, "install-started"),
        NodeRow("c-late", State.INSTALLING, NOW - 500, "install-output"),
        NodeRow("d-failed", State.INSTALL_FAILED, NOW, "fail"),
    )
    order = [row.hostname for row in view.ordered(NOW)]
    assert order == ["d-failed", "c-late", "b-moving", "a-active"]
    assert view.overdue_by(view.rows["c-late"], NOW) == 400
    assert view.overdue_by(view.rows["b-moving"], NOW) is None


def test_each_event_applies_once_and_moves_the_entry_time() -> None:
    view = fleet(NodeRow("n1", State.PXE_BOOTING, NOW, "pxe-boot"), seen=5)
    assert view.apply(event(5, "n1", "pxe-booting", "installer-booted", "x")) is None
    row = view.apply(event(6, "n1", "pxe-booting", "installer-booted", "installer-booted"))
    assert row is not None and (row.state, row.entered_at) == (State.INSTALLER_BOOTED, NOW + 6)
    row = view.apply(event(7, "n1", "installer-booted", "installer-booted", "install-output"))
    assert row is not None and row.entered_at == NOW + 6 and row.stage == "install-output"
    assert view.apply(event(8, "other", "enrolled", "pxe-booting", "pxe-boot")) is None
    assert view.last is not None and view.last.id == 7


def test_watching_every_node_adopts_one_that_appears() -> None:
    view = fleet(adopt_new=True)
    assert view.apply(event(1, "new", "", "discovered", "discovered")) is not None
    assert set(view.rows) == {"new"}


def test_resting_settled_and_all_active() -> None:
    view = fleet(
        NodeRow("n1", State.ACTIVE, NOW, "joined"),
        NodeRow("n2", State.ENROLLED, NOW, PROVISION_REQUESTED),
    )
    assert not view.settled, "a provision request is on its way to pxe-booting"
    view.apply(event(1, "n2", "enrolled", "pxe-booting", "pxe-boot"))
    assert not view.settled
    view.apply(event(2, "n2", "pxe-booting", "boot-failed", "fail"))
    assert view.settled and not view.all_active
    assert not fleet().all_active, "no node is not every node active"


def test_entry_time_comes_from_the_event_that_entered_the_state() -> None:
    history = [
        event(1, "n1", "enrolled", "pxe-booting", "pxe-boot"),
        event(2, "n1", "pxe-booting", "pxe-booting", "install-output", lines=["a", "b"]),
    ]
    row = NodeRow.from_history("n1", State.PXE_BOOTING, 1.0, history)
    assert (row.entered_at, row.stage) == (NOW + 1, "install-output")
    assert NodeRow.from_history("n2", State.ENROLLED, 1.0, []).entered_at == 1.0
    assert describe(history[1]).endswith("(install-output by test): b")
    assert "enrolled -> pxe-booting" in describe(history[0])
    assert [duration(s) for s in (5, 125, 7300)] == ["5s", "2m05s", "2h01m"]


async def test_sse_reader_joins_chunks_and_skips_comments() -> None:
    loop = asyncio.get_running_loop()
    content = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for chunk in (b"retry: 2000\n: hi\n\nid: 4\nevent: x\nda", b'ta: {"a":\n', b"data: 1}\n\n"):
        content.feed_data(chunk)
    content.feed_eof()
    assert [m async for m in sse_events(content)] == [("4", '{"a":\n1}')]


def test_token_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "admin.token"
    path.write_text("secret\n")
    path.chmod(0o640)
    with pytest.raises(RemoteError, match=f"chmod 600 {path}"):
        admin_token(path)
    path.chmod(0o600)
    assert admin_token(path) == "secret"
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert admin_token(None) == "from-env"
    assert admin_token(path) == "secret", "a file named on the command line wins"
    with pytest.raises(RemoteError, match="no admin token"):
        admin_token(tmp_path / "missing")
