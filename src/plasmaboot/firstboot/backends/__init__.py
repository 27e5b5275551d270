"""Cluster membership backends behind one interface: etcd v3 and the chainfire admin API.

`make_backend` lives here, above both backends, so `base` never imports what builds on it.
"""

from pathlib import Path

import httpx

from plasmaboot.firstboot.backends.base import (
    ClusterBackend,
    ClusterBusy,
    ClusterUnreachable,
    JoinOutcome,
    JoinPolicy,
    Member,
    MembershipError,
)
from plasmaboot.firstboot.backends.chainfire import ChainfireBackend
from plasmaboot.firstboot.backends.etcd import EtcdBackend
from plasmaboot.firstboot.config import ServicePlan
from plasmaboot.firstboot.markers import DEFAULT_STATE_DIR, env_file_path


def make_backend(
    plan: ServicePlan,
    client: httpx.Client,
    policy: JoinPolicy | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
) -> ClusterBackend:
    """Pick the backend the config names (``state_dir`` receives etcd's env file)."""
    policy = policy or JoinPolicy()
    if plan.backend == "etcd":
        return EtcdBackend(client, policy, env_file=env_file_path(state_dir, plan.service))
    return ChainfireBackend(client, policy)


__all__ = [
    "ClusterBackend",
    "ClusterBusy",
    "ClusterUnreachable",
    "JoinOutcome",
    "JoinPolicy",
    "Member",
    "MembershipError",
    "make_backend",
]
