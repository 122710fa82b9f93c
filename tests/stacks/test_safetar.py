"""The shared tar extractor: real hostile archives (the chained-symlink filter bypass, members
below links of the archive or on disk, hard links, devices, links resolving outside through other
links) refused without a byte written outside; legitimate archives come back whole (links made
last, read-only directories filled, modes and times kept, high mode bits dropped)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.safetar import extract_tar


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644,
          mtime: int = 1_600_000_000) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = mode
    ti.mtime = mtime
    return ti


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A pax tar of the members in the order given (data for regular files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def chained_symlink_tar(dest: Path, outside: Path) -> bytes:
    """The CVE-2025-4517 class archive: a chain of links whose long resolved path makes
    ``realpath`` give up, so the data filter approves ``escape`` -> ``outside``, then a file
    written through ``escape``."""
    comp, steps = "d" * 247, "abcdefghijklmnop"
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    path = ""
    for step in steps:
        members.append((_info(os.path.join(path, comp), tarfile.DIRTYPE, mode=0o755), None))
        members.append((_info(os.path.join(path, step), tarfile.SYMTYPE, link=comp), None))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    members.append((_info(linkpath, tarfile.SYMTYPE, link="../" * len(steps)), None))
    escape = linkpath + "/.." * (len(steps) + 1) + str(outside)
    members.append((_info("escape", tarfile.SYMTYPE, link=escape), None))
    members.append((_info("escape/pwned"), b"pwned\n"))
    return make_tar(members)


def _extract(data: bytes, dest: Path, **kw) -> None:
    extract_tar(io.BytesIO(data), dest, what="evil.tar", **kw)


@pytest.mark.parametrize("absolute_links", [False, True])
def test_the_chained_symlink_bypass_writes_nothing_outside(tmp_path, absolute_links):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(StackError) as e:
        _extract(chained_symlink_tar(dest, outside), dest, absolute_links=absolute_links)
    assert str(e.value).startswith("evil.tar: refused member ")
    assert "is a symbolic link in the archive" in str(e.value)
    assert list(outside.iterdir()) == []
    assert [p for p in dest.rglob("*") if p.is_symlink()] == []   # links are made last


def flat_chain_tar(outside: Path) -> bytes:
    """A chain like the one above with no member below a link: only resolving ``escape``
    through all the archive's links shows that it leads outside."""
    comp, steps = "d" * 200, "abcdefghijkl"
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    path = ""
    for step in steps:
        members.append((_info(os.path.join(path, comp), tarfile.DIRTYPE, mode=0o755), None))
        members.append((_info(os.path.join(path, step), tarfile.SYMTYPE, link=comp), None))
        path = os.path.join(path, comp)
    members.append((_info(os.path.join(path, "l" * 254), tarfile.SYMTYPE,
                          link="../" * len(steps)), None))
    linkpath = os.path.join(*steps, "l" * 254)
    escape = linkpath + "/.." * (len(steps) + 1) + str(outside)
    members.append((_info("escape", tarfile.SYMTYPE, link=escape), None))
    return make_tar(members)


@pytest.mark.parametrize("absolute_links", [False, True])
def test_a_link_leaving_through_a_chain_of_links_is_refused(tmp_path, absolute_links):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(StackError, match=r"refused member 'escape': a link to .* resolves "
                                         "outside the destination through the archive's links"):
        _extract(flat_chain_tar(outside), dest, absolute_links=absolute_links)
    assert list(outside.iterdir()) == []
    assert [p for p in dest.rglob("*") if p.is_symlink()] == []


@pytest.mark.parametrize(("members", "member", "reason"), [
    ([(_info("/etc/evil"), b"x")], "/etc/evil", "an absolute name"),
    ([(_info("a/../../evil"), b"x")], "a/../../evil", "'..' in its name"),
    ([(_info("l", tarfile.SYMTYPE, link="sub"), None), (_info("sub", tarfile.DIRTYPE), None),
      (_info("l/f"), b"x")], "l/f", "its parent 'l' is a symbolic link in the archive"),
    ([(_info("f"), b"x"), (_info("f/g"), b"x")], "f/g", "its parent 'f' is a regular file"),
    ([(_info("h", tarfile.LNKTYPE, link="later"), None), (_info("later"), b"x")], "h",
     "a hard link to 'later', which is not a regular file extracted before it"),
    ([(_info("d", tarfile.DIRTYPE), None), (_info("h", tarfile.LNKTYPE, link="d"), None)], "h",
     "a hard link to 'd', which is not a regular file"),
    ([(_info("s", tarfile.SYMTYPE, link="x"), None), (_info("h", tarfile.LNKTYPE, link="s"),
                                                      None)], "h", "a hard link to 's'"),
    ([(_info("h", tarfile.LNKTYPE, link="../x"), None)], "h", "'..' in its hard link target"),
    ([(_info("dev", tarfile.CHRTYPE), None)], "dev", "special files are refused"),
    ([(_info("blk", tarfile.BLKTYPE), None)], "blk", "special files are refused"),
    ([(_info("fifo", tarfile.FIFOTYPE), None)], "fifo", "special files are refused"),
    ([(_info("f"), b"x"), (_info("./f"), b"y")], "./f", "'f' appears twice in the archive"),
    ([(_info("s", tarfile.SYMTYPE, link="."), None), (_info("l", tarfile.SYMTYPE,
                                                            link="s/../x"), None)],
     "l", "resolves outside the destination"),
    ([(_info("up", tarfile.SYMTYPE, link="../../x"), None)], "up", "outside the destination"),
    ([(_info("loop", tarfile.SYMTYPE, link="loop/x"), None),
      (_info("l", tarfile.SYMTYPE, link="loop"), None)], "loop", "more than 40 links"),
], ids=["absolute", "dotdot", "below-link", "below-file", "hardlink-later", "hardlink-dir",
        "hardlink-symlink", "hardlink-dotdot", "chardev", "blockdev", "fifo", "twice",
        "link-through-link", "link-up", "link-loop"])
def test_hostile_members_refused_and_named(tmp_path, members, member, reason):
    dest = tmp_path / "a" / "b" / "dest"
    with pytest.raises(StackError) as e:
        _extract(make_tar(members), dest)
    assert str(e.value).startswith(f"evil.tar: refused member {member!r}: ")
    assert reason in str(e.value)
    assert not (tmp_path / "a" / "x").exists() and not (tmp_path / "a" / "b" / "x").exists()
    assert not (tmp_path / "a" / "evil").exists()


def test_an_existing_link_on_disk_is_never_written_through(tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "pre").symlink_to(outside)
    for name in ("pre/f", "pre/sub/f"):
        with pytest.raises(StackError, match=f"refused member '{name}': its parent 'pre' is a "
                                             "symbolic link already on disk"):
            _extract(make_tar([(_info(name), b"x")]), dest)
    with pytest.raises(StackError, match="refused member 'pre': a symbolic link is already "
                                         "on disk where it goes"):
        _extract(make_tar([(_info("pre", tarfile.DIRTYPE), None)]), dest)
    # a link of the archive that resolves through the one on disk to outside
    with pytest.raises(StackError, match=r"refused member 'l': .*outside the destination"):
        _extract(make_tar([(_info("l", tarfile.SYMTYPE, link="pre/../x"), None)]), dest)
    assert list(outside.iterdir()) == []


def test_absolute_link_targets_only_when_allowed(tmp_path):
    data = make_tar([(_info("lib/libz.so", tarfile.SYMTYPE,
                            link="/cvmfs/sft.example.org/lcg/releases/zlib/lib/libz.so.1"),
                      None)])
    with pytest.raises(StackError, match=r"'lib/libz\.so': a link to the absolute "
                                         "path '/cvmfs/"):
        _extract(data, tmp_path / "strict")
    _extract(data, tmp_path / "cache", absolute_links=True)
    assert os.readlink(tmp_path / "cache" / "lib" / "libz.so") == \
        "/cvmfs/sft.example.org/lcg/releases/zlib/lib/libz.so.1"
    # a relative link through an absolute one points outside: data in the cache, not in sources
    through = make_tar([(_info("abs", tarfile.SYMTYPE, link="/usr"), None),
                        (_info("rel", tarfile.SYMTYPE, link="abs/lib"), None)])
    _extract(through, tmp_path / "cache2", absolute_links=True)
    assert os.readlink(tmp_path / "cache2" / "rel") == "abs/lib"


def test_a_legitimate_archive_comes_back_whole(tmp_path):
    members = [
        (_info(".", tarfile.DIRTYPE, mode=0o755, mtime=1_500_000_000), None),
        # a link before what it names, and one into a directory made read-only at the end
        (_info("lib64", tarfile.SYMTYPE, link="lib"), None),
        (_info("lib", tarfile.DIRTYPE, mode=0o555, mtime=1_500_000_001), None),
        (_info("lib/libx.so.1", mode=0o755, mtime=1_500_000_002), os.urandom(3 << 20)),
        (_info("lib/libx.so", tarfile.SYMTYPE, link="libx.so.1", mtime=1_500_000_003), None),
        (_info("lib/hard", tarfile.LNKTYPE, link="./lib/libx.so.1"), None),
        (_info("./bin/tool", mode=0o4755), b"#!/bin/sh\n"),         # parent made implicitly
        (_info("share/sticky", tarfile.DIRTYPE, mode=0o1777), None),
        (_info("share/doc/../../x", tarfile.SYMTYPE, link="y"), None),
    ]
    data = make_tar(members[:-1])
    dest = tmp_path / "cache"
    _extract(data, dest, absolute_links=True, keep_modes=True)
    assert os.readlink(dest / "lib64") == "lib"
    assert (dest / "lib64" / "libx.so").read_bytes() == (dest / "lib" / "libx.so.1").read_bytes()
    assert (dest / "lib" / "hard").stat().st_ino == (dest / "lib" / "libx.so.1").stat().st_ino
    modes = {p: stat.S_IMODE(os.lstat(dest / p).st_mode)
             for p in (".", "lib", "lib/libx.so.1", "bin/tool", "share/sticky")}
    assert modes == {".": 0o755, "lib": 0o555, "lib/libx.so.1": 0o755, "bin/tool": 0o755,
                     "share/sticky": 0o777}
    assert os.lstat(dest).st_mtime == 1_500_000_000
    assert os.lstat(dest / "lib").st_mtime == 1_500_000_001
    assert os.lstat(dest / "lib" / "libx.so.1").st_mtime == 1_500_000_002
    assert os.lstat(dest / "lib" / "libx.so").st_mtime == 1_500_000_003
    # without keep_modes: the data filter's modes (no setuid, no group/other write)
    strict = tmp_path / "src"
    _extract(make_tar([(_info("bin/tool", mode=0o6777), b"x"), (_info("f", mode=0o444), b"y")]),
             strict)
    assert stat.S_IMODE((strict / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((strict / "f").stat().st_mode) == 0o644
    # a member named with '..' is refused even when it would land inside
    with pytest.raises(StackError, match=r"'share/doc/\.\./\.\./x': '\.\.' in its name"):
        _extract(make_tar(members[-1:]), tmp_path / "dotdot")


def test_unreadable_archives_named(tmp_path):
    data = make_tar([(_info("big"), os.urandom(100_000))])
    with pytest.raises(StackError, match=r"evil\.tar: not a readable tar archive"):
        _extract(data[:50_000], tmp_path / "cut")
    with pytest.raises(StackError, match=r"evil\.tar: not a readable tar archive"):
        _extract(b"\x1f\x8b" + b"junk" * 200, tmp_path / "junk")
