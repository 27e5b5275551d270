"""The admin listener's certificate (issued from plasmaboot's CA, SANs from the configured
address and names, reissued when they change) and the deprecated static token."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from plasmaboot.inventory import Inventory, load_inventory
from plasmaboot.pki import cert_info
from plasmaboot.serve.admin import (
    admin_sans,
    ensure_admin_certificate,
    server_context,
    static_admin_token,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def inv() -> Inventory:
    return load_inventory(ROOT / "examples/lab/miniature.yaml")


def test_loopback_names_localhost_and_both_loopback_addresses(inv: Inventory) -> None:
    dns, ips = admin_sans(inv, "127.0.0.1")
    assert "localhost" in dns and {"127.0.0.1", "::1"} <= set(ips)


def test_a_wildcard_names_every_local_name_and_the_provisioning_address(inv: Inventory) -> None:
    dns, ips = admin_sans(inv, "0.0.0.0")
    assert str(inv.server.provisioning_ip) in ips and "0.0.0.0" not in ips
    assert socket.gethostname() in dns and "localhost" in dns


def test_a_specific_address_and_configured_names(inv: Inventory) -> None:
    configured = inv.model_copy(
        update={
            "server": inv.server.model_copy(
                update={
                    "admin": inv.server.admin.model_copy(update={"names": ("pxe.example.com",)})
                }
            )
        }
    )
    dns, ips = admin_sans(configured, "10.77.0.1")
    assert dns == ["pxe.example.com"] and ips == ["10.77.0.1"]


def test_the_certificate_is_issued_once_verified_by_the_ca_and_reissued_on_change(
    inv: Inventory, tmp_path: Path
) -> None:
    paths = ensure_admin_certificate(tmp_path, inv, "127.0.0.1")
    assert paths.ca_cert == tmp_path / "pki" / "ca.crt" and paths.cert.exists()
    assert paths.key.stat().st_mode & 0o077 == 0
    first = paths.cert.read_bytes()
    assert ensure_admin_certificate(tmp_path, inv, "127.0.0.1").cert.read_bytes() == first
    info = cert_info(paths.cert)
    assert "127.0.0.1" in info.ip_addresses and not info.is_ca
    server_context(paths)  # the key matches the certificate

    moved = ensure_admin_certificate(tmp_path, inv, "127.0.0.2")
    assert moved.cert.read_bytes() != first
    assert "127.0.0.2" in cert_info(moved.cert).ip_addresses
    client = ssl.create_default_context(cafile=paths.ca_cert)
    assert client.cert_store_stats()["x509_ca"] == 1


def test_the_static_token_is_read_never_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLASMABOOT_ADMIN_TOKEN", raising=False)
    assert static_admin_token(tmp_path) is None
    assert not (tmp_path / "admin.token").exists(), "no token file is made any more"
    (tmp_path / "admin.token").write_text("from-file\n")
    assert static_admin_token(tmp_path) == "from-file"
    monkeypatch.setenv("PLASMABOOT_ADMIN_TOKEN", "from-env")
    assert static_admin_token(tmp_path) == "from-env"
