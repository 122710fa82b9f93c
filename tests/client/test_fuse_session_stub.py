"""The C FUSE session against a small stand-in for the file system's Python side: what it does
with the object an answer names (replaced when named anew, a path with a NUL ignored, never a
symlink followed or a FIFO waited on) and with a handle ops.open returned when the open then
fails in C (released)."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.client import _fuse_lowlevel

from helpers.fuse import needs_fuse

pytestmark = needs_fuse

ROOT = _fuse_lowlevel.ROOT_INODE


@dataclass
class StubFile:
    """A file of the stand-in: its inode, size and the object path its answers name."""

    ino: int
    size: int
    obj: bytes | None


@dataclass
class StubOps:
    """The methods the C session calls; one directory of files, entries never cached by the
    kernel (every open is looked up again). ``open_reply`` answers ops.open."""

    files: dict[bytes, StubFile] = field(default_factory=dict)
    open_reply: Callable[[int], tuple] | None = None  # None: refused (EIO)
    opens: list[int] = field(default_factory=list)
    released: list[object] = field(default_factory=list)

    def _file(self, ino: int) -> StubFile:
        for f in self.files.values():
            if f.ino == ino:
                return f
        raise OSError(errno.ENOENT, "no such inode")

    def _attrs(self, ino: int) -> tuple:
        if ino == ROOT:
            return (ROOT, 0o40555, 2, 0, 0, 0, 0, 0, 0, 0.0)
        f = self._file(ino)
        named = () if f.obj is None else (f.obj,)
        return (f.ino, 0o100444, 1, 0, 0, 0, f.size, (f.size + 511) // 512, 0, 0.0, *named)

    def lookup(self, parent: int, name: bytes) -> tuple:
        if parent != ROOT or name not in self.files:
            raise OSError(errno.ENOENT, "no such file")
        return self._attrs(self.files[name].ino)

    def forget(self, inodes: list) -> None:
        pass

    def getattr(self, ino: int) -> tuple:
        return self._attrs(ino)

    def readlink(self, ino: int) -> bytes:
        raise OSError(errno.EINVAL, "not a link")

    def open(self, ino: int, flags: int) -> tuple:
        self.opens.append(ino)
        if self.open_reply is None:
            raise OSError(errno.EIO, "refused")
        return self.open_reply(ino)

    def read(self, handle: object, offset: int, size: int) -> bytes:
        return b""

    def release(self, handle: object) -> None:
        self.released.append(handle)

    def readdir(self, ino: int, offset: int, buf: object) -> None:
        pass

    def statfs(self, ino: int) -> tuple[int, int, int]:
        return 0, 4096, 255

    def getxattr(self, ino: int, name: bytes) -> bytes:
        raise OSError(errno.ENODATA, "no attribute")

    def listxattr(self, ino: int) -> list[bytes]:
        return []

    def chunk(self, handle: object, index: int) -> int:
        raise OSError(errno.EIO, "no chunks here")

    def chunk_done(self, handle: object, index: int) -> None:
        pass


@pytest.fixture
def stub_mount(tmp_path: Path) -> Iterator[tuple[Path, StubOps]]:
    """(mount point, ops) of a C session served by threads of this process."""
    ops = StubOps()
    mp = tmp_path / "mnt"
    mp.mkdir()
    session = _fuse_lowlevel.Session(ops, str(mp), ["ro", "fsname=stub", "subtype=stub"])
    workers = [threading.Thread(target=session.loop, daemon=True) for _ in range(2)]
    for t in workers:
        t.start()
    connection = Path("/sys/fs/fuse/connections") / str(os.minor(os.stat(mp).st_dev))
    try:
        yield mp, ops
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
        for t in workers:
            t.join(5)
        if any(t.is_alive() for t in workers) and connection.exists():
            # a worker is stuck (a test failing by a hang): end the requests waiting on it,
            # or this process could not exit
            (connection / "abort").write_text("1")


def _object(tmp_path: Path, name: str, data: bytes) -> bytes:
    p = tmp_path / name
    p.write_bytes(data)
    return os.fsencode(p)


def _read_direct(path: Path, size: int) -> bytes:
    """The file's first ``size`` bytes, asked of the session (no page cache)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _open_within(path: Path, seconds: float = 10.0) -> BaseException | None:
    """The error of opening and reading ``path`` (None: it read), asserting it never hangs."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            _read_direct(path, 4096)
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the open hangs"
    return outcome[0]


def test_an_object_named_anew_for_an_inode_replaces_the_old_one(stub_mount, tmp_path):
    mp, ops = stub_mount
    ops.files[b"f"] = StubFile(2, 4, _object(tmp_path, "old", b"old!"))
    assert _read_direct(mp / "f", 4096) == b"old!"
    ops.files[b"f"] = StubFile(2, 5, _object(tmp_path, "new", b"new!!"))
    assert _read_direct(mp / "f", 4096) == b"new!!"
    ops.files[b"f"] = StubFile(2, 5, _object(tmp_path, "same-size", b"same!"))
    assert _read_direct(mp / "f", 4096) == b"same!"
    assert ops.opens == []  # every open answered in C


def test_an_object_path_with_a_nul_is_not_remembered(stub_mount, tmp_path):
    mp, ops = stub_mount
    real = _object(tmp_path, "real", b"real")  # what the path would name cut at the NUL
    ops.files[b"f"] = StubFile(2, 4, real + b"\0tail")
    err = _open_within(mp / "f")
    assert isinstance(err, OSError) and err.errno == errno.EIO  # ops.open refused it
    assert ops.opens == [2]


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_symlink_or_fifo_at_an_object_path_is_not_served(stub_mount, tmp_path, plant):
    mp, ops = stub_mount
    target = _object(tmp_path, "target", b"link")  # the right size, not the object
    at = tmp_path / "planted"
    if plant == "symlink":
        at.symlink_to(os.fsdecode(target))
    else:
        os.mkfifo(at)
    ops.files[b"f"] = StubFile(2, 4, os.fsencode(at))
    err = _open_within(mp / "f")
    assert isinstance(err, OSError) and err.errno == errno.EIO, err
    assert ops.opens == [2]  # C refused it and asked Python (which refused too)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (reported)
@pytest.mark.parametrize("reply", ["one offset", "not a descriptor", "offsets and a fd"])
def test_a_handle_from_ops_open_is_released_when_the_open_fails_in_c(stub_mount, reply):
    mp, ops = stub_mount
    ops.files[b"f"] = StubFile(2, 4096, None)
    handle = object()
    fd = os.open(os.devnull, os.O_RDONLY)
    replies = {
        "one offset": (handle, -1, array("q", [0]).tobytes()),  # (an empty chunk list)
        "not a descriptor": (handle, "three"),
        "offsets and a fd": (handle, fd, array("q", [0, 4096]).tobytes()),
    }
    ops.open_reply = lambda ino: replies[reply]
    try:
        with pytest.raises(OSError) as e:
            _read_direct(mp / "f", 4096)
    finally:
        if reply != "offsets and a fd":
            os.close(fd)
    assert e.value.errno == errno.EIO
    assert ops.opens == [2]
    assert ops.released == [handle]  # what ops.open took (catalog use, pins) is given back
