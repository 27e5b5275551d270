"""A CA rotation in the PKI directory (pki/rotation.py) and the node side of a delivery
(operations/rotate.py: the tar and the script root's shell runs), without nodes: the
script runs here with sh against a temporary directory standing in for /etc/nixos/secrets.
The whole rotation against sshd and etcd: tests/integration/test_pki_rotate.py."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from plasmaboot.inventory.models import Node
from plasmaboot.operations.rotate import install_script, payload
from plasmaboot.pki import PKIError, init_ca, issue_client_cert, issue_node_cert, renew, rotation
from plasmaboot.render.common import SECRETS_DIR


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    init_ca(tmp_path, "test-cluster")
    issue_node_cert(tmp_path, "node01", "node01.example.com", ["10.0.200.10"])
    issue_client_cert(tmp_path, "plasmaboot-operator")
    return tmp_path


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _usages(path: Path) -> list[x509.ObjectIdentifier]:
    cert = _certs(path)[0]
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_renew_keeps_a_client_certificate_client_only(pki: Path) -> None:
    renew(pki, "plasmaboot-operator")
    assert _usages(pki / "plasmaboot-operator.crt") == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ca_rotation_trusts_both_then_the_new_ca_alone(pki: Path) -> None:
    old = _certs(pki / "ca.crt")[0]
    state = rotation.begin(pki, "test-cluster", ["node01"])

    bundle = _certs(pki / "ca.crt")
    assert [c.serial_number for c in bundle][1] == old.serial_number and len(bundle) == 2
    assert (state.phase, state.pending(), state.old_ca) == (
        "bundle", ["node01"], format(old.serial_number, "x"),
    )  # fmt: skip
    assert stat.S_IMODE((pki / "ca-rotation.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca.old.key").stat().st_mode) == 0o600
    assert not rotation.issued_by_signer(pki, pki / "node01.crt")
    renew(pki, "node01")  # what the reissue phase does: the new CA signs
    assert rotation.issued_by_signer(pki, pki / "node01.crt")
    with pytest.raises(PKIError, match="already in progress"):
        rotation.begin(pki, "test-cluster", ["node01"])

    assert rotation.drop_old(pki) == ["plasmaboot-operator"]  # node01 was reissued already
    assert [c.serial_number for c in _certs(pki / "ca.crt")] == [bundle[0].serial_number]
    assert _usages(pki / "plasmaboot-operator.crt") == [ExtendedKeyUsageOID.CLIENT_AUTH]
    rotation.finish(pki)
    assert rotation.load(pki) is None and not (pki / "ca.old.crt").exists()


def test_a_node_installed_during_a_rotation_joins_it_for_the_phases_left(pki: Path) -> None:
    state = rotation.begin(pki, "test-cluster", ["node01"])
    state.done["bundle"].append("node01")
    state.phase = "reissue"
    assert state.enlist(["node01", "node02"]) == ["node02"]
    assert state.enlist(["node01", "node02"]) == []  # once
    assert state.pending() == ["node01", "node02"]
    state.save(pki)
    assert rotation.load(pki) == state


def test_a_damaged_rotation_state_is_named_with_the_fix(pki: Path) -> None:
    (pki / "ca-rotation.json").write_text("{not json")
    with pytest.raises(PKIError, match="not a CA rotation state written by plasmaboot"):
        rotation.load(pki)


def test_a_rotation_cut_off_as_it_began_is_refused_not_begun_twice(pki: Path) -> None:
    """ca.old.* are written before ca.key/ca.crt and the state after: a crash between
    leaves ca.old.crt without a state, and a second begin must not take the half-made
    new CA for the old one."""
    before = (pki / "ca.crt").read_bytes()
    (pki / "ca.old.crt").write_bytes(before)
    with pytest.raises(PKIError, match="cut off as it began") as refused:
        rotation.begin(pki, "test-cluster", ["node01"])
    assert "ca.old.crt -> ca.crt" in str(refused.value)
    assert (pki / "ca.crt").read_bytes() == before and rotation.load(pki) is None


def test_the_delivery_script_puts_the_files_in_place_atomically(pki: Path, tmp_path: Path) -> None:
    node = Node.model_validate({"hostname": "node01", "macs": ["52:54:00:00:00:01"],
                                "profile": "p", "provisioning_ip": "10.0.100.11"})  # fmt: skip
    root = tmp_path / "root"
    script = install_script(node).replace(SECRETS_DIR, f"{root}{SECRETS_DIR}")
    done = subprocess.run(["sh", "-c", script], input=payload(pki, node), capture_output=True)
    assert done.returncode == 0, done.stderr
    secrets = root / SECRETS_DIR.lstrip("/")
    assert sorted(p.name for p in secrets.iterdir()) == ["ca.crt", "node01.crt", "node01.key"]
    for name in ("ca.crt", "node01.crt", "node01.key"):
        assert (secrets / name).read_bytes() == (pki / name).read_bytes()
    assert stat.S_IMODE((secrets / "node01.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((secrets / "node01.crt").stat().st_mode) == 0o644
    # a broken upload changes nothing and leaves no staging directory behind
    before = (secrets / "node01.crt").read_bytes()
    broken = subprocess.run(["sh", "-c", script], input=b"not a tar", capture_output=True)
    assert broken.returncode != 0
    assert (secrets / "node01.crt").read_bytes() == before
    assert sorted(p.name for p in secrets.iterdir()) == ["ca.crt", "node01.crt", "node01.key"]
