"""Stratum-1 replication: mirror a repository from its source into another storage.

The names below are imported on first use (PEP 562), so that importing one submodule (the
configuration, say) does not import the whole replication machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycvmfs.replica.config import ReplicaConfig
    from pycvmfs.replica.snapshot import SnapshotReport, snapshot, snapshot_replica

__all__ = ["ReplicaConfig", "SnapshotReport", "snapshot", "snapshot_replica"]

_HOMES = {"ReplicaConfig": "pycvmfs.replica.config", "SnapshotReport": "pycvmfs.replica.snapshot",
          "snapshot": "pycvmfs.replica.snapshot", "snapshot_replica": "pycvmfs.replica.snapshot"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
