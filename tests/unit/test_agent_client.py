"""The agent's HTTP client against a real HTTP server on loopback that answers from a
script: retries while nothing useful answers, a refusal is final, each MAC is tried."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_agent_facts import build_machine

from plasmaboot.agent.cli import InstallerBoot, write_session
from plasmaboot.agent.client import AgentClient, AgentError, NoAnswer, Refused
from plasmaboot.agent.cmdline import parse_cmdline

Answer = tuple[int, str]


class ScriptedServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.answers: list[Answer] = []
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "auth": self.headers["Authorization"], "body": body}
        )
        status, text = self.server.answers.pop(0)
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    httpd = ScriptedServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def client(url: str, lines: list[str], attempts: int = 4) -> AgentClient:
    return AgentClient(url, say=lines.append, attempts=attempts, first_delay_s=0.05, timeout_s=5)


LOOKED_UP = json.dumps({"hostname": "node01", "token": "session-secret", "profile": "lab"})


def test_a_busy_server_is_retried_with_a_doubling_wait(server: ScriptedServer) -> None:
    server.answers = [(503, '{"error": "starting"}'), (502, "bad gateway"), (200, LOOKED_UP)]
    lines: list[str] = []
    found = client(server.url, lines).lookup("boot-secret", ["52:54:00:12:34:56"])
    assert found.hostname == "node01" and found.session_token == "session-secret"
    assert found.identity == {"hostname": "node01", "profile": "lab"}
    assert [r["auth"] for r in server.requests] == ["Bearer boot-secret"] * 3
    assert server.requests[0]["body"] == {"mac": "52:54:00:12:34:56"}
    assert "HTTP 503" in lines[1] and "attempt 1/4, retry in 0.05 s" in lines[1]
    assert "HTTP 502" in lines[2] and "attempt 2/4, retry in 0.1 s" in lines[2]
    assert not any("secret" in line for line in lines)


def test_a_refusal_is_final_and_carries_the_servers_body(server: ScriptedServer) -> None:
    server.answers = [(401, '{"error": "boot token already used (one-time)"}')]
    with pytest.raises(Refused) as refused:
        client(server.url, []).lookup("boot-secret", ["52:54:00:12:34:56", "52:54:00:12:34:57"])
    assert refused.value.status == 401 and len(server.requests) == 1
    assert str(refused.value) == (
        'lookup of 52:54:00:12:34:56 refused: HTTP 401 {"error": "boot token already used '
        '(one-time)"}'
    )


def test_each_mac_is_tried_until_one_is_known(server: ScriptedServer) -> None:
    server.answers = [
        (404, '{"error": "no node has MAC 02:00:00:00:00:01"}'),
        (403, '{"error": "this token belongs to another node"}'),
        (200, LOOKED_UP),
    ]
    lines: list[str] = []
    macs = ["02:00:00:00:00:01", "02:00:00:00:00:02", "52:54:00:12:34:56"]
    assert client(server.url, lines).lookup("t", macs).mac == "52:54:00:12:34:56"
    assert [r["body"]["mac"] for r in server.requests] == macs
    assert "HTTP 404" in lines[1] and "HTTP 403" in lines[3]


def test_no_mac_accepted_is_a_failure_naming_the_last_answer(server: ScriptedServer) -> None:
    server.answers = [(404, '{"error": "no node has MAC 02:00:00:00:00:01"}')]
    with pytest.raises(AgentError, match=r"no MAC of this machine was accepted.*HTTP 404"):
        client(server.url, []).lookup("t", ["02:00:00:00:00:01"])
    with pytest.raises(AgentError, match="no NIC with a MAC address"):
        client(server.url, []).lookup("t", [])


def test_an_answer_that_is_not_json_is_a_failure(server: ScriptedServer) -> None:
    server.answers = [(200, "<html>captive portal</html>")]
    with pytest.raises(AgentError, match="not JSON: <html>captive portal</html>"):
        client(server.url, []).report("s", "installer-booted", {})


def test_the_environments_proxy_is_not_used(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # discard port: nothing answers
    server.answers = [(200, "{}")]
    assert client(server.url, [], attempts=1).report("s", "installing", {"node": "n"}) == {}
    assert server.requests[0]["body"] == {"stage": "installing", "detail": {"node": "n"}}


def test_a_server_that_is_down_is_tried_a_bounded_number_of_times() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(NoAnswer, match="did not answer after 3 attempts"):
        client(f"http://127.0.0.1:{port}", lines, attempts=3).report("s", "failed", {})
    assert time.monotonic() - started < 5
    assert len(lines) == 2 and all("no answer" in line for line in lines)


def test_macs_are_tried_boot_nic_first_then_links_up(tmp_path: Path) -> None:
    sys, proc = build_machine(tmp_path)  # eno1 up, eno2 down, ens3 up
    base = "plasmaboot.url=http://h plasmaboot.token=t"
    boot = InstallerBoot(parse_cmdline(base), client("http://h", []), sys, proc, tmp_path / "s")
    assert boot.macs() == ["ac:1f:6b:00:00:01", "52:54:00:12:34:56", "ac:1f:6b:00:00:02"]
    boot.params = parse_cmdline(base + " BOOTIF=01-ac-1f-6b-00-00-02")
    assert boot.macs() == ["ac:1f:6b:00:00:02", "ac:1f:6b:00:00:01", "52:54:00:12:34:56"]


def test_the_session_file_is_0600_even_over_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "run/plasmaboot/session"
    path.parent.mkdir(parents=True)
    path.write_text("old")
    path.chmod(0o644)
    write_session(path, "session-secret")
    assert path.read_text() == "session-secret\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["session"]
