"""Load ``cluster-config.json`` and derive one plan per consensus service.

The seeds give FlareDB only a peer list; its leader, raft and client addresses follow the
port matrix (2479/2480 next to Chainfire's 2379/2380 on the same hosts), so they are derived
here unless the config names them explicitly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from plasmaboot.firstboot.schema import validate_cluster_config

BackendKind = Literal["chainfire", "etcd"]


class ConfigError(Exception):
    """The config file is missing, not JSON or violates the schema; ``errors`` lists all."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        super().__init__(f"{path}: invalid cluster config: " + "; ".join(errors))
        self.path = path
        self.errors = errors


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    node_cert: Path
    node_key: Path


@dataclass(frozen=True)
class ServicePlan:
    """Everything the agent needs to bootstrap or join one consensus service."""

    service: str
    backend: BackendKind
    node_id: str
    bootstrap: bool
    leader_url: str
    member_urls: tuple[str, ...]
    client_url: str
    raft_addr: str
    initial_peers: tuple[str, ...]

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.raft_addr}"

    @property
    def scheme(self) -> str:
        return urlsplit(self.client_url).scheme

    def candidate_urls(self) -> list[str]:
        """Leader first, then every other known member; used when the leader is down."""
        return list(dict.fromkeys([self.leader_url, *self.member_urls]))


@dataclass(frozen=True)
class FirstBootConfig:
    node_id: str
    cluster_name: str
    services: tuple[ServicePlan, ...]
    tls: TLSFiles | None
    iam_health_url: str | None
    iam_setup_command: tuple[str, ...]
    plasmaboot_url: str | None
    agent_token: str | None
    health_timeout_s: float
    join_max_attempts: int
    catch_up_timeout_s: float
    retry_base_s: float
    retry_cap_s: float


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))


def _host(addr: str) -> str:
    return addr.rsplit(":", 1)[0]


def _swap_port(addr: str, port: int) -> str:
    return f"{_host(addr)}:{port}"


def _peer_to_client(peers: list[str], scheme: str, port: int) -> list[str]:
    return [f"{scheme}://{_host(peer)}:{port}" for peer in peers]


def build_config(doc: dict[str, Any]) -> FirstBootConfig:
    """Turn a schema-valid document into plans (call ``validate_cluster_config`` first)."""
    backend: BackendKind = doc.get("cluster_backend", "chainfire")
    scheme = urlsplit(doc["leader_url"]).scheme
    raft_addr: str = doc["raft_addr"]
    initial_peers = list(doc.get("initial_peers", []))
    chainfire = ServicePlan(
        service="chainfire",
        backend=backend,
        node_id=doc["node_id"],
        bootstrap=doc["bootstrap"],
        leader_url=doc["leader_url"],
        member_urls=tuple(doc.get("member_urls", _peer_to_client(initial_peers, scheme, 2379))),
        client_url=doc.get("client_url", f"{scheme}://{_swap_port(raft_addr, 2379)}"),
        raft_addr=raft_addr,
        initial_peers=tuple(initial_peers),
    )
    services = [chainfire]
    if doc.get("flaredb_enabled", True):
        flaredb_raft = doc.get("flaredb_raft_addr", _swap_port(raft_addr, 2480))
        flaredb_peers = list(doc.get("flaredb_peers", []))
        services.append(
            ServicePlan(
                service="flaredb",
                backend=backend,
                node_id=doc["node_id"],
                bootstrap=doc["bootstrap"],
                leader_url=doc.get("flaredb_leader_url", _with_port(doc["leader_url"], 2479)),
                member_urls=tuple(
                    doc.get("flaredb_member_urls", _peer_to_client(flaredb_peers, scheme, 2479))
                ),
                client_url=doc.get(
                    "flaredb_client_url", f"{scheme}://{_swap_port(flaredb_raft, 2479)}"
                ),
                raft_addr=flaredb_raft,
                initial_peers=tuple(flaredb_peers),
            )
        )
    tls_doc = doc.get("tls", {})
    tls = (
        TLSFiles(
            Path(tls_doc["ca_cert_path"]),
            Path(tls_doc["node_cert_path"]),
            Path(tls_doc["node_key_path"]),
        )
        if tls_doc.get("enabled")
        else None
    )
    return FirstBootConfig(
        node_id=doc["node_id"],
        cluster_name=doc["cluster_name"],
        services=tuple(services),
        tls=tls,
        iam_health_url=doc.get("iam_health_url"),
        iam_setup_command=tuple(doc.get("iam_setup_command", ())),
        plasmaboot_url=doc.get("plasmaboot_url"),
        agent_token=doc.get("agent_token"),
        health_timeout_s=float(doc.get("health_timeout_s", 120)),
        join_max_attempts=int(doc.get("join_max_attempts", 5)),
        catch_up_timeout_s=float(doc.get("catch_up_timeout_s", 120)),
        retry_base_s=float(doc.get("retry_base_s", 1.0)),
        retry_cap_s=float(doc.get("retry_cap_s", 30.0)),
    )


def load_config(path: Path) -> FirstBootConfig:
    """Read, validate and plan; raises ``ConfigError`` listing every problem at once."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(path, ["file not found; pass --config PATH"]) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(path, [f"line {exc.lineno} column {exc.colno}: {exc.msg}"]) from exc
    errors = validate_cluster_config(doc)
    if errors:
        raise ConfigError(path, errors)
    return build_config(doc)
