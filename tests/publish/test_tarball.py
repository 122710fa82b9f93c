"""Tar archives unpacked into a transaction read back identically through the verified client."""

from __future__ import annotations

import gzip
import io
import math
import os
import random
import stat
import tarfile
import threading
import time

import pytest

from pycvmfs.errors import PublishError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish import tarball
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.ingest import Ingester
from pycvmfs.publish.repository import Publisher

from helpers.publishing import reader

T = 1_600_000_000
BIG = random.Random(7).randbytes(700_000)  # over the test publisher's 64 KiB chunk minimum
LONG_NAME = "long/" + "d" * 150 + "/" + "f" * 150  # 306 bytes: GNU or pax long name
LONG_TARGET = "/".join(f"segment{i:02d}" for i in range(30))  # 299 bytes
XATTR_BIN = bytes(range(256))[::7]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Publisher:
    """One repository for the tests that each write their own directory or change nothing
    (creating a repository costs more than a publish)."""
    base = tmp_path_factory.mktemp("tar-repo")
    settings = ServerSettings(chunking=ChunkingParams(65536, 131072, 262144),
                              include_xattrs=True)  # as conftest's make_publisher
    return Publisher.mkfs("tar.example.org", base / "srv", config_dir=base / "etc",
                          settings=settings)


def _ti(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, mtime: float = T,
        uid: int = 1001, gid: int = 1002, linkname: str = "", dev: tuple[int, int] = (0, 0),
        pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, mtime, uid, gid
    ti.linkname = linkname
    ti.devmajor, ti.devminor = dev
    ti.pax_headers = pax or {}
    return ti


def _file(name: str, data: bytes, **kw) -> tuple[tarfile.TarInfo, bytes]:
    ti = _ti(name, **kw)
    ti.size = len(data)
    return ti, data


def _members(fmt: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    m = [
        (_ti("./", tarfile.DIRTYPE, mode=0o755), None),
        (_ti("./dir/", tarfile.DIRTYPE, mode=0o750, mtime=T + 1), None),
        _file("./dir/file.txt", b"hello tar\n", mtime=T + 2),
        _file("./dir/setuid", b"#!/bin/sh\n", mode=0o4755),
        _file("./empty", b""),
        _file("big.bin", BIG, mode=0o600),
        _file("ünïcödé/日本語 😀.txt", b"unicode\n"),
        _file("hl/a", b"linked content\n", mode=0o640, mtime=T + 3),
        (_ti("hl/b", tarfile.LNKTYPE, linkname="hl/a"), None),
        (_ti("./hl/c", tarfile.LNKTYPE, linkname="./hl/a"), None),
        (_ti("other/x", tarfile.LNKTYPE, linkname="hl/a"), None),
        (_ti("dir/rel-link", tarfile.SYMTYPE, linkname="file.txt"), None),
        (_ti("dir/variant", tarfile.SYMTYPE, linkname="/cvmfs/$(ARCH:-x86)/abs"), None),
        (_ti("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)), None),
        (_ti("dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0)), None),
        (_ti("dev/fifo", tarfile.FIFOTYPE, mode=0o600), None),
        (_ti("dev/fifo-link", tarfile.LNKTYPE, linkname="dev/fifo"), None),  # links to non-files
        (_ti("dir/rel-link-link", tarfile.LNKTYPE, linkname="dir/rel-link"), None),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        m += [_file(LONG_NAME, b"long name\n"),
              (_ti("dir/long-link", tarfile.SYMTYPE, linkname=LONG_TARGET), None)]
    if fmt == tarfile.PAX_FORMAT:
        m += [_file("attrs", b"x", pax={
                  "SCHILY.xattr.user.comment": "from a tar",
                  "SCHILY.xattr.user.bin": XATTR_BIN.decode("utf-8", "surrogateescape"),
                  "SCHILY.xattr.security.selinux": "not recorded"}),
              _file("frac", b"fractional mtime\n", pax={"mtime": f"{T}.75"})]
    return m


def _archive(members, fmt: int = tarfile.PAX_FORMAT, comp: str = "") -> bytes:
    buf = io.BytesIO()
    level = {"gz": {"compresslevel": 1}, "bz2": {"compresslevel": 1}, "xz": {"preset": 0}}
    with tarfile.open(fileobj=buf, mode=f"w:{comp}" if comp else "w", format=fmt,
                      **level.get(comp, {})) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p and p != ".")


def _check(view, members, base: str = "", uid: int | None = None,
           gid: int | None = None) -> None:
    """Every member reads back as the archive says (later members win, links as their target)."""
    final = {_norm(ti.name): (ti, data) for ti, data in members}
    for rel, (ti, data) in final.items():
        if not rel:
            continue
        path = f"{base}/{rel}"
        src, content = final[_norm(ti.linkname)] if ti.islnk() else (ti, data)
        st = view.lstat(path)
        assert st.st_mtime == math.floor(float(src.pax_headers.get("mtime", src.mtime))), path
        assert (st.st_uid, st.st_gid) == (src.uid if uid is None else uid,
                                          src.gid if gid is None else gid), path
        if src.issym():
            assert st.is_symlink and view.readlink(path, expand=False) == src.linkname, path
            continue
        assert st.permissions == src.mode, path
        if src.isdir():
            assert st.is_dir, path
        elif src.isreg():
            assert st.is_file and view.read_bytes(path) == content, path
        else:
            fmt = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                   tarfile.FIFOTYPE: stat.S_IFIFO}[src.type]
            assert stat.S_IFMT(st.st_mode) == fmt, path
            rdev = 0 if src.isfifo() else os.makedev(src.devmajor, src.devminor)
            assert st.st_rdev == rdev, path
    # nothing else below base but the directories the members imply
    implied = {"/".join(r.split("/")[:i]) for r in final for i in range(1, r.count("/") + 2)}
    implied.discard("")
    seen = {s.path[len(base) + 1:] for _d, ds, fs in view.walk(base or "/") for s in ds + fs}
    assert seen - {"new_repository"} == implied


def _check_hardlinks(view, base: str = "") -> None:
    a, b, c, x = (view.lstat(f"{base}/{p}") for p in ("hl/a", "hl/b", "hl/c", "other/x"))
    assert a.st_ino == b.st_ino == c.st_ino and a.hardlink_group != 0
    assert (a.st_nlink, b.st_nlink, c.st_nlink) == (3, 3, 3)
    assert x.st_ino != a.st_ino and x.st_nlink == 1 and x.hardlink_group == 0
    assert x.hash == a.hash  # the same object, stored once


@pytest.mark.parametrize("comp", ["", "gz", "bz2", "xz"])
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_every_member_kind_round_trips(shared, tmp_path, fmt, comp):
    members = _members(fmt)
    path = tmp_path / f"in.tar.{comp}"
    path.write_bytes(_archive(members, fmt, comp))
    base = f"/{fmt}-{comp}"
    with shared.transaction() as txn:
        txn.add_tarball(path, base)
    with reader(shared, tmp_path / "c") as r, r.open_revision() as view:
        _check(view, members, base)
        _check_hardlinks(view, base)
        assert view.stat(f"{base}/big.bin").is_chunked
        if fmt == tarfile.PAX_FORMAT:
            assert view.xattrs(f"{base}/attrs") == {"user.comment": b"from a tar",
                                                    "user.bin": XATTR_BIN}
            assert view.stat(f"{base}/frac").st_mtime_ns == T * 1_000_000_000  # mtimens off


def _feed(data: bytes) -> tuple[io.BufferedReader, threading.Thread]:
    """A non-seekable pipe that a thread writes ``data`` into."""
    r, w = os.pipe()

    def write():
        with open(w, "wb") as f:
            for i in range(0, len(data), 65536):
                try:
                    f.write(data[i:i + 65536])
                except BrokenPipeError:
                    return

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return open(r, "rb"), t


def test_a_pipe_is_read_once_and_big_members_stream(make_publisher, tmp_path, monkeypatch):
    pub = make_publisher(mtime_ns=True)  # xattrs off: not recorded
    members = _members(tarfile.PAX_FORMAT)
    streamed = []
    real = Ingester.ingest_stream

    def spy(self, read, size, *, what):
        streamed.append((what, size))
        return real(self, read, size, what=what)

    monkeypatch.setattr(tarball, "STREAM_OVER", 100_000)
    monkeypatch.setattr(Ingester, "ingest_stream", spy)
    pipe, writer = _feed(_archive(members, comp="xz"))
    with pipe:
        with pytest.raises(OSError):
            pipe.seek(0)
        with pub.transaction() as txn:
            txn.add_tarball(pipe)
    writer.join()
    assert streamed == [(f"<fd {pipe.name}>:big.bin", len(BIG))]
    with reader(pub, tmp_path / "c") as r, r.open_revision() as view:
        _check(view, members)
        _check_hardlinks(view)
        assert view.read_bytes("big.bin") == BIG and view.stat("big.bin").is_chunked
        assert view.xattrs("attrs") == {}
        assert view.stat("frac").st_mtime_ns == T * 1_000_000_000 + 750_000_000


def test_ingest_into_a_subdirectory_with_owner_override(make_publisher, tmp_path):
    pub = make_publisher()
    members = _members(tarfile.GNU_FORMAT)
    src = io.BytesIO(_archive(members, tarfile.GNU_FORMAT, "gz"))
    with pub.transaction() as txn:
        txn.add_tarball(src, b"/sw/pkg", uid=4242, gid=4343)
    with reader(pub, tmp_path / "c") as r, r.open_revision() as view:
        _check(view, members, base="/sw/pkg", uid=4242, gid=4343)
        _check_hardlinks(view, base="/sw/pkg")
        assert sorted(view.listdir("/")) == ["new_repository", "sw"]
        sw, pkg = view.stat("/sw"), view.stat("/sw/pkg")
        assert (sw.st_uid, sw.st_gid, pkg.st_uid, pkg.st_gid) == (4242, 4343, 4242, 4343)
        assert pkg.permissions == 0o755 and pkg.st_mtime == T  # from the './' member
        assert view.stat("/sw/pkg/ünïcödé").st_uid == 4242  # made up for a member's parent


def test_later_members_replace_earlier_ones(publisher, tmp_path):
    with publisher.transaction() as txn:
        txn.add_file("/repo-file", b"before")
        txn.add_file("/old-dir/inside", b"old")
    members = [
        _file("a", b"first"),
        (_ti("a", tarfile.SYMTYPE, linkname="elsewhere"), None),
        _file("b", b"file that becomes a directory"),
        (_ti("b", tarfile.DIRTYPE, mode=0o700), None),
        _file("b/child", b"child"),
        (_ti("c", tarfile.DIRTYPE), None),
        _file("c/gone", b"below a directory that a file replaces"),
        _file("c", b"now a file"),
        _file("d", b"original content"),
        (_ti("e", tarfile.LNKTYPE, linkname="d"), None),
        _file("d", b"replaced; the link keeps the old content"),
        _file("repo-file", b"after"),
        (_ti("old-dir", tarfile.SYMTYPE, linkname="c"), None),
        _file("s/pending", b"below a directory that a symlink replaces"),
        (_ti("s", tarfile.SYMTYPE, linkname="c"), None),
    ]
    path = tmp_path / "r.tar"
    path.write_bytes(_archive(members))
    with publisher.transaction() as txn:
        txn.add_tarball(path)
    with reader(publisher, tmp_path / "c") as r, r.open_revision() as view:
        assert view.readlink("a") == "elsewhere"
        assert view.stat("b").is_dir and view.read_bytes("b/child") == b"child"
        assert view.read_bytes("c") == b"now a file"
        assert view.read_bytes("d") == b"replaced; the link keeps the old content"
        assert view.read_bytes("e") == b"original content" and view.stat("e").st_nlink == 1
        assert view.read_bytes("repo-file") == b"after"
        assert view.readlink("old-dir") == "c" and not view.exists("old-dir/inside")
        assert view.readlink("s") == "c" and view.listdir("/") == [
            "a", "b", "c", "d", "e", "new_repository", "old-dir", "repo-file", "s"]


def test_unpacking_onto_a_file_is_refused(shared, tmp_path):
    path = tmp_path / "a.tar"
    path.write_bytes(_archive([_file("x", b"x")]))
    before = shared.head()
    with pytest.raises(PublishError, match="new_repository: exists and is not a directory"), \
            shared.transaction() as txn:
        txn.add_tarball(path, "/new_repository")
    assert shared.head() == before


def test_a_hard_link_to_a_member_removed_with_its_directory_is_refused(shared, tmp_path):
    members = [_file("dir/f", b"content"), _file("dir", b"a file replaces the directory"),
               (_ti("link", tarfile.LNKTYPE, linkname="dir/f"), None)]
    path = tmp_path / "gone.tar"
    path.write_bytes(_archive(members))
    before = shared.head()
    with pytest.raises(PublishError, match="'link': hard link to 'dir/f', which is not an "
                       "earlier"), shared.transaction() as txn:
        txn.add_tarball(path, "/gone")
    assert shared.head() == before


@pytest.mark.parametrize("member", [
    (_ti("../evil"), b""),
    (_ti("ok/../../evil"), b""),
    (_ti("/etc/evil"), b""),
    (_ti("evil-link", tarfile.LNKTYPE, linkname="../outside"), None),
    (_ti("evil-abs-link", tarfile.LNKTYPE, linkname="/etc/passwd"), None),
    (_ti("dangling-hardlink", tarfile.LNKTYPE, linkname="not-in-the-archive"), None),
    (_ti("x/" + "n" * 256), b""),
    (_ti(".cvmfs/x"), b""),
], ids=["dotdot", "inner-dotdot", "absolute", "link-dotdot", "link-absolute", "link-missing",
        "name-too-long", "reserved"])
def test_unsafe_or_impossible_members_are_refused_without_change(shared, tmp_path, member):
    ti, data = member
    members = [_file("fine", b"fine"), (ti, data)]
    path = tmp_path / "evil.tar"
    path.write_bytes(_archive(members))
    before = shared.head()
    with pytest.raises(PublishError) as err, shared.transaction() as txn:
        txn.add_tarball(path)
    assert str(path) in str(err.value) and repr(ti.name) in str(err.value)
    assert shared.head() == before


def _truncated_gz() -> bytes:
    data = gzip.compress(_archive([_file("first", b"ok"), _file("big.bin", BIG)]), 1)
    return data[:len(data) * 2 // 3]


def _flipped_stored_gz() -> bytes:
    data = bytearray(gzip.compress(_archive([_file("text", b"hello world " * 100)]), 0))
    data[data.find(b"hello world") + 5] ^= 0x20  # deflate accepts it; only the CRC can tell
    return bytes(data)


def _no_end_marker() -> bytes:
    data = _archive([_file("a", b"x" * 512), _file("b", b"y" * 512)], tarfile.USTAR_FORMAT)
    return data[:4 * 512]  # header + data of both, no zero blocks


@pytest.mark.parametrize(("make", "where"), [
    (_truncated_gz, "reading member 'big.bin'"),
    (_flipped_stored_gz, "after member 'text'"),
    (_no_end_marker, "after member 'b'"),
    (lambda: b"", "at its start"),
    (lambda: _archive([_file("a", b"a" * 2000)])[:1000], "reading member 'a'"),
    (lambda: b"garbage" * 100, "at its start"),
    (lambda: _archive([_file("a", b"a")])[:1024] + b"garbage" * 100, "after member 'a'"),
], ids=["truncated-gz", "bad-crc", "no-end-marker", "empty", "short-data", "garbage",
        "garbage-header"])
def test_corrupt_or_truncated_archives_are_refused_by_name_without_change(
        shared, tmp_path, make, where):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(make())
    before = shared.head()
    with pytest.raises(PublishError, match="corrupt or truncated") as err, \
            shared.transaction() as txn:
        txn.add_tarball(path)
    assert str(path) in str(err.value) and where in str(err.value)
    assert shared.head() == before


def test_a_huge_declared_size_is_refused_before_anything_is_read(shared, tmp_path):
    ti = _ti("big")
    ti.size = 10**15  # a PB, followed by a few bytes only
    path = tmp_path / "huge.tar"
    path.write_bytes(ti.tobuf(tarfile.GNU_FORMAT) + b"x" * 1000)
    before = shared.head()
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"member 'big': 1000000000000000 bytes is over the "
                       r"file size limit of 1024 MiB") as err, shared.transaction() as txn:
        txn.add_tarball(path)
    assert str(path) in str(err.value) and time.monotonic() - started < 5
    assert shared.head() == before


def test_a_member_below_a_symlink_member_is_refused(shared, tmp_path):
    """``s -> /etc`` then ``s/passwd``: nothing is ever written through a symlink."""
    path = tmp_path / "through.tar"
    path.write_bytes(_archive([(_ti("s", tarfile.SYMTYPE, linkname="/etc"), None),
                               _file("s/passwd", b"root::0:0::/:/bin/sh\n")]))
    before = shared.head()
    with pytest.raises(PublishError, match=r"member 's/passwd': /through/s: exists and is not "
                       r"a directory"), shared.transaction() as txn:
        txn.add_tarball(path, "/through")
    assert shared.head() == before
