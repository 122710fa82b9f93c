"""Snapshots from a hostile mirror (no key; the real signed files except for a few answers): a
catalog that inflates past its recorded size and an object body that never ends are cut off at
their size, named in the error, leave nothing partial, and a second server completes the copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.errors import SizeLimitError
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

from helpers.hostile import endless, finishes_within, zlib_bomb

FQRN = "golden.example.org"
MiB = 1 << 20


@pytest.fixture(scope="module")
def targets(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """URL paths of the nested catalog and of README.txt's object, with their sizes."""
    with open_repository(str(golden_dir / FQRN), keys=[golden_dir / "keys"],
                         cache_dir=tmp_path_factory.mktemp("facts")) as repo, \
            repo.open_revision() as view:
        nested = {r.path: r for r in view.root_catalog.nested_catalogs()}[b"/nested"]
        readme = view.lstat("/README.txt").entry
        return {"catalog": f"/{FQRN}/{nested.hash.object_path(ObjectKind.CATALOG)}",
                "catalog_name": f"{nested.hash}C", "catalog_size": nested.size,
                "file": f"/{FQRN}/{readme.hash.object_path(ObjectKind.FILE)}",
                "file_name": str(readme.hash), "file_size": readme.size}


def _partial_files(*folders: Path) -> list[str]:
    """Temporary files a snapshot could leave: its pull.* downloads and the store's txn."""
    found = []
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            found += [os.path.join(root, f) for f in files
                      if f.startswith("pull.") or os.path.basename(root) == "txn"]
    return found


def _snapshot(urls: list[str], keys: Path, tmp_path: Path):
    source = HttpSource([f"{u}/{FQRN}" for u in urls], timeout=5.0)
    dest = LocalStorage(tmp_path / "replica", fsync=False)
    return finishes_within(120, lambda: snapshot(source, dest, FQRN, [keys],
                                                 state_dir=tmp_path / "state", workers=4))


@pytest.mark.parametrize("what", ["catalog", "file"])
def test_a_bomb_or_an_endless_body_is_cut_off_at_its_size(mirror, targets, golden_keys,
                                                          tmp_path, what):
    # a 1 GiB zlib bomb for the nested catalog (recorded: 16 KiB), an endless body for a
    # 45-byte file (stored bytes, copied by the compiled engine, then again by the pool)
    mirror.answers[targets[what]] = zlib_bomb(1 << 30) if what == "catalog" else endless()
    with pytest.raises(SizeLimitError) as err:
        _snapshot([mirror.url], golden_keys, tmp_path)
    assert targets[f"{what}_name"] in str(err.value)
    assert f"size limit of {targets[f'{what}_size']} bytes" in str(err.value)
    assert _partial_files(tmp_path) == []
    assert not (tmp_path / "replica" / ".cvmfspublished").exists()
    assert not (tmp_path / "replica" / targets[what].split("/", 2)[2]).exists()
    # each try stopped reading: the engine's, then the pool's plain and no-cache ones
    assert mirror.sent[targets[what]] < 4 * (2 * MiB + 8 * MiB)


def test_a_second_server_completes_the_snapshot(mirror, golden_server, targets, golden_keys,
                                                golden_repo, tmp_path):
    mirror.answers[targets["catalog"]] = zlib_bomb(1 << 30)
    mirror.answers[targets["file"]] = endless()
    report = _snapshot([mirror.url, golden_server.url], golden_keys, tmp_path)
    assert report.objects_fetched > 100
    for what in ("catalog", "file"):
        rel = targets[what].split("/", 2)[2]
        assert (tmp_path / "replica" / rel).read_bytes() == (golden_repo / rel).read_bytes()
    assert _partial_files(tmp_path) == []


def test_pycvmfs_snapshot_reports_the_cut_off_by_name(mirror, targets, golden_keys, tmp_path):
    mirror.answers[targets["catalog"]] = zlib_bomb(1 << 30)
    cmd = [sys.executable, "-m", "pycvmfs.cli.main", "snapshot", f"{mirror.url}/{FQRN}",
           str(tmp_path / "replica"), "-k", str(golden_keys), "--state-dir",
           str(tmp_path / "state"), "--timeout", "5", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert targets["catalog_name"] in proc.stderr
    assert f"size limit of {targets['catalog_size']} bytes" in proc.stderr
    assert _partial_files(tmp_path) == []
    with pytest.raises(json.JSONDecodeError):  # no report of a snapshot that did not happen
        json.loads(proc.stdout or "x")
