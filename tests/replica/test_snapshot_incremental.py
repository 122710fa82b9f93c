"""Incremental snapshots after publishes on the source, and a snapshot killed half-way."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pycvmfs.client.repository import open_repository
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.publish.repository import Publisher

from helpers.replica import SOURCE_FQRN, data_files, recording_handler

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


def _serve(pub: Publisher, http_server, delay: float = 0.0):
    handler = recording_handler(delay)
    srv = http_server(pub.config.storage.parent, handler)
    return f"{srv.url}/{SOURCE_FQRN}", handler


def _requested_objects(handler) -> set[str]:
    prefix = f"/{SOURCE_FQRN}/"
    return {p[len(prefix):] for p in handler.requests if p.startswith(prefix + "data/")}


def _read_everything(path: Path, key: Path, cache: Path) -> dict[str, str]:
    """Every file of the current revision, read and verified through the client."""
    out = {}
    with open_repository(str(path), keys=[key], fqrn=SOURCE_FQRN, cache_dir=cache) as repo, \
            repo.open_revision() as view:
        for _d, _dirs, files in view.walk("/"):
            for s in files:
                if s.is_file:
                    out[s.path] = hashlib.sha1(view.read_bytes(s.path)).hexdigest()
    return out


def test_incremental_snapshot_copies_exactly_the_new_objects(source_repo, http_server, replicate,
                                                             tmp_path):
    url, handler = _serve(source_repo, http_server)
    key = source_repo.config.key_path("pub")
    storage = source_repo.config.storage
    dest, state = tmp_path / "replica", tmp_path / "state"
    first = replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    assert first.initial and first.objects_fetched > 40
    before_src, before_dst = data_files(storage), data_files(dest)

    with source_repo.transaction() as txn:
        txn.add_file("/second/.cvmfscatalog", b"")  # a new nested catalog
        for i in range(10):
            txn.add_file(f"/second/new{i}.txt", f"new in revision 3: {i}\n".encode() * 30)
        txn.add_file("/first/file000.txt", b"changed in revision 3\n")
        txn.remove("/first/file001.txt")
    new_src = data_files(storage) - before_src
    handler.requests.clear()
    second = replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)

    new_dst = data_files(dest) - before_dst
    assert new_dst == new_src  # catalogs, history and data objects: all new, nothing else
    assert _requested_objects(handler) == new_src  # nothing already there was downloaded
    kinds = [p[-1] for p in new_src]
    assert second.catalogs_fetched == kinds.count("C") == 2  # new root and /second
    assert second.objects_fetched == len(new_src) - kinds.count("C") - kinds.count("H")
    assert second.objects_present == 0 and second.previous_revision == first.revision
    assert second.revision == first.revision + 1
    assert _read_everything(dest, key, tmp_path / "c1") == _read_everything(
        storage, key, tmp_path / "c2")


def test_several_publishes_between_snapshots_walk_the_revision_chain(source_repo, http_server,
                                                                     replicate, tmp_path):
    url, _handler = _serve(source_repo, http_server)
    key = source_repo.config.key_path("pub")
    storage = source_repo.config.storage
    dest, state = tmp_path / "replica", tmp_path / "state"
    replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    before_src = data_files(storage)
    middle_history = []
    for rev in range(3):
        with source_repo.transaction() as txn:
            txn.add_file(f"/rev{rev}.txt", f"publish {rev}\n".encode())
        middle_history.append(source_repo.head().history)
    report = replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    new_src = data_files(storage) - before_src
    copied = data_files(dest)
    # every intermediate root catalog and its objects are copied; of the history databases
    # only the current one (as stock stratum 1s do)
    skipped = {h.object_path(ObjectKind.HISTORY) for h in middle_history[:2]}
    assert new_src - copied == skipped
    assert report.catalogs_fetched == 3
    with open_repository(str(dest), keys=[key], fqrn=SOURCE_FQRN,
                         cache_dir=tmp_path / "c") as repo:
        for rev in range(report.revision - 3, report.revision + 1):
            with repo.open_revision(revision=rev) as view:
                assert view.root_catalog.revision == rev


def test_killed_snapshot_keeps_the_old_revision_and_resumes(source_repo, http_server, replicate,
                                                            tmp_path):
    key = source_repo.config.key_path("pub")
    url, handler = _serve(source_repo, http_server, delay=0.02)
    dest, state = tmp_path / "replica", tmp_path / "state"
    handler.delay = 0.0
    replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    old_manifest = (dest / ".cvmfspublished").read_bytes()
    old_files = _read_everything(dest, key, tmp_path / "c0")
    with source_repo.transaction() as txn:
        for i in range(300):
            txn.add_file(f"/bulk/f{i:03d}.txt", f"bulk file {i}\n".encode() * 20)
    before = len(data_files(dest))

    handler.delay = 0.02  # ~4 workers x 50 objects/s: the run takes a few seconds
    proc = subprocess.Popen([*CLI, "snapshot", url, str(dest), "-k", str(key), "--fqrn",
                             SOURCE_FQRN, "--state-dir", str(state), "--workers", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(data_files(dest)) < before + 60:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the snapshot made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    # the replica still serves the old revision, completely and verified
    assert (dest / ".cvmfspublished").read_bytes() == old_manifest
    assert (dest / ".cvmfs_is_snapshotting").exists()  # a stale marker, as after any crash
    assert _read_everything(dest, key, tmp_path / "c1") == old_files
    there = data_files(dest)
    assert before + 60 <= len(there) < before + 300
    for rel in there:  # only whole, verified objects under their names
        name = rel[len("data/"):].replace("/", "", 1)
        assert hashlib.sha1((dest / rel).read_bytes()).hexdigest() == name[:40], rel

    handler.delay = 0.0
    handler.requests.clear()
    report = replicate(url, dest, state, keys=key, fqrn=SOURCE_FQRN)
    assert not _requested_objects(handler) & there  # resume does not re-fetch
    assert report.objects_fetched + report.objects_present == 300
    assert report.objects_present == len(there) - before - 1  # the history db came first
    assert not (dest / ".cvmfs_is_snapshotting").exists()
    new_files = _read_everything(dest, key, tmp_path / "c2")
    assert len(new_files) == len(old_files) + 300
    assert new_files == _read_everything(source_repo.config.storage, key, tmp_path / "c3")
