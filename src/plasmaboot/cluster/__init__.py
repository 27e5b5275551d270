"""Operator checks on a running cluster: members, leader, health and certificate expiry."""

from plasmaboot.cluster.verify import ClusterReport, verify_cluster

__all__ = ["ClusterReport", "verify_cluster"]
