"""Fixtures for stratum-1 tests: snapshots over real loopback HTTP, small published sources."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.replica.snapshot import SnapshotReport, snapshot
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

from helpers.replica import GOLDEN_FQRN, SOURCE_FQRN


@pytest.fixture
def replicate(golden_keys: Path) -> Callable[..., SnapshotReport]:
    """``replicate(url, dest, state, keys=..., fqrn=..., **kw)``: one snapshot via the API."""

    def run(url: str, dest: Path, state: Path, *, keys=None, fqrn: str = GOLDEN_FQRN,
            **kw) -> SnapshotReport:
        src = HttpSource([url], pool_size=16, timeout=5.0)
        store = LocalStorage(dest, fsync=False)
        try:
            return snapshot(src, store, fqrn, [keys or golden_keys], state_dir=state, **kw)
        finally:
            src.close()

    return run


@pytest.fixture(scope="session")
def golden_replica(golden_server, golden_keys: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SnapshotReport]:
    """The golden repository replicated once with all tags (read-only for the tests)."""
    base = tmp_path_factory.mktemp("golden-replica")
    src = HttpSource([f"{golden_server.url}/{GOLDEN_FQRN}"], pool_size=16)
    dest = base / GOLDEN_FQRN
    report = snapshot(src, LocalStorage(dest, fsync=False), GOLDEN_FQRN, [golden_keys],
                      state_dir=base / "state", all_tags=True)
    src.close()
    return dest, report


@pytest.fixture
def source_repo(tmp_path: Path) -> Publisher:
    """A fresh stratum 0 made by our publisher (small chunks), with a first revision."""
    settings = ServerSettings()
    settings.chunking = ChunkingParams(65536, 131072, 262144)
    pub = Publisher.mkfs(SOURCE_FQRN, tmp_path / "s0" / SOURCE_FQRN,
                         config_dir=tmp_path / "s0-etc", settings=settings)
    with pub.transaction() as txn:
        for i in range(40):
            txn.add_file(f"/first/file{i:03d}.txt", f"first revision file {i}\n".encode() * 50)
        txn.add_file("/first/big.bin", bytes(range(256)) * 2048)  # chunked (512 KiB)
    return pub
