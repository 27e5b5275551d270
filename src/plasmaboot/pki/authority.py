"""Cluster CA and node certificates.

The seeds generate CN-only certificates with openssl; every modern TLS client (Python ssl,
Go's crypto/tls used by etcd, curl) ignores the CN and checks subjectAltName, so those
certificates fail hostname verification and push operators to ``curl -k``. Node certificates
here carry DNS SANs for the hostname and FQDN and IP SANs for every node address, and are
valid for both serverAuth and clientAuth because consensus peers use them in both directions.

Layout of a PKI directory: ``ca.crt``, ``ca.key``, ``<hostname>.crt``, ``<hostname>.key``.
Keys are ECDSA P-256, written atomically with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plasmaboot.files import write_atomic

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_NODE_USAGES = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
_NETWORKS = (ipaddress.IPv4Network, ipaddress.IPv6Network)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between nodes


class PKIError(Exception):
    """A PKI operation cannot proceed; the message names the file and the fix."""


@dataclass(frozen=True)
class NodeCertPaths:
    cert: Path
    key: Path
    ca_cert: Path


@dataclass(frozen=True)
class CertInfo:
    name: str
    path: Path
    subject: str
    is_ca: bool
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_after: dt.datetime
    serial: str = ""  # hex, as a TLS peer reports it

    def days_left(self, now: dt.datetime | None = None) -> float:
        moment = now or dt.datetime.now(dt.UTC)
        return (self.not_after - moment).total_seconds() / 86400


def node_cert_paths(pki_dir: Path, hostname: str) -> NodeCertPaths:
    """Where ``pki issue`` puts a node's certificate and key."""
    return NodeCertPaths(
        pki_dir / f"{hostname}.crt", pki_dir / f"{hostname}.key", pki_dir / CA_CERT
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path}: expected an EC private key written by 'plasmaboot pki'")
    return key


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = pki_dir / CA_CERT, pki_dir / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise PKIError(f"{pki_dir}: no cluster CA found; run 'plasmaboot pki init' first")
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path)


def init_ca(
    pki_dir: Path, cluster_name: str, days: int = 3650, force: bool = False
) -> NodeCertPaths:
    """Create the cluster CA; refuses to overwrite one unless ``force`` (re-keys the cluster)."""
    cert_path, key_path = pki_dir / CA_CERT, pki_dir / CA_KEY
    if cert_path.exists() and not force:
        raise PKIError(f"{cert_path}: a CA already exists; pass --force to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return NodeCertPaths(cert=cert_path, key=key_path, ca_cert=cert_path)


def _parse_ips(ips: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    parsed = []
    for ip in ips:
        try:
            parsed.append(ipaddress.ip_address(ip))
        except ValueError as exc:
            raise PKIError(f"--ip {ip!r}: not an IP address (e.g. 10.0.200.10)") from exc
    return parsed


def _sign_node(
    pki_dir: Path,
    dns_names: list[str],
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    key: ec.EllipticCurvePrivateKey,
    days: int,
    usages: tuple[x509.ObjectIdentifier, ...] = tuple(_NODE_USAGES),
) -> x509.Certificate:
    ca_cert, ca_key = _load_ca(pki_dir)
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ip) for ip in dict.fromkeys(ips)]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[-1])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(list(usages)),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def issue_node_cert(
    pki_dir: Path, hostname: str, fqdn: str | None, ips: list[str], days: int = 365
) -> NodeCertPaths:
    """Issue ``<hostname>.crt``/``.key`` with SANs for hostname, FQDN and every IP."""
    if not hostname or "." in hostname:
        raise PKIError(f"--hostname {hostname!r}: give the short host name, e.g. node01")
    dns_names = [hostname] + ([fqdn] if fqdn else [])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_node(pki_dir, dns_names, _parse_ips(ips), key, days)
    paths = NodeCertPaths(
        pki_dir / f"{hostname}.crt", pki_dir / f"{hostname}.key", pki_dir / CA_CERT
    )
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return paths


def issue_client_cert(pki_dir: Path, name: str, days: int = 365) -> NodeCertPaths:
    """Issue ``<name>.crt``/``.key`` for a client only (clientAuth, no address SANs): what
    an operator tool presents to the cluster store, which trusts the cluster CA."""
    if not name or "." in name:
        raise PKIError(f"{name!r}: give a short name without dots, e.g. plasmaboot-operator")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_node(pki_dir, [name], [], key, days, (ExtendedKeyUsageOID.CLIENT_AUTH,))
    paths = node_cert_paths(pki_dir, name)
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return paths


def issue_server_cert(
    pki_dir: Path, name: str, dns_names: list[str], ips: list[str], days: int = 365
) -> NodeCertPaths:
    """Issue ``<name>.crt``/``.key`` for one of plasmaboot's own services (the admin API),
    with these DNS and IP SANs; `name` is a file name, not a node's."""
    if not dns_names:
        raise PKIError(f"{name}: a server certificate needs at least one DNS name")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_node(pki_dir, dns_names, _parse_ips(ips), key, days)
    paths = NodeCertPaths(pki_dir / f"{name}.crt", pki_dir / f"{name}.key", pki_dir / CA_CERT)
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return paths


def renew(pki_dir: Path, hostname: str, days: int = 365, rotate_key: bool = False) -> NodeCertPaths:
    """Re-issue a certificate with the same SANs, usages and a new validity window, from
    the CA that signs now (a CA rotation reissues with it).

    The private key is kept by default, so a node can pick up the new certificate without a
    key redistribution; ``rotate_key`` generates a fresh key (after a suspected compromise).
    """
    paths = NodeCertPaths(
        pki_dir / f"{hostname}.crt", pki_dir / f"{hostname}.key", pki_dir / CA_CERT
    )
    if not paths.cert.exists() or not paths.key.exists():
        raise PKIError(f"{paths.cert}: no certificate for {hostname}; run 'plasmaboot pki issue'")
    old = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_names = san.get_values_for_type(x509.DNSName)
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress) if not isinstance(ip, _NETWORKS)]
    try:
        usages = tuple(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = tuple(_NODE_USAGES)
    key = ec.generate_private_key(ec.SECP256R1()) if rotate_key else _load_key(paths.key)
    cert = _sign_node(pki_dir, dns_names, ips, key, days, usages)
    if rotate_key:
        _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return paths


def cert_info(path: Path) -> CertInfo:
    """Describe one PEM certificate (``pki list`` and ``cluster verify`` report expiry)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        name=path.stem,
        path=path,
        subject=cert.subject.rfc4514_string(),
        is_ca=is_ca,
        dns_names=dns,
        ip_addresses=ips,
        not_after=cert.not_valid_after_utc,
        serial=format(cert.serial_number, "x"),
    )


def list_certs(pki_dir: Path) -> list[CertInfo]:
    """Every certificate in the PKI directory, soonest expiry first."""
    return sorted((cert_info(p) for p in pki_dir.glob("*.crt")), key=lambda info: info.not_after)
