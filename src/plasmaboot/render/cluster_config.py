"""cluster-config.json per node: what the first-boot agent reads to bootstrap or join.

Peers are written as IPv4:port (the node's raft address), not `nodeXX:2380`: the Raft
listener advertises its IP, and a first boot must not depend on DNS that the cluster itself
is about to provide. `leader_url` stays the first bootstrap node's FQDN (certificates carry
DNS and IP SANs, so either verifies); `member_urls` add IP-based fallbacks for joiners.
"""

from __future__ import annotations

from typing import Any

from plasmaboot.firstboot.schema import validate_cluster_config
from plasmaboot.inventory.models import Inventory, Node
from plasmaboot.render.common import (
    SECRETS_DIR,
    Files,
    RenderContext,
    RenderError,
    bootstrap_nodes,
    cluster_ip,
    json_text,
    services_of,
)

CHAINFIRE_CLIENT, CHAINFIRE_RAFT = 2379, 2380
FLAREDB_CLIENT, FLAREDB_RAFT = 2479, 2480
IAM_PORT = 8080


def cluster_config(inv: Inventory, node: Node) -> dict[str, Any]:
    """The document for one node, in the seeds' field order."""
    seeds = bootstrap_nodes(inv)
    if not seeds:
        raise RenderError("no node has bootstrap: true; mark 3 control-plane nodes bootstrap")
    services = services_of(inv, node)
    ip = cluster_ip(inv, node)
    leader = inv.fqdn(seeds[0])
    doc: dict[str, Any] = {
        "node_id": node.hostname,
        "node_role": inv.role_of(node),
        "bootstrap": node.bootstrap,
        "cluster_name": inv.cluster.name,
        "leader_url": f"https://{leader}:{CHAINFIRE_CLIENT}",
        "raft_addr": f"{ip}:{CHAINFIRE_RAFT}",
    }
    if node.bootstrap:
        doc["initial_peers"] = [f"{cluster_ip(inv, n)}:{CHAINFIRE_RAFT}" for n in seeds]
    else:
        doc["member_urls"] = [f"https://{cluster_ip(inv, n)}:{CHAINFIRE_CLIENT}" for n in seeds]
    flaredb = "flaredb" in services
    doc["flaredb_enabled"] = flaredb
    if flaredb:
        if node.bootstrap:
            doc["flaredb_peers"] = [f"{cluster_ip(inv, n)}:{FLAREDB_RAFT}" for n in seeds]
        else:
            doc["flaredb_member_urls"] = [
                f"https://{cluster_ip(inv, n)}:{FLAREDB_CLIENT}" for n in seeds
            ]
    if "iam" in services:
        doc["iam_health_url"] = f"http://{ip}:{IAM_PORT}/health"
    doc["tls"] = {
        "enabled": True,
        "ca_cert_path": f"{SECRETS_DIR}/ca.crt",
        "node_cert_path": f"{SECRETS_DIR}/{node.hostname}.crt",
        "node_key_path": f"{SECRETS_DIR}/{node.hostname}.key",
    }
    return doc


def render_cluster_config(inv: Inventory, ctx: RenderContext) -> Files:
    """<hostname>/cluster-config.json per node, each checked against the agent's schema."""
    files: Files = {}
    for node in inv.nodes:
        doc = cluster_config(inv, node)
        errors = validate_cluster_config(doc)
        if errors:
            raise RenderError(
                f"cluster-config.json for {node.hostname} violates the schema: " + "; ".join(errors)
            )
        files[f"{node.hostname}/cluster-config.json"] = json_text(doc)
    return files
