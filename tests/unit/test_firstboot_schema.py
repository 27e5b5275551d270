"""cluster-config.json schema: the runbook's own examples pass, every mistake is named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from plasmaboot.firstboot.config import build_config
from plasmaboot.firstboot.schema import CLUSTER_CONFIG_SCHEMA, validate_cluster_config

RUNBOOK_NODE01: dict[str, Any] = {
    "node_id": "node01",
    "node_role": "control-plane",
    "bootstrap": True,
    "cluster_name": "prod-cluster",
    "leader_url": "https://node01.example.com:2379",
    "raft_addr": "10.0.200.10:2380",
    "initial_peers": [
        "node01.example.com:2380",
        "node02.example.com:2380",
        "node03.example.com:2380",
    ],
    "flaredb_peers": [
        "node01.example.com:2480",
        "node02.example.com:2480",
        "node03.example.com:2480",
    ],
}
RUNBOOK_NODE04: dict[str, Any] = {
    "node_id": "node04",
    "node_role": "worker",
    "bootstrap": False,
    "cluster_name": "prod-cluster",
    "leader_url": "https://node01.example.com:2379",
    "raft_addr": "10.0.200.20:2380",
}


def test_schema_is_draft_07() -> None:
    assert CLUSTER_CONFIG_SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize("doc", [RUNBOOK_NODE01, RUNBOOK_NODE04])
def test_runbook_examples_are_valid(doc: dict[str, Any]) -> None:
    assert validate_cluster_config(doc) == []


def test_full_config_with_tls_reporting_and_flaredb_addresses_is_valid() -> None:
    doc = {
        **RUNBOOK_NODE04,
        "cluster_backend": "etcd",
        "member_urls": ["https://10.0.200.11:2379"],
        "flaredb_leader_url": "https://node01.example.com:2479",
        "flaredb_raft_addr": "10.0.200.20:2480",
        "tls": {
            "enabled": True,
            "ca_cert_path": "/etc/nixos/secrets/ca.crt",
            "node_cert_path": "/etc/nixos/secrets/node04.crt",
            "node_key_path": "/etc/nixos/secrets/node04.key",
        },
        "plasmaboot_url": "http://10.0.100.1:8080",
        "agent_token": "0123456789abcdef0123",
        "iam_setup_command": ["/run/current-system/sw/bin/iam-setup"],
    }
    assert validate_cluster_config(doc) == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("raft_addr", "999.1.1.1:2380", "$.raft_addr: '999.1.1.1:2380' is invalid: expected IPv4"),
        ("raft_addr", "10.0.0.1:0", "$.raft_addr"),
        ("raft_addr", "node01:2380", "$.raft_addr"),
        ("leader_url", "node01:2379", "$.leader_url: 'node01:2379' is invalid: expected an http"),
        ("node_role", "storage", "$.node_role: 'storage' is not one of"),
        ("node_id", "node_01", "$.node_id"),
        ("bootstrap", "yes", "$.bootstrap: 'yes' is not of type 'boolean'"),
        ("initial_peers", ["node01:99999"], "$.initial_peers[0]"),
        ("initial_peers", [], "$.initial_peers: [] should be non-empty"),
    ],
)
def test_each_invalid_field_is_named_with_its_json_path(
    field: str, value: Any, expected: str
) -> None:
    doc = copy.deepcopy(RUNBOOK_NODE01)
    doc[field] = value
    errors = validate_cluster_config(doc)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected)


def test_every_error_is_reported_at_once() -> None:
    doc = {"node_id": "node01", "leader_ulr": "https://x:2379", "bootstrap": True}
    errors = validate_cluster_config(doc)
    assert "$: Additional properties are not allowed ('leader_ulr' was unexpected)" in errors
    for missing in ("node_role", "cluster_name", "leader_url", "raft_addr", "initial_peers"):
        assert f"$.{missing}: required property is missing" in errors


def test_enabled_tls_needs_all_three_paths_and_reporting_needs_a_token() -> None:
    doc = {
        **RUNBOOK_NODE04,
        "tls": {"enabled": True, "ca_cert_path": "relative/ca.crt"},
        "plasmaboot_url": "https://pxe.example.com",
    }
    errors = validate_cluster_config(doc)
    assert "$.tls.node_cert_path: required property is missing" in errors
    assert "$.tls.node_key_path: required property is missing" in errors
    assert any(e.startswith("$.tls.ca_cert_path: 'relative/ca.crt' is invalid") for e in errors)
    assert "$.agent_token: required property is missing" in errors


def test_flaredb_addresses_default_to_the_port_matrix() -> None:
    config = build_config(RUNBOOK_NODE01)
    chainfire, flaredb = config.services
    assert chainfire.client_url == "https://10.0.200.10:2379"
    assert chainfire.member_urls[1] == "https://node02.example.com:2379"
    assert flaredb.leader_url == "https://node01.example.com:2479"
    assert flaredb.raft_addr == "10.0.200.10:2480"
    assert flaredb.peer_url == "https://10.0.200.10:2480"
    assert flaredb.member_urls[2] == "https://node03.example.com:2479"
    assert build_config({**RUNBOOK_NODE04, "flaredb_enabled": False}).services == (
        build_config(RUNBOOK_NODE04).services[0],
    )
