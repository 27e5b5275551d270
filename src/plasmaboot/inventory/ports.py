"""The service port matrix of the network reference, as data.

One table: the firewall renderers (nftables, iptables, NixOS) and the docs read it, so a
port can never be open in one and closed in another. `source` names a scope that the
renderer resolves against the inventory's networks:

- ``internal``: the whole site (10.0.0.0/8 in the reference: every network's supernet)
- ``cluster``: the production network (Raft, gossip, VXLAN between nodes)
- ``provisioning``: the provisioning networks (where machines PXE-boot)
- ``management``: the management network (SSH, metrics scraping)
- ``storage``: the storage network (iSCSI)
- ``server``: the provisioning server's own address only (a /32)
- ``any``: no source restriction
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["internal", "cluster", "provisioning", "management", "storage", "server", "any"]
Proto = Literal["tcp", "udp"]


@dataclass(frozen=True)
class PortRule:
    service: str
    port: int
    proto: Proto
    purpose: str
    source: Scope
    required: bool = True
    port_end: int | None = None  # inclusive end of a range such as NodePort 30000-32767


PORT_MATRIX: tuple[PortRule, ...] = (
    # The client APIs are limited to the cluster network, as in the network reference's
    # complete ruleset; the provisioning server also reaches them (cluster verify, backup, a
    # decommissioned node leaving the membership): docs/corrections.md.
    PortRule("chainfire", 2379, "tcp", "Chainfire client API", "cluster"),
    PortRule(
        "chainfire", 2379, "tcp", "Chainfire client API from the provisioning server", "server"
    ),
    PortRule("chainfire", 2380, "tcp", "Chainfire Raft consensus", "cluster"),
    PortRule("chainfire", 2381, "tcp", "Chainfire gossip", "cluster"),
    PortRule("flaredb", 2479, "tcp", "FlareDB client API", "cluster"),
    PortRule("flaredb", 2479, "tcp", "FlareDB client API from the provisioning server", "server"),
    PortRule("flaredb", 2480, "tcp", "FlareDB Raft consensus", "cluster"),
    PortRule("iam", 8080, "tcp", "IAM API (HTTP)", "internal"),
    PortRule("iam", 8443, "tcp", "IAM API (HTTPS)", "internal", required=False),
    PortRule("plasmavmc", 9090, "tcp", "PlasmaVMC API", "internal"),
    PortRule("prismnet", 9091, "tcp", "PrismNET API", "internal"),
    PortRule("prismnet", 4789, "udp", "PrismNET VXLAN overlay", "cluster"),
    PortRule("flashdns", 53, "udp", "FlashDNS (UDP)", "internal"),
    PortRule("flashdns", 53, "tcp", "FlashDNS (TCP)", "internal"),
    PortRule("flashdns", 853, "tcp", "FlashDNS DNS-over-TLS", "internal", required=False),
    PortRule("fiberlb", 9092, "tcp", "FiberLB API", "internal"),
    PortRule("fiberlb", 80, "tcp", "FiberLB HTTP passthrough", "any", required=False),
    PortRule("fiberlb", 443, "tcp", "FiberLB HTTPS passthrough", "any", required=False),
    PortRule("lightningstor", 9093, "tcp", "LightningStor API", "internal"),
    PortRule("lightningstor", 9094, "tcp", "LightningStor replication", "cluster"),
    PortRule("lightningstor", 3260, "tcp", "LightningStor iSCSI", "storage", required=False),
    PortRule("k8shost", 10250, "tcp", "Kubelet API", "cluster"),
    PortRule("k8shost", 10256, "tcp", "Kubelet health check", "cluster", required=False),
    PortRule("k8shost", 30000, "tcp", "NodePort services", "internal", False, 32767),
    # install (nixos-anywhere), rollout and rollback reach every node over SSH from the
    # provisioning server, which need not be on the management network
    PortRule("ssh", 22, "tcp", "Provisioning server (install, rollout, rollback)", "server"),
    PortRule("ssh", 22, "tcp", "Remote management", "management"),
    PortRule("monitoring", 9100, "tcp", "Prometheus node exporter", "management"),
    PortRule("ntp", 123, "udp", "Time synchronization", "any"),
)

# Every node runs these whatever its profile: without SSH and metrics it cannot be managed.
BASE_SERVICES: tuple[str, ...] = ("ssh", "ntp")

KNOWN_SERVICES: frozenset[str] = frozenset(rule.service for rule in PORT_MATRIX)


def rules_for(services: tuple[str, ...] | list[str]) -> list[PortRule]:
    """The rules a node running `services` (plus the base ones) opens, in matrix order."""
    wanted = set(services) | set(BASE_SERVICES)
    return [rule for rule in PORT_MATRIX if rule.service in wanted]
