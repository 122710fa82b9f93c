"""``get`` against hostile names and destinations: nothing outside the destination is created,
written, chmod-ed or deleted, nothing inside is followed, and odd bits are opt-in."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from pycvmfs.client.export import ExportOptions, export_tree
from pycvmfs.client.view import RevisionView
from pycvmfs.errors import CvmfsError
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.publishing import reader

FQRN = "hostile.example.org"
MTIME = 1_700_000_000


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """Where the export goes (``dest``, holding a file of the user's) next to ``outside``."""
    a = tmp_path / "area"
    (a / "outside").mkdir(parents=True)
    (a / "outside" / "victim.txt").write_bytes(b"precious\n")
    os.chmod(a / "outside", 0o750)
    (a / "dest").mkdir()
    (a / "dest" / "keep.txt").write_bytes(b"the user's\n")
    return a


def _state(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its type, mode and content (symlinks not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode, data, link)
    return out


@pytest.fixture
def repo(tmp_path: Path, area: Path):
    """A signed repository: /d with a subdirectory, a file, a symlink to ``outside``."""
    pub = Publisher.mkfs(FQRN, tmp_path / "srv" / FQRN, config_dir=tmp_path / "etc",
                         settings=ServerSettings())
    with pub.transaction() as txn:
        txn.add_file("/d/sub/f.txt", b"from the repository\n", mtime=MTIME)
        txn.add_file("/d/file.txt", b"file content\n", mtime=MTIME)
        txn.symlink("/d/lnk", str(area / "outside"), mtime=MTIME)
    with reader(pub, tmp_path / "cache") as r:
        yield r


def _renaming(view: RevisionView, renames: dict[bytes, bytes]) -> RevisionView:
    """The view with some entries' names replaced, their paths kept: what a catalog row whose
    name column was edited would give if the catalog reader let it through (it refuses them
    today: the export must not depend on that)."""
    real = view._stat

    def hostile_stat(path, entry, lc):
        if entry.name in renames:
            entry = dataclasses.replace(entry, name=renames[entry.name])
        return real(path, entry, lc)

    view._stat = hostile_stat
    return view


@pytest.mark.parametrize("renames", [
    {b"sub": b".."},                        # its files would land next to dest
    {b"lnk": b"../escape"},                 # a symlink made outside dest
    {b"file.txt": b"lnk/owned"},      # written through the symlink made just before
    {b"file.txt": b""},                     # dest itself: was removed with all it held
    {b"file.txt": b"."},
    {b"lnk": b"sub"},                       # twice: a link to outside, then files below it
    {b"file.txt": b"a\0b"},
], ids=["dotdot-dir", "dotdot-slash", "slash", "empty", "dot", "duplicate", "nul"])
def test_names_that_are_not_one_component_or_repeat_are_refused_before_any_write(
        repo, area, renames):
    before = _state(area)
    with repo.open_revision() as view, pytest.raises(CvmfsError) as e:
        export_tree(_renaming(view, renames), "/d", area / "dest")
    assert "/d" in str(e.value)
    assert _state(area) == before  # nothing outside dest changed, nothing inside written


def test_a_symlink_planted_at_the_old_temporary_name_is_not_written_through(repo, area):
    dest = area / "dest"
    os.symlink(area / "outside" / "victim.txt", dest / ".file.txt.pycvmfs-partial")
    os.symlink(area / "outside" / "victim.txt", dest / ".pycvmfs-partial")
    with repo.open_revision() as view:
        export_tree(view, "/d", dest)
    assert (area / "outside" / "victim.txt").read_bytes() == b"precious\n"
    assert (dest / "file.txt").read_bytes() == b"file content\n"
    assert not (dest / "file.txt").is_symlink()
    assert sorted(n for n in os.listdir(dest) if n.startswith(".")) == [
        ".file.txt.pycvmfs-partial", ".pycvmfs-partial"]  # left alone, no temporaries left


def test_symlinks_already_in_dest_are_replaced_never_followed(repo, area):
    dest = area / "dest"
    os.symlink(area / "outside", dest / "sub")  # where the repository has a directory
    os.symlink(area / "outside" / "victim.txt", dest / "file.txt")  # where it has a file
    before = _state(area / "outside")
    with repo.open_revision() as view:
        export_tree(view, "/d", dest)
    assert _state(area / "outside") == before
    assert stat.S_IMODE((area / "outside").stat().st_mode) == 0o750
    assert (dest / "sub").is_dir() and not (dest / "sub").is_symlink()
    assert (dest / "sub" / "f.txt").read_bytes() == b"from the repository\n"
    assert (dest / "file.txt").read_bytes() == b"file content\n"
    assert os.readlink(dest / "lnk") == str(area / "outside")
    assert (dest / "keep.txt").read_bytes() == b"the user's\n"  # merged into, not emptied


def test_a_directory_in_the_way_of_a_file_is_an_error_and_is_kept(repo, area):
    dest = area / "dest"
    (dest / "file.txt").mkdir()
    (dest / "file.txt" / "mine").write_bytes(b"mine\n")
    with repo.open_revision() as view, pytest.raises(CvmfsError) as e:
        export_tree(view, "/d", dest)
    assert str(dest / "file.txt") in str(e.value) and "/d/file.txt" in str(e.value)
    assert (dest / "file.txt" / "mine").read_bytes() == b"mine\n"
    assert not [n for n in os.listdir(dest) if n.startswith(".pycvmfs-")]


@pytest.fixture
def odd_repo(tmp_path: Path):
    """setuid/setgid/sticky bits, a FIFO, a device (as root) and xattrs of every namespace."""
    settings = ServerSettings()
    settings.include_xattrs = True
    pub = Publisher.mkfs(FQRN, tmp_path / "srv" / FQRN, config_dir=tmp_path / "etc",
                         settings=settings)
    with pub.transaction() as txn:
        txn.add_file("/t/setuid", b"#!/bin/sh\n", mode=0o4755, mtime=MTIME)
        txn.add_file("/t/setgid", b"x", mode=0o2755, mtime=MTIME)
        txn.mkdir("/t/sticky", mode=0o1777, mtime=MTIME)
        txn.special("/t/fifo", stat.S_IFIFO, mode=0o666)
        txn.special("/t/null", stat.S_IFCHR, mode=0o666, rdev=os.makedev(1, 3))
        txn.add_file("/t/attrs", b"x", mtime=MTIME, xattrs={
            b"user.kept": b"1", b"trusted.t": b"2", b"security.s": b"3"})
    with reader(pub, tmp_path / "cache") as r:
        yield r


def _xattr_names(path: Path) -> set[str]:
    return set(os.listxattr(path, follow_symlinks=False))


def test_setid_bits_devices_fifos_and_system_xattrs_are_opt_in(odd_repo, tmp_path):
    with odd_repo.open_revision() as view:
        report = export_tree(view, "/t", tmp_path / "plain")
    plain = tmp_path / "plain"
    assert stat.S_IMODE((plain / "setuid").stat().st_mode) == 0o755
    assert stat.S_IMODE((plain / "setgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((plain / "sticky").stat().st_mode) == 0o777
    assert not os.path.lexists(plain / "fifo") and not os.path.lexists(plain / "null")
    assert report.skipped == 2 and any("--devices" in w for w in report.warnings)
    got = _xattr_names(plain / "attrs")
    assert "trusted.t" not in got and "security.s" not in got
    assert "user.kept" in got or any("user.kept" in w for w in report.warnings)

    opts = ExportOptions(preserve_setid=True, devices=True, specials=True,
                         xattr_include=("user.*", "trusted.*", "security.*"))
    with odd_repo.open_revision() as view:
        report = export_tree(view, "/t", tmp_path / "all", options=opts)
    full = tmp_path / "all"
    assert stat.S_IMODE((full / "setuid").stat().st_mode) == 0o4755
    assert stat.S_IMODE((full / "setgid").stat().st_mode) == 0o2755
    assert stat.S_IMODE((full / "sticky").stat().st_mode) == 0o1777
    assert stat.S_ISFIFO((full / "fifo").lstat().st_mode)
    assert stat.S_IMODE((full / "fifo").lstat().st_mode) == 0o666  # not cut by the umask
    if os.geteuid() == 0:
        assert stat.S_ISCHR((full / "null").lstat().st_mode)
    got = _xattr_names(full / "attrs")
    for name in ("trusted.t", "security.s"):
        assert name in got or any(name in w for w in report.warnings)


def _read_down(top: Path, names: list[str], leaf: str) -> bytes:
    """``leaf`` below the chain of directories ``names`` under ``top``, one openat a level
    (the whole path is longer than PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        fd, parent = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), fd
        os.close(parent)
    with open(leaf, "rb", opener=lambda path, flags: os.open(path, flags, dir_fd=fd)) as f:
        data = f.read()
    os.close(fd)
    return data


def test_a_1000_deep_chain_longer_than_path_max_exports(tmp_path, deep_tmp_path):
    """No recursion, no walk from the root per directory, no absolute paths (the chain's path,
    5,000 bytes, is longer than PATH_MAX; a 1,000-deep export took 121-412 s before, 0.3-0.9 s
    now: benchmarks/deep_trees.py)."""
    chain = ["dddd"] * 1000
    pub = Publisher.mkfs(FQRN, tmp_path / "srv" / FQRN, config_dir=tmp_path / "etc",
                         settings=ServerSettings())
    with pub.transaction() as txn:
        txn.add_file("/" + "/".join([*chain, "leaf.txt"]), b"at the bottom\n")
    out = deep_tmp_path / "out"
    with reader(pub, tmp_path / "cache") as r, r.open_revision() as view:
        report = export_tree(view, "/", out)
    assert (report.dirs, report.files) == (1001, 2)  # and new_repository
    assert _read_down(out, chain, "leaf.txt") == b"at the bottom\n"
