"""The agent API of `plasmaboot serve`, spoken with urllib (docs/api.md).

`POST /api/v1/agent/lookup` spends the boot token for a session token;
`POST /api/v1/agent/report` reports a stage with it. While the server does not answer (the
network of a freshly booted installer may come up slowly, a proxy may say 502/503/504) a
request is retried a bounded number of times with a doubling wait. A refusal (4xx, or a
500) is final and carries the server's JSON body, which names the reason.

Tokens travel only in the Authorization header and are never part of a message: the
console is readable by anyone at the rack.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from plasmaboot import __version__

LOOKUP_PATH = "/api/v1/agent/lookup"
REPORT_PATH = "/api/v1/agent/report"
RETRY_STATUSES = frozenset({502, 503, 504})  # a proxy or a server not ready yet
# A MAC the server does not know (404), that is another node's (403), or that it cannot
# parse (400): the token is not spent, so the next NIC's MAC is tried.
TRY_NEXT_MAC = frozenset({400, 403, 404})
MAX_SHOWN_BODY = 1000


class AgentError(Exception):
    """A step failed; the message is one readable console line."""


class NoAnswer(AgentError):
    """The server did not answer within the bounded retries."""


class Refused(AgentError):
    """The server answered with an error status; `body` is its (JSON) text."""

    def __init__(self, what: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{what} refused: HTTP {status} {body}")


@dataclass(frozen=True)
class LookupAnswer:
    hostname: str
    session_token: str = field(repr=False)
    mac: str
    identity: dict[str, Any]  # the answer without the token: fqdn, profile, role, state, ...


def _shown(body: bytes) -> str:
    """The server's answer as one console line (bounded)."""
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return text if len(text) <= MAX_SHOWN_BODY else text[:MAX_SHOWN_BODY] + " ..."


@dataclass
class AgentClient:
    base_url: str
    say: Callable[[str], None] = print
    attempts: int = 10
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    timeout_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    # No proxy from the environment: the agent talks to its provisioning server directly.
    _opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(urllib.request.ProxyHandler({})),
        repr=False,
    )

    def post(self, path: str, token: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """POST JSON with a Bearer token; the answer's JSON object, or Refused / NoAnswer."""
        data = json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"plasmaboot-agent/{__version__}",
        }
        url = self.base_url + path
        delay = min(self.first_delay_s, self.max_delay_s)
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(url, data, headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    answer = response.read()
                break
            except urllib.error.HTTPError as exc:
                status, text = exc.code, _shown(exc.read())
                exc.close()
                if status not in RETRY_STATUSES:
                    raise Refused(what, status, text) from None
                problem = f"HTTP {status} {text}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                # refused, unreachable, timed out, or the connection dropped mid-answer
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                problem = f"no answer ({reason or type(exc).__name__})"
            if attempt == self.attempts:
                raise NoAnswer(
                    f"{what}: {url} did not answer after {self.attempts} attempts: {problem}"
                )
            self.say(f"{what}: {problem}; attempt {attempt}/{self.attempts}, retry in {delay:g} s")
            self.sleep(delay)
            delay = min(delay * 2, self.max_delay_s)
        try:
            parsed = json.loads(answer)
        except ValueError:
            raise AgentError(f"{what}: the answer is not JSON: {_shown(answer)}") from None
        if not isinstance(parsed, dict):
            raise AgentError(f"{what}: the answer is not a JSON object: {_shown(answer)}")
        return parsed

    def lookup(self, boot_token: str, macs: Iterable[str]) -> LookupAnswer:
        """Spend the boot token with the first MAC the server knows as this token's node."""
        last: Refused | None = None
        for mac in macs:
            self.say(f"lookup with MAC {mac}")
            try:
                answer = self.post(LOOKUP_PATH, boot_token, {"mac": mac}, f"lookup of {mac}")
            except Refused as exc:
                if exc.status not in TRY_NEXT_MAC:
                    raise
                self.say(str(exc))
                last = exc
                continue
            hostname, session = answer.get("hostname"), answer.get("token")
            if not isinstance(hostname, str) or not isinstance(session, str) or not session:
                raise AgentError(f"lookup of {mac}: the answer has no hostname or session token")
            identity = {k: v for k, v in answer.items() if k != "token"}
            return LookupAnswer(hostname, session, mac, identity)
        if last is None:
            raise AgentError("no NIC with a MAC address to look this machine up with")
        raise AgentError(f"no MAC of this machine was accepted; last answer: {last}")

    def report(self, session_token: str, stage: str, detail: dict[str, Any]) -> dict[str, Any]:
        body = {"stage": stage, "detail": detail}
        return self.post(REPORT_PATH, session_token, body, f"report {stage}")
