"""The admin API on its own listener, against a real `plasmaboot serve` on loopback: TLS
whose certificate verifies against plasmaboot's CA (openssl s_client, curl, httpx), the
admin routes a 404 on the boot port and the boot routes a 404 on the admin listener,
scoped tokens made, listed and revoked with the CLI (read reads, write acts, a read token
asking to act is a 403 naming the scope, revoked/unknown/missing a 401), the deprecated
static token still accepted, and `plasmaboot watch --server` trusting the CA."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from plasmaboot.pki import rotation
from plasmaboot.serve.admin import TLS_CHECK_S

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HTTP_PORT = 17550
TFTP_PORT = 17551
ADMIN_PORT = 17552
BOOT = f"http://127.0.0.1:{HTTP_PORT}"
ADMIN = f"https://127.0.0.1:{ADMIN_PORT}"
LEGACY = "legacy-static-admin-token"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    state: Path
    log: Path

    @property
    def ca(self) -> Path:
        return self.state / "pki" / "ca.crt"

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != "PLASMABOOT_ADMIN_TOKEN"}
        return subprocess.run(
            [sys.executable, "-m", "plasmaboot", *args],
            capture_output=True, text=True, timeout=60, env={**environ, **(env or {})},
        )  # fmt: skip

    def token(self, name: str, scope: str) -> str:
        made = self.cli("admin", "token", "create", "--name", name, "--scope", scope,
                        "--state-dir", str(self.state))  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "shown only now" in made.stderr and str(self.ca) in " ".join(made.stderr.split())
        return made.stdout.strip()

    def admin(self, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.request(method, ADMIN + path, headers=headers, verify=self.tls, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("admin")
    doc = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    config = tmp / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc))
    state = tmp / "state"
    state.mkdir()
    (state / "admin.token").write_text(LEGACY + "\n")  # what an earlier version made
    (state / "admin.token").chmod(0o600)
    log = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "PLASMABOOT_ADMIN_TOKEN"}
    argv = [
        sys.executable, "-m", "plasmaboot", "serve", "-c", str(config), "--state-dir", str(state),
        "--no-dhcp", "--bind", "127.0.0.1", "--http-port", str(HTTP_PORT),
        "--tftp-port", str(TFTP_PORT), "--admin-port", str(ADMIN_PORT),
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    served = Served(proc, state, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if served.ca.exists() and served.admin("GET", "/health", None).status_code == 200:
                    break
            except (httpx.TransportError, ssl.SSLError):
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_openssl_verifies_the_admin_certificate_against_plasmabootss_ca(served: Served) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{ADMIN_PORT}", "-CAfile", str(served.ca),
         "-verify_ip", "127.0.0.1", "-verify_return_error", "-brief"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Verification: OK" in output and "TLSv1.3" in output
    issuer = subprocess.run(
        ["openssl", "x509", "-noout", "-issuer", "-ext", "subjectAltName",
         "-in", str(served.state / "pki" / "plasmaboot.admin.crt")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "cluster CA" in issuer and "IP Address:127.0.0.1" in issuer and "DNS:localhost" in issuer


def test_curl_trusts_the_ca_and_nothing_else(served: Served) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    token = served.token("curl-reader", "read")
    header = ["-H", f"Authorization: Bearer {token}"]
    ok = subprocess.run(
        ["curl", "-sS", "--cacert", str(served.ca), *header, f"{ADMIN}/api/v1/nodes"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert {n["hostname"] for n in json.loads(ok.stdout)} >= {"node01", "node02"}
    untrusted = subprocess.run(
        ["curl", "-sS", *header, f"{ADMIN}/api/v1/nodes"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert untrusted.returncode == 60, untrusted.stderr  # the system store does not know it
    plain = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{ADMIN_PORT}/health"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert plain.stdout != "200", "the admin listener speaks only TLS"


def test_admin_routes_are_404_on_the_boot_port_and_boot_routes_on_the_admin_one(
    served: Served,
) -> None:
    write = served.token("boot-port-probe", "write")
    auth = {"Authorization": f"Bearer {write}"}
    for method, path in (("GET", "/api/v1/nodes"), ("GET", "/api/v1/nodes/node01"),
                         ("GET", "/api/v1/events"), ("GET", "/api/v1/events/stream"),
                         ("POST", "/api/v1/nodes/node01/actions"),
                         ("POST", "/api/v1/inventory/reload")):  # fmt: skip
        response = httpx.request(method, BOOT + path, headers=auth, json={"event": "enroll"})
        assert response.status_code == 404, (method, path)
    boot_doc = httpx.get(f"{BOOT}/api/openapi.json").json()["paths"]
    admin_doc = served.admin("GET", "/api/openapi.json", None).json()["paths"]
    assert "/api/v1/agent/lookup" in boot_doc and "/api/v1/nodes" not in boot_doc
    assert "/api/v1/nodes" in admin_doc and "/api/v1/agent/lookup" not in admin_doc
    for path in ("/boot/ipxe/boot.ipxe", "/boot/SHA256SUMS"):
        assert served.admin("GET", path, write).status_code == 404, path
        assert httpx.get(BOOT + path).status_code == 200, path
    lookup = served.admin("POST", "/api/v1/agent/lookup", write, json={"mac": "52:54:00:12:34:56"})
    assert lookup.status_code == 404
    for where in (BOOT, ADMIN):  # probes and scrapers on either side
        assert httpx.get(f"{where}/health", verify=served.tls).status_code == 200
        assert "plasmaboot_nodes" in httpx.get(f"{where}/metrics", verify=served.tls).text


def test_a_read_token_reads_and_a_write_token_acts(served: Served) -> None:
    read, write = served.token("dashboard", "read"), served.token("operator", "write")
    for path in ("/api/v1/nodes", "/api/v1/nodes/node02", "/api/v1/nodes/node02/events",
                 "/api/v1/events?limit=5"):  # fmt: skip
        assert served.admin("GET", path, read).status_code == 200, path
    headers = {"Authorization": f"Bearer {read}"}
    url = f"{ADMIN}/api/v1/events/stream"
    with httpx.stream("GET", url, headers=headers, verify=served.tls) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
    before = served.admin("GET", "/api/v1/nodes/node02", read).json()
    refused = served.admin("POST", "/api/v1/nodes/node02/actions", read,
                           json={"event": "decommission"})  # fmt: skip
    assert refused.status_code == 403
    body = refused.json()
    assert body["scope"] == "write" and "'dashboard' has scope read" in body["error"]
    assert served.admin("POST", "/api/v1/inventory/reload", read).status_code == 403
    assert served.admin("GET", "/api/v1/nodes/node02", read).json() == before
    done = served.admin("POST", "/api/v1/nodes/node02/actions", write,
                        json={"event": "decommission", "reason": "scope test"})  # fmt: skip
    assert done.status_code == 200, done.text
    assert served.admin("GET", "/api/v1/nodes/node02", read).json()["state"] == "decommissioned"


def test_missing_unknown_and_revoked_tokens_are_401(served: Served) -> None:
    token = served.token("short-lived", "write")
    assert served.admin("GET", "/api/v1/nodes", token).status_code == 200
    listed = served.cli("admin", "token", "list", "--json", "--state-dir", str(served.state))
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["short-lived"]["scope"] == "write" and rows["short-lived"]["expires_at"] is None
    assert token not in listed.stdout
    revoked = served.cli(
        "admin", "token", "revoke", "short-lived", "--state-dir", str(served.state)
    )
    assert revoked.returncode == 0, revoked.stderr
    again = served.cli("admin", "token", "revoke", "short-lived", "--state-dir", str(served.state))
    assert again.returncode == 1 and "no admin token named" in again.stderr
    for bearer in (token, "not-a-token", None):
        response = served.admin("GET", "/api/v1/nodes", bearer)
        assert response.status_code == 401, bearer
        assert response.json()["error"]
    metrics = httpx.get(f"{BOOT}/metrics").text
    assert 'plasmaboot_admin_auth_refused_total{reason="unknown"}' in metrics
    assert 'plasmaboot_admin_auth_refused_total{reason="missing"}' in metrics


def test_the_static_token_of_earlier_versions_still_works_as_a_write_token(
    served: Served,
) -> None:
    assert served.admin("GET", "/api/v1/nodes", LEGACY).status_code == 200
    log = served.log.read_text()
    assert "static admin token is deprecated" in log and "admin token create" in log


def test_no_token_reaches_the_log_or_the_process_arguments(served: Served) -> None:
    token = served.token("secret-keeper", "read")
    assert served.admin("GET", "/api/v1/nodes", token).status_code == 200
    assert served.admin("GET", "/api/v1/nodes", token + "x").status_code == 401
    cmdline = Path(f"/proc/{served.proc.pid}/cmdline").read_bytes().decode()
    log = served.log.read_text()
    for secret in (token, LEGACY):
        assert secret not in log and secret not in cmdline


def test_watch_through_the_admin_listener_trusts_the_ca(served: Served) -> None:
    token = served.token("watcher", "read")
    args = ("watch", "node01", "--server", ADMIN, "--timeout", "10")
    env = {"PLASMABOOT_ADMIN_TOKEN": token}
    elsewhere = served.state.parent / "elsewhere"  # a state dir with no CA in it
    for extra in (("--ca", str(served.ca), "--state-dir", str(elsewhere)),
                  ("--state-dir", str(served.state))):  # fmt: skip
        watched = served.cli(*args, *extra, env=env)
        output = watched.stdout + watched.stderr
        assert "node01" in watched.stdout and "enrolled" in watched.stdout, output
        assert "refused" not in output and "cannot reach" not in output, output
    untrusted = served.cli(*args, "--state-dir", str(elsewhere), env=env)
    assert untrusted.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr.replace("\n", " ")
    boot_port = served.cli("watch", "node01", "--server", BOOT, "--timeout", "10", env=env)
    assert boot_port.returncode == 1 and "admin listener" in boot_port.stderr


def test_a_ca_rotation_reaches_the_running_listener_without_a_restart(served: Served) -> None:
    """Last in the file: it replaces the CA. `pki rotate-ca`'s PKI steps (begin, drop-old,
    finish) while serve runs; a client trusting only the new CA is then served by the same
    process, and the admin probe of /health stays healthy."""
    pki = served.state / "pki"
    old_ca = (pki / "ca.crt").read_bytes()
    old_trust = served.state.parent / "old-ca.crt"
    old_trust.write_bytes(old_ca)
    rotation.begin(pki, "lab", [])
    rotation.drop_old(pki)  # the admin certificate reissued from the new CA, alone trusted
    rotation.finish(pki)
    assert (pki / "ca.crt").read_bytes() != old_ca
    new_trust = ssl.create_default_context(cafile=pki / "ca.crt")
    deadline = time.monotonic() + TLS_CHECK_S + 10
    while True:
        try:
            answer = httpx.get(ADMIN + "/health", verify=new_trust, timeout=5)
            break
        except httpx.ConnectError as exc:  # the old certificate, until the listener reloads
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc
            assert time.monotonic() < deadline, served.log.read_text()[-3000:]
            time.sleep(0.5)
    assert served.proc.poll() is None
    assert "admin API certificate reloaded" in served.log.read_text()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(ADMIN + "/health", verify=ssl.create_default_context(cafile=old_trust))
    # serve's own admin probe trusts the new ca.crt as well: healthy again, and stays so
    deadline = time.monotonic() + 30
    while answer.status_code != 200 or answer.json()["services"]["admin"] != "running":
        assert time.monotonic() < deadline, answer.text
        time.sleep(1)
        answer = httpx.get(ADMIN + "/health", verify=new_trust, timeout=5)
