"""Trees changed under a running tree sync: the publisher reads only what it scanned, or refuses."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.errors import IngestError, PublishError
from pycvmfs.publish.ingest import Ingester, scanned
from pycvmfs.publish.repository import Publisher
from pycvmfs.storage.local import LocalStorage

from helpers.publishing import reader

SECRET = b"root-only secret\n"


def _storage_state(pub: Publisher) -> tuple[bytes, list[str]]:
    """The manifest and every file under data/: what an aborted publish must leave as it was."""
    root = Path(pub.config.storage)
    files = sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*") if p.is_file())
    return (root / ".cvmfspublished").read_bytes(), files


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file").write_bytes(b"public content!!\n")  # as long as SECRET
    (src / "top").write_bytes(b"top-level file\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "file").write_bytes(SECRET)
    os.chmod(secret / "file", 0o600)
    return src, secret


@contextlib.contextmanager
def _fifo_unblocker(fifo: Path, after: float):
    """Open ``fifo`` for writing after ``after`` seconds, so a reader wrongly blocked in its
    open returns (the test then fails on time instead of hanging)."""
    done = threading.Event()

    def run() -> None:
        if done.wait(after):
            return
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def _publish_swapping(pub: Publisher, src: Path, swap: Callable[[], None], *,
                      after_listings: int | None = None) -> None:
    """``add_tree(src)`` calling ``swap`` once: after the whole scan (files not read yet), or
    after ``after_listings`` directories were listed (depth first, by name)."""
    listings = []

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage != "scanning" or "swapped" in listings:
            return
        listings.append(stage)
        if (total is not None if after_listings is None else len(listings) == after_listings):
            listings.append("swapped")
            swap()

    with pub.transaction(progress=progress) as txn:
        txn.add_tree(src)
    assert "swapped" in listings, "the swap never ran"


def _to_symlink(path: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        path.unlink()
        path.symlink_to(target)
    return swap


def _to_fifo(path: Path) -> Callable[[], None]:
    def swap() -> None:
        path.unlink()
        os.mkfifo(path, 0o644)
    return swap


def _to_other_file(path: Path) -> Callable[[], None]:
    def swap() -> None:  # same size and mtime, another inode
        st = path.stat()
        other = path.with_name("other")
        other.write_bytes(SECRET[:st.st_size].ljust(st.st_size, b"x"))
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(other, path)
    return swap


def _rewritten(path: Path) -> Callable[[], None]:
    def swap() -> None:  # same inode and size, new content and mtime
        with open(path, "r+b") as f:
            f.write(b"X")
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    return swap


@pytest.mark.parametrize(("make_swap", "message"), [
    (lambda f, secret: _to_symlink(f, secret / "file"), "is a symbolic link now"),
    (lambda f, secret: _to_fifo(f), "not a regular file"),
    (lambda f, secret: _to_other_file(f), "replaced by another file after it was scanned"),
    (lambda f, secret: _rewritten(f), "changed after it was scanned"),
], ids=["symlink", "fifo", "other-inode", "rewritten"])
def test_a_file_swapped_after_the_scan_refuses_the_publish_and_changes_nothing(
        publisher, tmp_path, make_swap, message):
    src, secret = _tree(tmp_path)
    target = src / "sub" / "file"
    before = _storage_state(publisher)
    started = time.monotonic()
    with _fifo_unblocker(target, 10.0), pytest.raises(IngestError) as err:
        _publish_swapping(publisher, src, make_swap(target, secret))
    assert time.monotonic() - started < 8.0  # a FIFO in the file's place never blocks
    assert str(target) in str(err.value) and message in str(err.value)
    assert _storage_state(publisher) == before


def test_a_directory_swapped_for_a_symlink_is_not_followed(publisher, tmp_path):
    src, secret = _tree(tmp_path)
    sub = src / "sub"
    before = _storage_state(publisher)

    def swap() -> None:
        sub.rename(tmp_path / "moved-away")
        sub.symlink_to(secret)

    with pytest.raises(PublishError) as err:
        _publish_swapping(publisher, src, swap, after_listings=1)
    assert str(sub) in str(err.value) and "not a directory any more" in str(err.value)
    assert _storage_state(publisher) == before


def test_a_directory_replaced_through_a_parent_symlink_is_refused(publisher, tmp_path):
    """``src/a`` becomes a symlink to a directory that also has a ``b``: ``src/a/b`` opens a
    directory that the scan never saw."""
    src, secret = _tree(tmp_path)
    (src / "a" / "b").mkdir(parents=True)
    (secret / "b").mkdir()
    (secret / "b" / "key").write_bytes(SECRET)
    before = _storage_state(publisher)

    def swap() -> None:  # after the listings of src and src/a: a/b not listed yet
        (src / "a").rename(tmp_path / "a-moved")
        (src / "a").symlink_to(secret)

    with pytest.raises(PublishError, match="a/b: replaced by another directory after it"):
        _publish_swapping(publisher, src, swap, after_listings=2)
    assert _storage_state(publisher) == before


def test_special_files_in_a_tree_are_recorded_never_opened(publisher, tmp_path):
    src, _secret = _tree(tmp_path)
    fifo = src / "sub" / "fifo"
    os.mkfifo(fifo, 0o640)
    started = time.monotonic()
    with _fifo_unblocker(fifo, 10.0), publisher.transaction() as txn:
        txn.add_tree(src)
    assert time.monotonic() - started < 8.0
    with reader(publisher, tmp_path / "cache") as r, r.open_revision() as view:
        assert stat.S_ISFIFO(view.lstat("sub/fifo").st_mode)
        assert view.read_bytes("sub/file") == b"public content!!\n"


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_the_ingester_reads_only_the_scanned_regular_file(tmp_path, processes):
    store = LocalStorage(tmp_path / "store", fsync=False)
    (tmp_path / "store").mkdir(exist_ok=True)
    f = tmp_path / "f"
    f.write_bytes(b"scanned")
    seen = scanned(os.lstat(f))
    other = tmp_path / "other"
    other.write_bytes(SECRET)
    link = tmp_path / "link"
    link.symlink_to(other)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with Ingester(store, workers=2) as ing:
        if processes:
            ing.start_processes(2)
            assert ing._procs, "no worker processes here"
        good = ing.submit_path(f, seen=seen)
        ing.flush()
        assert good.result(timeout=30).size == 7
        via_link = ing.submit_path(link)
        followed = ing.submit_path(link, follow_symlinks=True)
        special = ing.submit_path(fifo, 0)
        f2 = tmp_path / "f2"
        f2.write_bytes(b"scanned")
        os.replace(f2, f)
        replaced = ing.submit_path(f, seen=seen)
        ing.flush()
        with _fifo_unblocker(fifo, 10.0):
            started = time.monotonic()
            with pytest.raises(IngestError, match=f"{fifo}: not a regular file"):
                special.result(timeout=30)
            assert time.monotonic() - started < 8.0
        assert followed.result(timeout=30).size == len(SECRET)
        with pytest.raises(IngestError, match=f"{link}: is a symbolic link now"):
            via_link.result(timeout=30)
        with pytest.raises(IngestError, match=f"{f}: replaced by another file"):
            replaced.result(timeout=30)
