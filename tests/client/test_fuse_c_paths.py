"""The requests the C session answers without Python: open() of a cached object named at
lookup, and read() of chunked files from their chunks' cached objects."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from pycvmfs.server.http import RepositoryServer

from helpers.fuse import CLI, eventually, mount, needs_fuse, pid_alive

pytestmark = needs_fuse

FQRN = "golden.example.org"


@pytest.fixture(scope="module")
def golden_http(golden_repo):
    with RepositoryServer({FQRN: golden_repo}) as srv:
        yield srv.repository_url(FQRN)


@pytest.fixture
def golden_mount(tmp_path, golden_http, golden_keys):
    """(mount point, cache directory) of the golden repository, without read-ahead (so
    that what is in the cache is what was read); unmounted at teardown."""
    cache = tmp_path / "cache"
    mp = mount(FQRN, tmp_path / "mnt", golden_http, golden_keys, cache, "--readahead-threads", "0",
               log_file=tmp_path / "mount.log")
    try:
        yield mp, cache
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False)


def _requests(mp: Path) -> dict[str, int]:
    return json.loads(os.getxattr(mp, "user.fuse_requests"))


def _object_file(cache: Path, sha1: str) -> Path:
    return cache / sha1[:2] / sha1[2:]


def _file(golden_expected: dict, rel: str) -> dict:
    return golden_expected["published"]["files"]["rev2"][rel]


def test_chunked_files_are_read_in_c_across_chunk_boundaries(golden_mount, golden_expected):
    mp, _cache = golden_mount
    rel = "bin/blob-1m.bin"
    chunks = _file(golden_expected, rel)["chunk_list"]
    sha1 = golden_expected["trees"]["rev2"]["entries"][rel]["sha1"]
    before = _requests(mp)
    data = (mp / rel).read_bytes()
    assert hashlib.sha1(data).hexdigest() == sha1
    fd = os.open(mp / rel, os.O_RDONLY | os.O_DIRECT)  # no page cache: every read is asked
    try:
        for c in chunks[1:6]:  # reads that start before a boundary and end after it
            start = c["offset"] - 4096
            got = os.pread(fd, 3 * 4096, start)
            assert got == data[start:start + 3 * 4096]
        assert os.pread(fd, 1 << 20, len(data) - 4096) == data[-4096:]  # the end, then none
        assert os.pread(fd, 4096, len(data)) == b""
    finally:
        os.close(fd)
    after = _requests(mp)
    assert after["read_python"] == before["read_python"]  # every read answered in C
    # each chunk asked of Python once per open that reads it (a few kept open per file)
    assert after["chunk_python"] - before["chunk_python"] >= len(chunks)


def test_a_cached_object_is_opened_without_python(golden_mount, golden_expected):
    mp, _cache = golden_mount
    rel = "text/hello.txt"
    first = (mp / rel).read_bytes()
    before = _requests(mp)
    for _ in range(3):
        assert (mp / rel).read_bytes() == first
    after = _requests(mp)
    assert after["open"] - before["open"] == 3
    assert after["open_python"] == before["open_python"]


def test_an_evicted_object_is_fetched_again_through_python(golden_mount, golden_expected):
    mp, cache = golden_mount
    rel = "text/hello.txt"
    sha1 = golden_expected["trees"]["rev2"]["entries"][rel]["sha1"]
    assert hashlib.sha1((mp / rel).read_bytes()).hexdigest() == sha1
    obj = _object_file(cache, _file(golden_expected, rel)["cvmfs_hash"])
    obj.unlink()  # as another process sharing the cache evicts it
    before = _requests(mp)
    fd = os.open(mp / rel, os.O_RDONLY | os.O_DIRECT)
    try:
        assert hashlib.sha1(os.read(fd, 1 << 20)).hexdigest() == sha1
    finally:
        os.close(fd)
    assert _requests(mp)["open_python"] == before["open_python"] + 1
    assert obj.exists()


def test_a_cached_object_of_the_wrong_size_is_refused(golden_mount, golden_expected):
    mp, cache = golden_mount
    rel = "text/hello.txt"
    (mp / rel).read_bytes()
    obj = _object_file(cache, _file(golden_expected, rel)["cvmfs_hash"])
    obj.write_bytes(obj.read_bytes()[:-1])  # damaged under its verified name
    with pytest.raises(OSError) as e:
        (mp / rel).read_bytes()
    assert e.value.errno == errno.EIO


def _pinned(cache: Path, env: dict[str, str]) -> int:
    """The cache's ``pinned_objects`` count, as ``pycvmfs cache stat`` reports it."""
    stats = json.loads(subprocess.run([*CLI, "cache", "stat", "--cache-dir", str(cache), "--json"],
                                      env=env, check=True, capture_output=True, text=True).stdout)
    return stats["pinned_objects"]


def test_chunk_pins_are_released_with_a_quota(golden_http, golden_keys, golden_expected,
                                              tmp_path):
    """With CVMFS_QUOTA_LIMIT the chunks read in C stay pinned only while their descriptors
    are kept: once the file is closed the mount's pins are back to what they were before the
    open (checked while mounted, so that a leaked pin is not hidden by the process's end), and
    none is left once the mount process is gone."""
    cache = tmp_path / "cache"
    env = {**os.environ, "CVMFS_QUOTA_LIMIT": "50"}
    mp = tmp_path / "mnt"
    mp.mkdir()
    subprocess.run([*CLI, "mount", FQRN, str(mp), "--server-url", golden_http, "-k",
                    str(golden_keys), "--cache-dir", str(cache)], env=env, check=True,
                   capture_output=True)
    pid = int(os.getxattr(mp, "user.pid"))
    try:
        rel = "bin/blob-3m.bin"
        sha1 = golden_expected["trees"]["rev2"]["entries"][rel]["sha1"]
        (mp / "bin").stat()  # the catalogs on the path are loaded (and pinned) before counting
        before = _pinned(cache, env)
        with open(mp / rel, "rb") as f:
            assert hashlib.sha1(f.read()).hexdigest() == sha1
            during = _pinned(cache, env)
            assert before < during <= before + 8, (before, during)  # a few chunks
        assert _requests(mp)["read_python"] == 0
        # the kernel sends release() after close() returns: wait for it, bounded
        assert eventually(lambda: _pinned(cache, env) == before, 15), (before, _pinned(cache, env))
    finally:
        subprocess.run([*CLI, "umount", str(mp)], check=False)
    assert eventually(lambda: not pid_alive(pid), 15)  # umount may return before the process ends
    assert _pinned(cache, env) == 0


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_symlink_or_fifo_at_a_cached_object_is_never_served(golden_mount, golden_expected,
                                                              tmp_path, plant):
    """What another process plants under a verified object's name is refused by the C open
    and by Python's (no link followed, no FIFO waited on): never a hang, never the link
    target."""
    mp, cache = golden_mount
    rel = "text/hello.txt"
    good = (mp / rel).read_bytes()
    obj = _object_file(cache, _file(golden_expected, rel)["cvmfs_hash"])
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"X" * len(good))  # the right size
    obj.unlink()
    if plant == "symlink":
        obj.symlink_to(decoy)
    else:
        os.mkfifo(obj)
    outcome: list[bytes | OSError] = []

    def read() -> None:
        try:
            fd = os.open(mp / rel, os.O_RDONLY | os.O_DIRECT)
            try:
                outcome.append(os.read(fd, 1 << 20))
            finally:
                os.close(fd)
        except OSError as e:
            outcome.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "the open hangs"
    got = outcome[0]
    if plant == "symlink":  # a cached name that is a link: refused
        assert isinstance(got, OSError) and got.errno == errno.EIO, got
    else:  # not a cached regular file: downloaded (and verified) again in its place
        assert got == good


def test_chunk_reads_on_boundaries_spanning_chunks_and_concurrent(golden_mount, golden_expected):
    """Reads (O_DIRECT: each one asked of the session) that start or end exactly on a chunk
    boundary, one chunk exactly, one spanning three chunks, and reads of many chunks at once
    from several threads through one descriptor (more chunks than the descriptors a file
    keeps, so kept ones are closed and asked for again)."""
    mp, _cache = golden_mount
    rel = "bin/blob-1m.bin"
    chunks = _file(golden_expected, rel)["chunk_list"]
    data = (mp / rel).read_bytes()
    before = _requests(mp)
    fd = os.open(mp / rel, os.O_RDONLY | os.O_DIRECT)
    try:
        for c in chunks[1:]:
            start, size = c["offset"], c["size"]
            assert os.pread(fd, 4096, start) == data[start:start + 4096]  # starts on one
            assert os.pread(fd, 4096, start - 4096) == data[start - 4096:start]  # ends on one
            assert os.pread(fd, size, start) == data[start:start + size]  # exactly one chunk
        small = min(range(1, len(chunks) - 1), key=lambda i: chunks[i]["size"])
        start = chunks[small]["offset"] - 1000
        size = chunks[small]["size"] + 2000  # the end of one, all of the next, the start of one
        assert os.pread(fd, size, start) == data[start:start + size]
        errors: list[str] = []

        def reader(k: int) -> None:
            for j in range(len(chunks)):
                c = chunks[(j * 3 + k) % len(chunks)]  # each thread in its own order
                start, size = c["offset"] + 100, min(8192, c["size"])
                if os.pread(fd, size, start) != data[start:start + size]:
                    errors.append(f"thread {k} chunk at {c['offset']}")

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
    finally:
        os.close(fd)
    after = _requests(mp)
    assert after["read_python"] == before["read_python"]
    assert after["chunk_python"] - before["chunk_python"] > len(chunks)  # slots were reused
