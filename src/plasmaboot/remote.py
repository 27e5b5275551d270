"""The admin API from an operator's workstation: the server, its token and CA, and one
HTTPS client whose every refusal reads as a sentence.

`--server URL` (or $PLASMABOOT_SERVER) names a `plasmaboot serve`'s admin listener
(https, `server.admin`). The admin token (scope read to look, write to act) comes from
`--token-file`, else $PLASMABOOT_ADMIN_TOKEN, else ~/.config/plasmaboot/admin.token; a
token file others may read is refused. The server's certificate is verified against
plasmaboot's CA: `--ca` (or $PLASMABOOT_CA), else the state directory's pki/ca.crt (on
the server itself), else ~/.config/plasmaboot/ca.crt, else the system's trust store.
The token is sent only in the Authorization header and never printed.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path
from typing import Any

import httpx

SERVER_ENV = "PLASMABOOT_SERVER"
TOKEN_ENV = "PLASMABOOT_ADMIN_TOKEN"
CA_ENV = "PLASMABOOT_CA"
CONFIG_DIR = Path("~/.config/plasmaboot")
DEFAULT_TOKEN_FILE = CONFIG_DIR / "admin.token"
DEFAULT_CA_FILE = CONFIG_DIR / "ca.crt"
CONNECT_S = 10.0
READ_S = 120.0  # a read; an action waits as long as the server runs it (it bounds it)


class RemoteError(Exception):
    """The admin API cannot be used as asked; the message says why and what to do."""


class Refused(RemoteError):
    """The server answered with an error of its own (a 4xx with a JSON `error`): the
    caller decides what it means (a refused lifecycle step, an unknown node)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("error", f"HTTP {status}")))
        self.status, self.body = status, body


def admin_token(token_file: Path | None) -> str:
    """The admin token: `--token-file`, else $PLASMABOOT_ADMIN_TOKEN, else the default
    file. A file must be private to its owner (0600): a token others can read is not."""
    if token_file is None:
        if token := os.environ.get(TOKEN_ENV, "").strip():
            return token
        token_file = DEFAULT_TOKEN_FILE
    path = token_file.expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise RemoteError(
            f"no admin token: make one on the server with `plasmaboot admin token create "
            f"--scope read --name NAME` (--scope write to act), then set {TOKEN_ENV}, or "
            f"save it to {path} with mode 0600, or pass --token-file"
        ) from None
    if mode & 0o077:
        raise RemoteError(
            f"refusing the admin token file {path}: mode {mode:04o} lets group or others "
            f"read it; make it private with `chmod 600 {path}`"
        )
    token = path.read_text().strip()
    if not token:
        raise RemoteError(f"the admin token file {path} is empty")
    return token


def ca_file(ca: Path | None, state_dir: Path) -> Path | None:
    """plasmaboot's CA to verify the admin listener with; None: the system's trust store."""
    if ca is not None:
        return ca
    for usual in (state_dir / "pki" / "ca.crt", DEFAULT_CA_FILE.expanduser()):
        if usual.exists():
            return usual
    return None


def trust(ca: Path | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise RemoteError(f"cannot read the CA certificate {ca}: {exc}; fix --ca") from None


def refusal(base: str, status: int, reason: str) -> str:
    """What a 401 or 403 of the admin API means, and the fix."""
    if status == 403:
        return (
            f"{base} refused the action (HTTP 403: {reason}); act with a write token: "
            "`plasmaboot admin token create --scope write --name NAME` on the server"
        )
    return (
        f"{base} refused the admin token (HTTP {status}: {reason}); check ${TOKEN_ENV} or "
        "the token file"
    )


class AdminApi:
    """A blocking HTTPS client of one server's admin API (the CLI runs one call at a time)."""

    def __init__(self, server: str, token: str, ca: Path | None) -> None:
        self.base = server.rstrip("/")
        self.ca = ca
        if not self.base.startswith("https://"):
            raise RemoteError(
                f"--server {server}: the admin API speaks only https; use "
                "https://HOST:PORT of the server's admin listener (server.admin, default "
                "port 8443)"
            )
        self._http = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {token}"},
            verify=trust(ca),
            timeout=httpx.Timeout(READ_S, connect=CONNECT_S),
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self._send("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """An action: waits as long as the server takes (it bounds its own steps)."""
        return self._send("POST", path, json=body, timeout=httpx.Timeout(None, connect=CONNECT_S))

    def _send(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise RemoteError(self._unreachable(exc)) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        reason = body.get("error") if isinstance(body, dict) else None
        if response.status_code in (401, 403):
            raise RemoteError(refusal(self.base, response.status_code, reason or "no reason"))
        if response.is_success:
            return body
        if reason is not None:
            raise Refused(response.status_code, body)
        if response.status_code == 404:
            raise RemoteError(
                f"{self.base}{path}: HTTP 404: is this the server's admin listener, and "
                "the same plasmaboot version? The boot port does not serve the admin API; "
                "use https://ADDRESS:PORT of server.admin (default 127.0.0.1:8443)"
            )
        raise RemoteError(f"{self.base}{path}: HTTP {response.status_code}: {response.text[:500]}")

    def _unreachable(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ReadTimeout):
            return f"{self.base} did not answer within {READ_S:g} s; try again"
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            against = f"the CA {self.ca}" if self.ca else "the system's trust store"
            return (
                f"cannot verify {self.base}'s certificate against {against} ({exc}); pass "
                "plasmaboot's CA with --ca (the server's STATE_DIR/pki/ca.crt)"
            )
        return (
            f"cannot reach {self.base}: {exc or type(exc).__name__}; is `plasmaboot serve` "
            "running there, and is this its admin listener (server.admin)?"
        )
