"""cluster-config.json per node: what the first-boot agent reads to bootstrap or join.

Peers are written as IPv4:port (the node's raft address), not `nodeXX:2380`: the Raft
listener advertises its IP, and a first boot must not depend on DNS that the cluster itself
is about to provide. `leader_url` stays the first bootstrap node's FQDN (certificates carry
DNS and IP SANs, so either verifies); `member_urls` add IP-based fallbacks for joiners.

First boot waits for its peers as long as the server waits for it: a bootstrap member's
store is healthy only once a quorum of the others is installed and booted, and a joiner
needs a formed cluster, so `health_timeout_s` and `join_max_attempts` (full-jitter
backoff capped at `retry_cap_s`: half of it apart on average) fill the `joining` deadline
of the inventory, less a minute for the report.

`cluster_backend` follows the inventory's `cluster.store`. etcd stands in for Chainfire on
the same ports and URLs; it has no FlareDB (the inventory refuses flaredb with it), so its
documents say `flaredb_enabled: false`.
"""

from __future__ import annotations

from typing import Any

from plasmaboot.firstboot.schema import validate_cluster_config
from plasmaboot.inventory.deadlines import deadlines_for
from plasmaboot.inventory.models import Inventory, Node
from plasmaboot.lifecycle import State
from plasmaboot.render.common import (
    SECRETS_DIR,
    Files,
    RenderContext,
    RenderError,
    base_url,
    bootstrap_nodes,
    cluster_ip,
    json_text,
    services_of,
)

CHAINFIRE_CLIENT, CHAINFIRE_RAFT = 2379, 2380
FLAREDB_CLIENT, FLAREDB_RAFT = 2479, 2480
IAM_PORT = 8080


def tls_paths(node: Node) -> dict[str, str]:
    """Where a node's CA, certificate and key live (what `plasmaboot pki issue` writes)."""
    return {
        "ca_cert_path": f"{SECRETS_DIR}/ca.crt",
        "node_cert_path": f"{SECRETS_DIR}/{node.hostname}.crt",
        "node_key_path": f"{SECRETS_DIR}/{node.hostname}.key",
    }


def cluster_config(inv: Inventory, node: Node, agent_token: str | None = None) -> dict[str, Any]:
    """The document for one node, in the seeds' field order.

    With `agent_token` (the server, assembling a node's files at install time) it also names
    `plasmaboot_url`, where the agent reports its stages. The schema wants the two together
    and no token exists when files are rendered ahead of time, so those have neither.
    """
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
        "cluster_backend": inv.cluster.store,
        "leader_url": f"https://{leader}:{CHAINFIRE_CLIENT}",
        "raft_addr": f"{ip}:{CHAINFIRE_RAFT}",
    }
    if node.bootstrap:
        doc["initial_peers"] = [f"{cluster_ip(inv, n)}:{CHAINFIRE_RAFT}" for n in seeds]
    else:
        doc["member_urls"] = [f"https://{cluster_ip(inv, n)}:{CHAINFIRE_CLIENT}" for n in seeds]
    flaredb = "flaredb" in services  # never with etcd: the inventory refuses that
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
    doc["tls"] = {"enabled": True, **tls_paths(node)}
    doc.update(first_boot_waits(inv))
    if agent_token is not None:
        doc["plasmaboot_url"] = base_url(inv)
        doc["agent_token"] = agent_token
    return doc


RETRY_CAP_S = 30


def first_boot_waits(inv: Inventory) -> dict[str, float | int]:
    """How long first boot waits for its store and its peers: the `joining` deadline."""
    wait = max(120.0, deadlines_for(inv)[State.JOINING] - 60)
    return {
        "health_timeout_s": wait,
        "retry_cap_s": RETRY_CAP_S,
        "join_max_attempts": max(5, int(wait // (RETRY_CAP_S / 2))),
    }


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
