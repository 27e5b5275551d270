"""A node's install files: the tree nixos-anywhere's `--extra-files` copies onto its disk.

The tree mirrors the installed root filesystem. It always holds the node's secrets:
`cluster-config.json` (0600) with the plasmaboot URL and a fresh node credential, so the
installed OS can report its first boot and join; the cluster CA; the node's certificate and
key, issued from the inventory (SANs: hostname, FQDN, every address) and reissued when
missing, near expiry or when the inventory's addresses changed. For an installed OS that
is not NixOS (`installer.target_os: debian`, the lab) it also holds the rendered first-boot
units and the cluster store's config, which a NixOS flake carries itself.

The tree lives under the state directory (0700) only while the install runs: the install
driver removes it when the install command ends, whatever the outcome.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.files import write_atomic
from plasmaboot.inventory import Inventory, Node
from plasmaboot.pki.authority import (
    CA_CERT,
    cert_info,
    init_ca,
    issue_node_cert,
    node_cert_paths,
)
from plasmaboot.render.cluster_config import cluster_config
from plasmaboot.render.common import CLUSTER_CONFIG_PATH, cluster_ip, json_text
from plasmaboot.render.systemd import SYSTEMD_DIR, debian_node_files

REISSUE_DAYS = 30  # a certificate closer to expiry than this is reissued at install


def pki_dir(state_dir: Path) -> Path:
    return state_dir / "pki"


def certificate_sans(inv: Inventory, node: Node) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a node's certificate must carry, from the inventory."""
    ips = {str(node.provisioning_ip), str(cluster_ip(inv, node))}
    if node.production_ip is not None:
        ips.add(str(node.production_ip))
    return [node.hostname, inv.fqdn(node)], sorted(ips)


def ensure_node_certificate(pki: Path, inv: Inventory, node: Node) -> None:
    """Make the CA on first use; (re)issue the node's certificate when it is not right."""
    if not (pki / CA_CERT).exists():
        init_ca(pki, inv.cluster.name)
    paths = node_cert_paths(pki, node.hostname)
    dns, ips = certificate_sans(inv, node)
    if paths.cert.exists() and paths.key.exists():
        info = cert_info(paths.cert)
        fresh = info.days_left(dt.datetime.now(dt.UTC)) > REISSUE_DAYS
        if fresh and set(info.dns_names) == set(dns) and set(info.ip_addresses) == set(ips):
            return
    issue_node_cert(pki, node.hostname, inv.fqdn(node), ips)


@dataclass(frozen=True)
class NodeFiles:
    root: Path

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _put(root: Path, absolute: str, data: str | bytes, mode: int) -> None:
    """A file of the tree; `write_atomic` sets the mode before a secret byte is written."""
    content = data.encode() if isinstance(data, str) else data
    write_atomic(root / absolute.lstrip("/"), content, mode)


def _debian_units(root: Path, inv: Inventory, node: Node) -> None:
    """The rendered first-boot units and store config, enabled as `systemctl enable` would."""
    rendered = debian_node_files(inv, node)
    for path, content in rendered.files.items():
        _put(root, path, content, 0o644)
    wants = root / SYSTEMD_DIR.lstrip("/") / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in rendered.enable:
        (wants / unit).symlink_to(f"{SYSTEMD_DIR}/{unit}")


def assemble_node_files(
    inv: Inventory, node: Node, *, state_dir: Path, plasmaboot_url: str, credential: str
) -> NodeFiles:
    """Write the node's tree (replacing a previous attempt's) and return where it is."""
    pki = pki_dir(state_dir)
    ensure_node_certificate(pki, inv, node)
    work = state_dir / "install"
    work.mkdir(mode=0o700, exist_ok=True)
    os.chmod(work, 0o700)
    files = NodeFiles(work / node.hostname)
    files.remove()
    files.root.mkdir(mode=0o700)
    doc = cluster_config(inv, node) | {"plasmaboot_url": plasmaboot_url, "agent_token": credential}
    _put(files.root, CLUSTER_CONFIG_PATH, json_text(doc), 0o600)
    tls = doc["tls"]
    certs = node_cert_paths(pki, node.hostname)
    _put(files.root, tls["ca_cert_path"], certs.ca_cert.read_bytes(), 0o644)
    _put(files.root, tls["node_cert_path"], certs.cert.read_bytes(), 0o644)
    _put(files.root, tls["node_key_path"], certs.key.read_bytes(), 0o600)
    (files.root / CLUSTER_CONFIG_PATH.lstrip("/")).parent.chmod(0o700)
    if inv.server.installer.target_os == "debian":
        _debian_units(files.root, inv, node)
    return files
