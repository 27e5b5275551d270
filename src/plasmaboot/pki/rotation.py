"""A CA rotation in the PKI directory (runbook 10.2): what `plasmaboot pki rotate-ca`
changes here; delivering the files to the nodes is `operations/rotate.py`'s.

A node trusts the CAs in its `ca.crt`. Replacing the CA at once would split the cluster
(a node with a new certificate is refused by a peer that trusts only the old CA), so the
rotation goes through three phases, each finished on every node before the next begins:

1. `bundle`: a new CA signs from now on (`ca.key`); `ca.crt` holds the new CA, then the
   old one, and every node gets that bundle: each trusts both;
2. `reissue`: each node's certificate is reissued from the new CA;
3. `drop-old`: every other certificate here still from the old CA (the operator's client
   certificate, the admin listener's, nodes outside the rotation) is reissued, `ca.crt`
   holds the new CA alone, and every node gets it.

The first certificate of `ca.crt` is always the signer (`authority._load_ca`), so `pki
issue`, installs and the operator certificate use the new CA as soon as it exists, and
whoever verifies with `ca.crt` (cluster verify, admin API clients) trusts both meanwhile.
The progress is kept in `ca-rotation.json` (0600) next to the CA: which nodes finished
which phase and which were skipped (--force), so an interrupted rotation resumes where it
stopped and can be reported. The old CA stays as `ca.old.crt`/`ca.old.key` until the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from plasmaboot.files import write_atomic
from plasmaboot.pki.authority import CA_CERT, CA_KEY, PKIError, init_ca, renew

STATE_FILE = "ca-rotation.json"
OLD_CA_CERT, OLD_CA_KEY = "ca.old.crt", "ca.old.key"
PHASES = ("bundle", "reissue", "drop-old")
_NEXT = ".ca-next"  # where the new CA is made before it replaces the signer


@dataclass
class CaRotation:
    """Where a CA rotation is: its phase and, per phase, the nodes that finished it."""

    phase: str
    nodes: list[str]
    old_ca: str  # serial numbers, hex: which CA is which in `pki list`
    new_ca: str
    done: dict[str, list[str]] = field(default_factory=lambda: {p: [] for p in PHASES})
    skipped: list[str] = field(default_factory=list)  # unreachable, passed over with --force

    def enlist(self, installed: list[str]) -> list[str]:
        """Nodes installed since the rotation began join it (they got `ca.crt` as it was
        at their install) and go through the phases left, so drop-old reaches them too;
        the names that joined."""
        joined = [n for n in installed if n not in self.nodes]
        self.nodes.extend(joined)
        return joined

    def pending(self) -> list[str]:
        """The nodes of the rotation still to do in the current phase."""
        finished = set(self.done[self.phase]) | set(self.skipped)
        return [n for n in self.nodes if n not in finished]

    def save(self, pki: Path) -> None:
        write_atomic(pki / STATE_FILE, json.dumps(asdict(self), indent=2).encode(), 0o600)


def load(pki: Path) -> CaRotation | None:
    """The rotation in progress, or None."""
    path = pki / STATE_FILE
    if not path.exists():
        return None
    try:
        return CaRotation(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise PKIError(
            f"{path}: not a CA rotation state written by plasmaboot ({exc}); restore it "
            "from a backup, or compare ca.crt and ca.old.crt with `plasmaboot pki list`"
        ) from None


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def begin(pki: Path, cluster_name: str, nodes: list[str], days: int = 3650) -> CaRotation:
    """Make the new CA the signer and `ca.crt` the bundle (new, then old); phase `bundle`."""
    if load(pki) is not None:
        raise PKIError(f"{pki / STATE_FILE}: a CA rotation is already in progress; resume it")
    if not (pki / CA_CERT).exists():
        raise PKIError(f"{pki}: no cluster CA found; run 'plasmaboot pki init' first")
    if (pki / OLD_CA_CERT).exists():  # written first below: a begin that did not finish
        raise PKIError(
            f"{pki / OLD_CA_CERT} exists but no rotation is recorded: a CA rotation was cut "
            f"off as it began, and {CA_CERT}/{CA_KEY} may be half replaced. Put the old CA "
            f"back ({OLD_CA_CERT} -> {CA_CERT}, {OLD_CA_KEY} -> {CA_KEY}), then begin again"
        )
    old = _certs(pki / CA_CERT)[0]
    staging = pki / _NEXT
    shutil.rmtree(staging, ignore_errors=True)
    init_ca(staging, cluster_name, days=days)
    new = _certs(staging / CA_CERT)[0]
    # The old CA is saved before anything is replaced, and the state only after: a crash
    # in between leaves ca.old.* for the refusal above, never a second "old" CA.
    write_atomic(pki / OLD_CA_KEY, (pki / CA_KEY).read_bytes(), 0o600)
    write_atomic(pki / OLD_CA_CERT, _pem(old), 0o644)
    write_atomic(pki / CA_KEY, (staging / CA_KEY).read_bytes(), 0o600)
    write_atomic(pki / CA_CERT, _pem(new, old), 0o644)
    shutil.rmtree(staging)
    state = CaRotation(PHASES[0], list(nodes), _serial(old), _serial(new))
    state.save(pki)
    return state


def issued_by_signer(pki: Path, cert_path: Path) -> bool:
    """Whether the certificate was signed by the CA that signs now (first of `ca.crt`)."""
    signer = _certs(pki / CA_CERT)[0]
    try:
        x509.load_pem_x509_certificate(cert_path.read_bytes()).verify_directly_issued_by(signer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issued_by_trusted(pki: Path, cert_path: Path) -> bool:
    """Whether a CA of `ca.crt` (either one, during a rotation) signed the certificate."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    for ca in _certs(pki / CA_CERT):
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def drop_old(pki: Path) -> list[str]:
    """Reissue every certificate here the old CA signed (same SANs, usages and key), then
    trust the new CA alone; the names reissued."""
    reissued = []
    for path in sorted(pki.glob("*.crt")):
        if path.name in (CA_CERT, OLD_CA_CERT) or issued_by_signer(pki, path):
            continue
        try:
            renew(pki, path.stem)
        except x509.ExtensionNotFound:
            raise PKIError(
                f"{path}: signed by the old CA, and without SANs to reissue it with; move it "
                f"out of {pki} (or reissue it by hand), then resume the rotation"
            ) from None
        reissued.append(path.stem)
    write_atomic(pki / CA_CERT, _pem(_certs(pki / CA_CERT)[0]), 0o644)
    return reissued


def finish(pki: Path) -> None:
    """Every node moved: forget the old CA and the rotation's state."""
    for name in (OLD_CA_KEY, OLD_CA_CERT, STATE_FILE):
        (pki / name).unlink(missing_ok=True)
