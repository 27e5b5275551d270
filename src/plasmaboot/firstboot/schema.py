"""The ``cluster-config.json`` contract between the renderer and the first-boot agent.

It starts from the seeds' draft-07 schema and makes it precise: the seeds' raft_addr pattern
(``^[0-9.]+:[0-9]+$``) accepts ``999.1:0``, their ``format: uri`` is silently ignored by
validators without a format plugin, and unknown keys were accepted, so a typo such as
``leader_ulr`` went unnoticed. Here every address has a real pattern, URLs must be http(s),
unknown keys are refused and bootstrap nodes must name their initial peers.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft7Validator, FormatChecker

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"{_LABEL}(\.{_LABEL})*"

RAFT_ADDR_PATTERN = rf"^{_IPV4}:{_PORT}$"
PEER_PATTERN = rf"^({_IPV4}|{_HOSTNAME}):{_PORT}$"
HTTP_URL_PATTERN = r"^https?://[^\s/?#@]+(:[0-9]{1,5})?(/[^\s]*)?$"
NODE_ID_PATTERN = rf"^{_LABEL}$"
ABSOLUTE_PATH_PATTERN = r"^/[^\0]*$"

_URL: dict[str, Any] = {"type": "string", "format": "uri", "pattern": HTTP_URL_PATTERN}
_RAFT_ADDR: dict[str, Any] = {
    "type": "string",
    "pattern": RAFT_ADDR_PATTERN,
    "description": "IPv4:port this node's consensus peer listener uses",
}
_PEER_LIST: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"type": "string", "pattern": PEER_PATTERN},
    "description": "host:port peer addresses (host = node name, FQDN or IPv4)",
}
_PATH: dict[str, Any] = {"type": "string", "pattern": ABSOLUTE_PATH_PATTERN}

CLUSTER_CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://plasmaboot.invalid/schemas/cluster-config.json",
    "title": "plasmaboot first-boot cluster configuration",
    "type": "object",
    "additionalProperties": False,
    "required": ["node_id", "node_role", "bootstrap", "cluster_name", "leader_url", "raft_addr"],
    "properties": {
        "node_id": {
            "type": "string",
            "pattern": NODE_ID_PATTERN,
            "description": "Unique node identifier (a DNS label, e.g. node01)",
        },
        "node_role": {"type": "string", "enum": ["control-plane", "worker", "all-in-one"]},
        "bootstrap": {"type": "boolean", "description": "True for the first 3 nodes"},
        "cluster_name": {"type": "string", "minLength": 1, "pattern": r"^[A-Za-z0-9._-]+$"},
        "cluster_backend": {
            "type": "string",
            "enum": ["chainfire", "etcd"],
            "default": "chainfire",
            "description": "Membership API: chainfire HTTP admin API or etcd v3",
        },
        "leader_url": {**_URL, "description": "Client URL of the current leader (port 2379)"},
        "raft_addr": _RAFT_ADDR,
        "client_url": {**_URL, "description": "Local service client URL (default: raft host:2379)"},
        "member_urls": {
            "type": "array",
            "uniqueItems": True,
            "items": _URL,
            "description": "Other client URLs to try when the leader is unreachable",
        },
        "initial_peers": _PEER_LIST,
        "flaredb_enabled": {"type": "boolean", "default": True},
        "flaredb_leader_url": {**_URL, "description": "default: leader_url with port 2479"},
        "flaredb_raft_addr": {**_RAFT_ADDR, "description": "default: raft host with port 2480"},
        "flaredb_client_url": {**_URL, "description": "default: raft host with port 2479"},
        "flaredb_member_urls": {"type": "array", "uniqueItems": True, "items": _URL},
        "flaredb_peers": _PEER_LIST,
        "iam_health_url": _URL,
        "iam_setup_command": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 1},
            "description": "argv of the IAM initial-setup hook, run once",
        },
        "tls": {
            "type": "object",
            "additionalProperties": False,
            "required": ["enabled"],
            "properties": {
                "enabled": {"type": "boolean"},
                "ca_cert_path": _PATH,
                "node_cert_path": _PATH,
                "node_key_path": _PATH,
            },
            "if": {"properties": {"enabled": {"const": True}}},
            "then": {"required": ["ca_cert_path", "node_cert_path", "node_key_path"]},
        },
        "plasmaboot_url": {**_URL, "description": "plasmaboot server base URL for stage reports"},
        "agent_token": {
            "type": "string",
            "minLength": 16,
            "description": "Bearer token for the agent API (secret, never logged)",
        },
        "health_timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 120},
        "join_max_attempts": {
            "type": "integer",
            "minimum": 1,
            "default": 5,
            "description": "Join attempts while no member answers at all",
        },
        "catch_up_timeout_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 120,
            "description": "How long a busy cluster (5xx, one learner at a time) and the "
            "new member's catch-up are waited for",
        },
        "retry_base_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 1,
            "description": "First backoff delay; doubles per attempt with full jitter",
        },
        "retry_cap_s": {"type": "number", "exclusiveMinimum": 0, "default": 30},
    },
    "allOf": [
        {
            "if": {"properties": {"bootstrap": {"const": True}}, "required": ["bootstrap"]},
            "then": {"required": ["initial_peers"]},
        },
        {
            "if": {"required": ["plasmaboot_url"]},
            "then": {"required": ["agent_token"]},
        },
    ],
}

_PATTERN_HINTS = {
    RAFT_ADDR_PATTERN: "expected IPv4:port, e.g. 10.0.200.10:2380",
    PEER_PATTERN: "expected host:port, e.g. node01.example.com:2380",
    HTTP_URL_PATTERN: "expected an http(s) URL, e.g. https://node01.example.com:2379",
    NODE_ID_PATTERN: "expected a DNS label (letters, digits, '-'), e.g. node01",
    ABSOLUTE_PATH_PATTERN: "expected an absolute path, e.g. /etc/nixos/secrets/ca.crt",
}
_REQUIRED = re.compile(r"^'(?P<name>[^']+)' is a required property$")

_VALIDATOR = Draft7Validator(CLUSTER_CONFIG_SCHEMA, format_checker=FormatChecker())


def _json_path(parts: list[str | int]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_cluster_config(doc: Any) -> list[str]:
    """Return every schema violation as ``"$.json.path: message"``; empty means valid.

    All errors are returned at once so an operator fixes the file in one pass.
    """
    errors = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    messages: list[str] = []
    for error in errors:
        where = _json_path(list(error.absolute_path))
        missing = _REQUIRED.match(error.message)
        if missing:
            messages.append(f"{where}.{missing['name']}: required property is missing")
        elif error.validator == "pattern":
            pattern = str(error.validator_value)
            hint = _PATTERN_HINTS.get(pattern, f"must match {pattern}")
            messages.append(f"{where}: {error.instance!r} is invalid: {hint}")
        else:
            messages.append(f"{where}: {error.message}")
    return messages
