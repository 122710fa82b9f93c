"""Publish progress: a tree sync announces its total bytes before the first file is read, and
reports bytes done up to exactly that total; a tar archive reports its own bytes read."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from helpers.progress import ProgressRecorder


def make_tree(root: Path, files: int) -> int:
    """``files`` files of different sizes in a few directories; their total size."""
    total = 0
    for i in range(files):
        d = root / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(100 + (i * 7919) % 50_000)
        (d / f"f{i}").write_bytes(data)
        total += len(data)
    (root / "empty").write_bytes(b"")
    os.symlink("d0", root / "link")
    return total


def assert_counts_to(seen: list[tuple[int, int | None]], total: int) -> None:
    """Every report names the final total; bytes done never go back and end at the total."""
    assert seen, "no progress reported"
    assert {t for _d, t in seen} == {total}
    done = [d for d, _t in seen]
    assert done == sorted(done)
    assert done[-1] == total


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_tree_sync_reports_bytes_of_a_total_known_first(make_publisher, tmp_path, processes):
    pub = make_publisher(ingest_processes=processes)
    src = tmp_path / "src"
    files = 400 if processes else 60  # worker processes start after 256 files
    total = make_tree(src, files)
    rec = ProgressRecorder()
    with pub.transaction(progress=rec) as txn:
        txn.add_tree(src, "/")
    assert txn.summary.bytes_in == total
    assert_counts_to(rec.stage("ingesting"), total)
    scans = rec.stage("scanning")
    assert scans[-1] == (files + 1, files + 1)  # (the empty file too)
    first_ingest = next(i for i, c in enumerate(rec.calls) if c[0] == "ingesting")
    last_scan = max(i for i, c in enumerate(rec.calls) if c[0] == "scanning")
    assert last_scan < first_ingest, "bytes were reported before the scan knew the total"

    # a second sync of a few changed files counts only those
    changed = sorted(src.rglob("f1*"))[:5]
    size = 0
    for p in changed:
        data = os.urandom(3000)
        p.write_bytes(data)
        size += len(data)
    rec = ProgressRecorder()
    with pub.transaction(progress=rec) as txn:
        txn.add_tree(src, "/")
    assert_counts_to(rec.stage("ingesting"), size)


def test_add_file_announces_its_bytes(publisher, tmp_path):
    local = tmp_path / "blob"
    local.write_bytes(os.urandom(70_000))
    rec = ProgressRecorder()
    with publisher.transaction(progress=rec) as txn:
        txn.add_file("/a", local)
        txn.add_file("/b", b"x" * 1234)
    seen = rec.stage("ingesting")
    assert max(d for d, _t in seen) == 70_000 + 1234
    assert all(t is not None and d <= t for d, t in seen)
    assert seen[-1][1] == 70_000 + 1234


def make_tar(path: Path, members: int) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for i in range(members):
            data = os.urandom(1000 + 37 * i)
            ti = tarfile.TarInfo(f"dir{i % 4}/m{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_tarball_reports_archive_bytes_read_of_its_size(publisher, tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, 200)
    rec = ProgressRecorder()
    with publisher.transaction(progress=rec) as txn:
        txn.add_tarball(archive, "/t")
    assert_counts_to(rec.stage("reading"), archive.stat().st_size)
    assert len(rec.stage("reading")) > 100  # reported as members are read, not only at the end


def test_tarball_from_a_pipe_reports_bytes_without_a_total(publisher, tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_tar(archive, 20)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, archive.read_bytes()), os.close(w)))
    writer.start()
    rec = ProgressRecorder()
    try:
        with open(r, "rb") as stream, publisher.transaction(progress=rec) as txn:
            txn.add_tarball(stream, "/t")
    finally:
        writer.join()
    seen = rec.stage("reading")
    assert {t for _d, t in seen} == {None}
    assert seen[-1][0] == archive.stat().st_size
