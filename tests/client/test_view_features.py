"""Reader features the golden fixture lacks, on small signed repositories built for the test."""

from __future__ import annotations

import os
import stat

import pytest

from pycvmfs.client.export import ExportOptions, export_tree
from pycvmfs.client.repository import open_repository
from pycvmfs.errors import NoSuchAttributeError, NotADirectoryPathError, TooManySymlinksError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm

from helpers.synthetic import Node, build_repository

FQRN = "synthetic.example.org"


def _tree() -> dict[str, Node]:
    big = bytes(range(256)) * 2000  # 512000 bytes
    return {
        "hl/a": Node("file", b"shared content\n", hardlink_group=1),
        "hl/b": Node("file", b"shared content\n", hardlink_group=1),
        "hl/c": Node("file", b"shared content\n", hardlink_group=1),
        "hl/other": Node("file", b"shared content\n"),
        "var/arch-link": Node("symlink", target=b"../arch/$(PYCVMFS_TEST_ARCH:-i686)/lib"),
        "arch/x86_64/lib": Node("file", b"x86 library\n"),
        "arch/i686/lib": Node("file", b"i686 library\n"),
        "dev/fifo": Node("fifo", perm=0o600),
        "dev/null": Node("chardev", perm=0o666, rdev=os.makedev(1, 3)),
        "dev/sda": Node("blockdev", perm=0o660, rdev=os.makedev(8, 0)),
        ".cvmfs": Node("dir", perm=0o755, hidden=True),
        "loop/a": Node("symlink", target=b"b"),
        "loop/b": Node("symlink", target=b"a"),
        "setuid": Node("file", b"#!/bin/sh\n", perm=0o4755),
        "attrs": Node("dir", perm=0o755, xattrs={b"user.dir": b"on a directory"}),
        "sub": Node("dir", perm=0o755, nested=True),
        "sub/.cvmfscatalog": Node("file"),
        "sub/big.bin": Node("file", big),
        "sub/deeper": Node("dir", perm=0o750, nested=True),
        "sub/deeper/.cvmfscatalog": Node("file"),
        "sub/deeper/f": Node("file", b"deep\n", xattrs={b"user.k": b"\x00\xff"}),
        "subzero": Node("file", b"shares a prefix with /sub\n"),
    }


CHUNKS = ChunkingParams(65536, 131072, 262144)


@pytest.fixture(params=[(Algorithm.SHA1, Compression.ZLIB), (Algorithm.RMD160, Compression.NONE),
                        (Algorithm.SHAKE128, Compression.ZLIB)],
                ids=["sha1-zlib", "rmd160-none", "shake128-zlib"])
def built(request, tmp_path):
    algo, comp = request.param
    return build_repository(tmp_path / FQRN, FQRN, _tree(), algorithm=algo, compression=comp,
                            chunking=CHUNKS)


@pytest.fixture
def view(built, tmp_path, monkeypatch):
    monkeypatch.delenv("PYCVMFS_TEST_ARCH", raising=False)
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=tmp_path / "cache")
    v = repo.open_revision()
    yield v
    v.close()
    repo.close()


def test_hard_link_group_members_share_an_inode_and_count(view):
    a, b, c, other = (view.stat(f"hl/{n}") for n in ("a", "b", "c", "other"))
    assert a.st_ino == b.st_ino == c.st_ino != other.st_ino
    assert a.st_nlink == 3 and other.st_nlink == 1
    assert view.read_bytes("hl/b") == b"shared content\n"


def test_variant_symlink_follows_the_environment(view, monkeypatch):
    assert view.readlink("var/arch-link") == "../arch/i686/lib"
    assert view.readlink("var/arch-link", expand=False) == "../arch/$(PYCVMFS_TEST_ARCH:-i686)/lib"
    assert view.lstat("var/arch-link").st_size == len("../arch/i686/lib")
    assert view.read_bytes("var/arch-link") == b"i686 library\n"
    monkeypatch.setenv("PYCVMFS_TEST_ARCH", "x86_64")
    assert view.read_bytes("var/arch-link") == b"x86 library\n"
    assert view.lstat("var/arch-link").st_size == len("../arch/x86_64/lib")


def test_special_files_report_their_type_and_device(view):
    fifo, null, sda = view.lstat("dev/fifo"), view.lstat("dev/null"), view.lstat("dev/sda")
    assert stat.S_ISFIFO(fifo.st_mode) and fifo.st_size == 0 and fifo.type == "fifo"
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and null.st_size == 0
    assert stat.S_ISBLK(sda.st_mode) and sda.st_rdev == os.makedev(8, 0)
    with pytest.raises(FileNotFoundError):
        view.open("dev/fifo")


def test_hidden_entries_are_not_listed_but_can_be_looked_up(view):
    assert ".cvmfs" not in view.listdir("/")
    assert ".cvmfs" in [s.name for s in view.scandir("/", include_hidden=True)]
    assert view.stat(".cvmfs").is_dir


def test_symlink_loops_and_files_as_directories_fail_clearly(view):
    with pytest.raises(TooManySymlinksError):
        view.stat("loop/a")
    with pytest.raises(NotADirectoryPathError):
        view.stat("setuid/x")


def test_mode_bits_and_xattrs_on_directories(view):
    assert view.stat("setuid").permissions == 0o4755
    assert view.xattrs("attrs") == {"user.dir": b"on a directory"}
    assert view.getxattr("sub/deeper/f", "user.k") == b"\x00\xff"
    with pytest.raises(NoSuchAttributeError):
        view.getxattr("sub/deeper/f", "user.missing")


def test_nested_catalogs_and_prefix_siblings(view, built):
    assert view.read_bytes("subzero") == b"shares a prefix with /sub\n"  # /sub vs /subzero
    assert view.loaded_catalog_count() == 1
    assert view.read_bytes("sub/deeper/f") == b"deep\n"
    assert view.loaded_catalog_count() == 3
    assert view.stat("sub/deeper").permissions == 0o750
    data = view.read_bytes("sub/big.bin")
    assert data == bytes(range(256)) * 2000
    chunks = view.chunks("sub/big.bin")
    assert sum(c.size for c in chunks) == len(data)
    assert all(c.hash.algorithm is built.manifest.root_catalog.algorithm for c in chunks)


def test_compression_and_algorithm_come_from_each_entry(view, built):
    s = view.stat("hl/a")
    assert s.hash.algorithm is built.manifest.root_catalog.algorithm
    expected = Compression.NONE if s.hash.algorithm is Algorithm.RMD160 else Compression.ZLIB
    assert s.compression is expected


def test_export_recreates_hard_links_devices_modes_and_xattrs(view, tmp_path):
    dest = tmp_path / "out"
    everything = ExportOptions(preserve_setid=True, devices=True, specials=True)
    report = export_tree(view, "/", dest, options=everything)
    assert os.stat(dest / "hl/a").st_ino == os.stat(dest / "hl/b").st_ino
    assert os.stat(dest / "hl/a").st_nlink == 3 and report.hardlinks == 2
    assert stat.S_ISFIFO(os.lstat(dest / "dev/fifo").st_mode)
    assert os.readlink(dest / "var/arch-link") == "../arch/i686/lib"
    assert (dest / "sub/big.bin").read_bytes() == bytes(range(256)) * 2000
    assert stat.S_IMODE(os.stat(dest / "setuid").st_mode) == 0o4755
    assert os.stat(dest / "sub/deeper").st_mtime == 1_700_000_000
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(dest / "dev/null").st_mode)
        assert os.lstat(dest / "dev/null").st_rdev == os.makedev(1, 3)
    else:
        assert any("dev/null" in w for w in report.warnings)
    try:
        assert os.getxattr(dest / "sub/deeper/f", "user.k") == b"\x00\xff"
    except OSError:  # file systems without user xattrs get a warning instead
        assert any("user.k" in w for w in report.warnings)
    assert not (dest / ".cvmfs").exists()  # hidden entries are not exported


def test_raw_symlink_export_keeps_variables(view, tmp_path):
    export_tree(view, "var", tmp_path / "raw", raw_symlinks=True)
    assert os.readlink(tmp_path / "raw/arch-link") == "../arch/$(PYCVMFS_TEST_ARCH:-i686)/lib"
