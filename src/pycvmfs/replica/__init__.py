"""Stratum-1 replication: mirror a repository from its source into another storage."""

from pycvmfs.replica.config import ReplicaConfig
from pycvmfs.replica.snapshot import SnapshotReport, snapshot, snapshot_replica

__all__ = ["ReplicaConfig", "SnapshotReport", "snapshot", "snapshot_replica"]
