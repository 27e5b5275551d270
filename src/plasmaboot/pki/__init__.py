"""Cluster CA and node certificates with SANs, expiry listing and renewal."""

from plasmaboot.pki.authority import (
    CertInfo,
    NodeCertPaths,
    PKIError,
    cert_info,
    init_ca,
    issue_client_cert,
    issue_node_cert,
    list_certs,
    node_cert_paths,
    renew,
)

__all__ = [
    "CertInfo",
    "NodeCertPaths",
    "PKIError",
    "cert_info",
    "init_ca",
    "issue_client_cert",
    "issue_node_cert",
    "list_certs",
    "node_cert_paths",
    "renew",
]
