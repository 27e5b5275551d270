"""Certificates from ``plasmaboot pki`` checked by the real openssl binary."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from plasmaboot.pki import init_ca, issue_node_cert, renew

pytestmark = pytest.mark.integration


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        print("SKIP: openssl not installed (Debian package openssl)")
        pytest.skip("openssl not installed (Debian package openssl)")
    init_ca(tmp_path, "pbf-openssl")
    issue_node_cert(tmp_path, "node01", "node01.example.com", ["10.0.200.10"])
    return tmp_path


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def test_openssl_verify_accepts_the_chain_for_every_purpose_and_name(pki: Path) -> None:
    ca, cert = str(pki / "ca.crt"), str(pki / "node01.crt")
    for purpose in ("sslserver", "sslclient"):
        result = openssl("verify", "-CAfile", ca, "-purpose", purpose, cert)
        assert result.returncode == 0 and f"{cert}: OK" in result.stdout, result.stderr
    for check in (
        ("-verify_hostname", "node01"),
        ("-verify_hostname", "node01.example.com"),
        ("-verify_ip", "10.0.200.10"),
    ):
        result = openssl("verify", "-CAfile", ca, *check, cert)
        assert result.returncode == 0, (check, result.stderr)


def test_openssl_verify_rejects_names_and_ips_not_in_the_sans(pki: Path) -> None:
    ca, cert = str(pki / "ca.crt"), str(pki / "node01.crt")
    for check in (("-verify_hostname", "node02.example.com"), ("-verify_ip", "10.0.200.11")):
        result = openssl("verify", "-CAfile", ca, *check, cert)
        assert result.returncode != 0, check
        assert "mismatch" in (result.stdout + result.stderr)


def test_openssl_sees_subject_alt_names_and_renewed_cert_still_verifies(pki: Path) -> None:
    text = openssl("x509", "-in", str(pki / "node01.crt"), "-noout", "-text").stdout
    assert "DNS:node01, DNS:node01.example.com, IP Address:10.0.200.10" in text
    renew(pki, "node01", days=30)
    result = openssl("verify", "-CAfile", str(pki / "ca.crt"), str(pki / "node01.crt"))
    assert result.returncode == 0, result.stderr
    key_check = openssl("pkey", "-in", str(pki / "node01.key"), "-check", "-noout")
    assert key_check.returncode == 0, key_check.stderr
