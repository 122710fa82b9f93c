"""Stratum-1 replication: mirror a repository from its source into another storage.

:mod:`pycvmfs.replica.snapshot` is light (the verified machinery is imported when a snapshot
has something to copy), so its names are imported here directly: importing the submodule
``pycvmfs.replica.snapshot`` would otherwise replace a lazily provided ``snapshot`` function
by that module. The configuration is imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pycvmfs.replica.snapshot import SnapshotReport, snapshot, snapshot_replica

if TYPE_CHECKING:
    from pycvmfs.replica.config import ReplicaConfig

__all__ = ["ReplicaConfig", "SnapshotReport", "snapshot", "snapshot_replica"]


def __getattr__(name: str) -> Any:
    if name == "ReplicaConfig":
        return importlib.import_module("pycvmfs.replica.config").ReplicaConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
