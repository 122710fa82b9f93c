"""Tree syncs big enough for the worker processes, and the batched catalog inserts at commit.

Each distinct content is compressed once whichever worker meets it (equal sizes go to one
worker, different contents of one size stay apart); new file entries are written in statement
batches that refuse what a single insert refuses.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import pytest

import pycvmfs.publish.transaction as transaction_mod
from pycvmfs.errors import FormatError, IngestError
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.publish.ingest import Ingester

from helpers.publishing import reader


def make_copies_tree(root: Path, distinct: int = 150, copies: int = 3) -> dict[str, bytes]:
    """``distinct`` contents below the chunking minimum, two of each size with other bytes,
    each written ``copies`` times under other names; returns path -> bytes."""
    files = {}
    for i in range(distinct):
        size = 1000 + (i // 2) * 300
        data = hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1)
        data = data[:size]
        for c in range(copies):
            files[f"d{c}/e{i % 9}/f{i}.bin"] = data
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_a_big_sync_compresses_each_distinct_content_once(make_publisher, tmp_path, processes,
                                                         monkeypatch):
    started = []
    real_start = Ingester.start_processes

    def start(self, count=None):
        real_start(self, count)
        started.append(len(self._procs))

    monkeypatch.setattr(Ingester, "start_processes", start)
    pub = make_publisher(ingest_processes=processes)
    src = tmp_path / "src"
    files = make_copies_tree(src)  # 450 files: over the worker processes' threshold
    with pub.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    s = txn.summary
    assert s.files == 450
    assert s.objects_new == 150 and s.objects_existing == 0
    assert s.objects_deduplicated == 300
    assert len(started) == (1 if processes else 0)  # started once, during the scan
    if processes and (os.cpu_count() or 1) > 1:
        assert started[0] > 1
    with reader(pub, tmp_path / "cache") as r, r.open_revision() as view:
        for rel, data in files.items():
            assert view.read_bytes(rel) == data, rel


def test_commit_writes_new_entries_in_batches(make_publisher, tmp_path, monkeypatch):
    monkeypatch.setattr(transaction_mod, "_BATCH", 7)
    pub = make_publisher()
    src = tmp_path / "src"
    files = {f"a{i % 4}/f{i:02d}": os.urandom(200 + i) for i in range(30)}
    files["big/chunked"] = os.urandom(600_000)  # chunked with the tests' 64/128/256 KiB
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    with pub.transaction() as txn:
        txn.add_tree(src, "/")
    assert txn.summary.entries_added == len(files) + 5  # and the five directories
    with reader(pub, tmp_path / "cache") as r, r.open_revision() as view:
        assert view.stat("big/chunked").is_chunked
        for rel, data in files.items():
            assert view.read_bytes(rel) == data, rel


def test_batched_inserts_refuse_a_present_path_and_a_file_parent(publisher):
    with publisher.transaction() as txn:
        txn.add_file("/a", b"a\n")
        txn.mkdir("/d")
    rev = publisher.head().revision

    class Abort(Exception):
        pass

    with pytest.raises(Abort), publisher.transaction() as txn:
        row = txn.tree.lookup(b"/a")
        with pytest.raises(FormatError, match="already present"):
            txn.tree.add_new([(b"/d/new", row, None), (b"/a", row, None)])
        assert txn.tree.lookup(b"/d/new") is None  # all or nothing
        with pytest.raises(FormatError, match="not a directory"):
            txn.tree.add_new([(b"/a/under-a-file", row, None)])
        with pytest.raises(FormatError):
            txn.tree.add_new([(b"/d", txn.tree.lookup(b"/d"), None)])  # directories: put()
        txn.tree.add_new([(b"/d/copy", row, None)])
        assert txn.tree.lookup(b"/d/copy") == row
        raise Abort
    assert publisher.head().revision == rev


def test_a_file_changed_after_the_scan_fails_the_sync_in_a_worker(make_publisher, tmp_path):
    pub = make_publisher(ingest_processes=True)
    src = tmp_path / "src"
    make_copies_tree(src)
    with pub.transaction() as txn:
        txn.add_tree(src, "/")
    rev = pub.head().revision
    for i in range(300):  # enough changed files for the worker processes
        (src / "d0" / f"e{i % 9}" / f"new{i}").write_bytes(b"%d" % i)
    victim = src / "d1" / "e0" / "f9.bin"
    victim.write_bytes(b"new content")

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "scanning" and total is not None:  # the scan is over, nothing read yet
            victim.write_bytes(b"changed again, with another size")

    with pytest.raises(IngestError, match="changed after it was scanned"), \
            pub.transaction(progress=progress) as txn:
        txn.add_tree(src, "/")
    assert pub.head().revision == rev


def test_objects_pass_over_temporaries_left_behind_and_are_world_readable(publisher):
    store = publisher.store
    txn_dir = os.path.join(str(store.root), "data", "txn")
    os.makedirs(txn_dir, exist_ok=True)
    stem = f"ingest.{os.getpid()}.{threading.get_ident()}."
    for n in range(3):  # what a killed publish with the same process and thread ids left
        with open(os.path.join(txn_dir, f"{stem}{n}"), "wb") as f:
            f.write(b"stale")
    os.symlink(os.path.join(txn_dir, "elsewhere"), os.path.join(txn_dir, f"{stem}3"))
    old = os.umask(0o077)
    try:
        with Ingester(store, workers=1) as ing:
            data = b"fresh content\n"  # ingested in this thread: the stale names are its own
            got = ing.ingest_stream(io.BytesIO(data).read, len(data), what="fresh")
    finally:
        os.umask(old)
    obj = os.path.join(str(store.root), got.hash.object_path(ObjectKind.FILE))
    assert os.stat(obj).st_mode & 0o777 == 0o644
    with open(os.path.join(txn_dir, f"{stem}0"), "rb") as f:
        assert f.read() == b"stale"
    assert not os.path.exists(os.path.join(txn_dir, "elsewhere"))
    assert sorted(os.listdir(txn_dir)) == [f"{stem}{n}" for n in range(4)]


def test_a_big_sync_flushes_the_storage_while_it_ingests(make_publisher, tmp_path, monkeypatch):
    asked = []
    real = Ingester.sync_in_background

    def spy(self, flush, every=1.0):
        asked.append(every)
        flush()  # the storage's syncfs works here
        real(self, flush, every=0.01)

    monkeypatch.setattr(Ingester, "sync_in_background", spy)
    pub = make_publisher(ingest_processes=True)
    make_copies_tree(tmp_path / "src")
    with pub.transaction() as txn:
        txn.add_tree(tmp_path / "src", "/")
    assert txn.summary.files == 450 and asked == [1.0]  # asked once, when the scan grew big
    assert pub.head().revision == 2


def test_background_flushes_stop_at_close_and_after_a_failure(publisher):
    flushed = threading.Event()
    count = []

    def failing() -> None:
        count.append(1)
        flushed.set()
        raise OSError(5, "I/O error")

    ing = Ingester(publisher.store, workers=1)
    ing.sync_in_background(failing, every=0.005)
    assert flushed.wait(10)
    ing.close()
    assert count == [1]  # the loop ended quietly at the first failure

    ticks = []
    ing = Ingester(publisher.store, workers=1)
    ing.sync_in_background(lambda: ticks.append(1), every=0.005)
    ing.sync_in_background(lambda: ticks.append(2), every=0.005)  # one flusher only
    ing.close()
    n = len(ticks)
    threading.Event().wait(0.05)
    assert len(ticks) == n and 2 not in ticks
