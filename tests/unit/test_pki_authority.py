"""PKI: SANs, key modes, a real TLS handshake with hostname checks, expiry and renewal."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from plasmaboot.pki import PKIError, init_ca, issue_node_cert, list_certs, renew
from plasmaboot.pki.cli import app


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path, "test-cluster")
    issue_node_cert(tmp_path, "node01", "node01.example.com", ["127.0.0.1", "10.0.200.10"])
    issue_node_cert(tmp_path, "node02", "node02.example.com", ["10.0.200.11"])
    return tmp_path


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_cert_has_dns_and_ip_sans_not_only_a_cn(pki: Path) -> None:
    cert = _cert(pki / "node01.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node01", "node01.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "10.0.200.10",
    ]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages


def test_keys_are_mode_0600_and_certs_world_readable(pki: Path) -> None:
    for key in ("ca.key", "node01.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "node01.crt").stat().st_mode) == 0o644
    assert not list(pki.glob(".*")), "temporary files left behind"


def _serve_once(context: ssl.SSLContext, server: socket.socket, errors: list[str]) -> None:
    with server:
        server.settimeout(10)
        for _ in range(2):
            conn, _addr = server.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
                    tls.sendall(peer.subject.rfc4514_string().encode())
            except ssl.SSLError as error:
                errors.append(str(error))


def test_tls_handshake_verifies_node01_by_name_and_by_ip_with_client_cert(pki: Path) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    server_ctx.load_cert_chain(str(pki / "node01.crt"), str(pki / "node01.key"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    client_ctx.load_cert_chain(str(pki / "node02.crt"), str(pki / "node02.key"))
    assert client_ctx.check_hostname
    listener = socket.create_server(("127.0.0.1", 0))  # listening before the thread starts
    port = listener.getsockname()[1]
    errors = list[str]()
    server = threading.Thread(target=_serve_once, args=(server_ctx, listener, errors))
    server.start()
    seen_by_server = []
    for server_name in ("node01.example.com", "127.0.0.1"):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            seen_by_server.append(tls.recv(100).decode())
    server.join(10)
    assert errors == []
    assert seen_by_server == ["CN=node02.example.com", "CN=node02.example.com"]


def test_hostname_verification_rejects_a_name_not_in_the_sans(pki: Path) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(pki / "node01.crt"), str(pki / "node01.key"))
    client_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    left, right = socket.socketpair()
    with left, right:
        server_side = server_ctx.wrap_socket(left, server_side=True, do_handshake_on_connect=False)
        client_side = client_ctx.wrap_socket(
            right, server_hostname="node03.example.com", do_handshake_on_connect=False
        )
        thread = threading.Thread(target=lambda: _quiet_handshake(server_side))
        thread.start()
        with pytest.raises(ssl.SSLCertVerificationError, match=r"node03\.example\.com"):
            client_side.do_handshake()
        thread.join(5)


def _quiet_handshake(sock: ssl.SSLSocket) -> None:
    with contextlib.suppress(ssl.SSLError, OSError):
        sock.do_handshake()


def test_list_reports_expiry_soonest_first(tmp_path: Path) -> None:
    init_ca(tmp_path, "c", days=1000)
    issue_node_cert(tmp_path, "node09", None, [], days=10)
    infos = list_certs(tmp_path)
    assert [i.name for i in infos] == ["node09", "ca"]
    assert 9.9 < infos[0].days_left() <= 10.01
    assert infos[1].is_ca and not infos[0].is_ca


def test_node_cert_never_outlives_its_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, "c", days=5)
    issue_node_cert(tmp_path, "node01", None, [], days=365)
    assert list_certs(tmp_path)[0].days_left() < 5.01


def _public(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_renew_keeps_the_key_and_the_sans_by_default(pki: Path) -> None:
    before_key, before = _public(pki / "node01.key"), _cert(pki / "node01.crt")
    renew(pki, "node01", days=800)
    after = _cert(pki / "node01.crt")
    assert _public(pki / "node01.key") == before_key
    assert after.serial_number != before.serial_number
    assert after.not_valid_after_utc > before.not_valid_after_utc + dt.timedelta(days=300)
    sans = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(sans) == (
        before.extensions.get_extension_for_class(sans)
    )


def test_renew_with_rotate_key_replaces_the_key(pki: Path) -> None:
    before_key = _public(pki / "node01.key")
    renew(pki, "node01", rotate_key=True)
    assert _public(pki / "node01.key") != before_key
    assert _cert(pki / "node01.crt").public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _public(pki / "node01.key")


def test_init_refuses_to_overwrite_an_existing_ca(pki: Path) -> None:
    with pytest.raises(PKIError, match="--force"):
        init_ca(pki, "again")


def test_issue_without_ca_and_with_bad_ip_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="pki init"):
        issue_node_cert(tmp_path, "node01", None, [])
    init_ca(tmp_path, "c")
    with pytest.raises(PKIError, match=r"--ip '10\.0\.0\.300'"):
        issue_node_cert(tmp_path, "node01", None, ["10.0.0.300"])


def test_cli_init_issue_list_renew(tmp_path: Path) -> None:
    runner = CliRunner()
    pki_dir = str(tmp_path / "pki")
    assert runner.invoke(app, ["init", "--pki-dir", pki_dir]).exit_code == 0
    issued = runner.invoke(
        app,
        [
            *("issue", "--pki-dir", pki_dir, "--hostname", "node01", "--fqdn", "node01.ex.com"),
            *("--ip", "10.0.0.1", "--ip", "10.0.1.1"),
        ],
    )
    assert issued.exit_code == 0, issued.output
    listing = runner.invoke(app, ["list", "--pki-dir", pki_dir], terminal_width=200)
    assert "node01.ex.com" in listing.output and "10.0.1.1" in listing.output
    renewed = runner.invoke(app, ["renew", "--pki-dir", pki_dir, "--hostname", "node01"])
    assert renewed.exit_code == 0 and "key kept" in renewed.output
    again = runner.invoke(app, ["init", "--pki-dir", pki_dir])
    assert again.exit_code == 1 and "--force" in again.output
