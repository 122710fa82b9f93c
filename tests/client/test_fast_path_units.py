"""Pieces of the client's fast paths checked without a mount: an empty chunked file is not
handed to the C session's chunk reader, a reader about to wait hurries a download once, and a
second scan of a directory from its first file counts as sequential."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.fetcher import FetchProcess
from pycvmfs.client.files import RepoFile
from pycvmfs.client.fuse import CvmfsFilesystem, _Listing
from pycvmfs.format.dirent import DirectoryEntry, Flags
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.http import HttpSource


def _no_fetch(*args: object) -> None:
    pytest.fail(f"nothing to download: {args}")


def test_an_empty_chunked_file_is_read_as_one_object():
    e = DirectoryEntry(name=b"empty", mode=0o100644, size=0, mtime=0, mtimens=None,
                       flags=Flags.FILE | Flags.CHUNKED, hash=None, symlink=b"", uid=0, gid=0,
                       hardlink_group=0, linkcount=1, xattr_blob=None, md5path=(0, 0),
                       parent=(0, 0), rowid=1)
    assert e.is_chunked
    f = RepoFile("empty", e, [], _no_fetch)
    assert f.chunk_offsets() is None  # C would refuse a list of no chunk (EIO at open)
    assert f.read() == b""


class _Recorder:
    """A pipe's writing end that keeps what went through it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lines: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.lines.append(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()


def test_a_download_is_hurried_once_however_many_readers_wait(tmp_path):
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/repo"
        fp = FetchProcess(HttpSource([url], timeout=30.0), ObjectCache(tmp_path / "cache"))
        try:
            h = ContentHash.parse("ab" * 20)
            assert fp.submit(h, ObjectKind.FILE)
            recorder = _Recorder(fp._stdin)
            fp._stdin = recorder
            events = [fp.waiter(h) for _ in range(5)]
            assert all(e is not None and not e.is_set() for e in events)
            assert [line for line in recorder.lines if line.startswith(b"hurry")] == \
                [f"hurry {h}\n".encode()]
        finally:
            fp._proc.kill()  # (its transfer would wait for the silent server)
            fp.close()


def _scan_filesystem(names: list[bytes]) -> tuple[SimpleNamespace, _Listing, list[int]]:
    """Just what :meth:`CvmfsFilesystem._prefetch_siblings` uses: a listing of regular files
    ``names`` in directory ``/d``, none of them cached; the positions read-ahead started at."""
    view = object()
    listing = _Listing([SimpleNamespace(is_file=True, entry=SimpleNamespace(name=n))
                        for n in names])
    started: list[int] = []
    fs = SimpleNamespace(_listings={(id(view), b"/d"): listing}, _scan_until=0.0,
                         _opened_in_c=lambda s: False,
                         _prefetch_from=lambda lst, i: started.append(i))
    fs.view = view
    return fs, listing, started


def test_a_second_scan_from_the_first_file_is_sequential():
    fs, _listing, started = _scan_filesystem([b"a", b"b", b"c", b"d", b"e"])
    for name in (b"a", b"b", b"c"):
        CvmfsFilesystem._prefetch_siblings(fs, fs.view, b"/d/" + name)
    assert started == [1, 2, 3]
    CvmfsFilesystem._prefetch_siblings(fs, fs.view, b"/d/a")  # a second tar of the directory
    assert started == [1, 2, 3, 1]
    assert fs._scan_until > time.monotonic()
    CvmfsFilesystem._prefetch_siblings(fs, fs.view, b"/d/e")  # b..d skipped: not a scan
    assert started == [1, 2, 3, 1]
