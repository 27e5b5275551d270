"""Cluster membership backends behind one interface: etcd v3 and the chainfire admin API."""

from plasmaboot.firstboot.backends.base import (
    ClusterBackend,
    ClusterBusy,
    ClusterUnreachable,
    JoinOutcome,
    JoinPolicy,
    Member,
    MembershipError,
    make_backend,
)

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
