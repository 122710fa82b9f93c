"""Every name the format allows (255 bytes, not UTF-8) through publish, get, the mount, snapshot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.server.http import RepositoryServer

from helpers.fuse import CLI, mount, needs_fuse
from helpers.publishing import describe_tree

FQRN = "names.example.org"
LONG = b"L" * 255  # NAME_MAX
LONG_DIR = b"D" * 254 + b"\xff"  # 255 bytes, not UTF-8 either
LATIN1 = b"caf\xe9"  # not UTF-8
MTIME = 1_700_000_000


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _source(root: Path) -> Path:
    """A tree whose names and symlink targets are the longest and oddest the format allows."""
    src = os.fsencode(root)
    os.mkdir(src)
    _write(src + b"/" + LONG, b"long name\n")
    _write(src + b"/" + LATIN1, b"latin-1 name\n")
    os.mkdir(src + b"/" + LONG_DIR)
    _write(src + b"/" + LONG_DIR + b"/" + LONG, b"long in long\n" * 1000)
    os.link(src + b"/" + LONG_DIR + b"/" + LONG, src + b"/" + LONG_DIR + b"/" + b"M" * 255)
    os.symlink(LONG_DIR + b"/" + LATIN1, src + b"/" + b"S" * 255)
    os.mkdir(src + b"/" + LATIN1 + b".d")
    _write(src + b"/" + LATIN1 + b".d/" + b"\x80\xfe" * 127 + b"x", b"odd bytes\n")
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for name in dirnames + filenames + [b""]:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    return root


def _shape(root: Path) -> dict:
    """describe_tree without inode numbers (they differ from tree to tree)."""
    tree = describe_tree(root)
    for e in tree.values():
        e.pop("ino", None)
    return tree


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Publisher, Path]:
    base = tmp_path_factory.mktemp("names")
    src = _source(base / "src")
    pub = Publisher.mkfs(FQRN, base / "srv" / FQRN, config_dir=base / "etc",
                         settings=ServerSettings())
    with pub.transaction() as txn:
        txn.add_tree(src, "/", delete=True)
    return pub, src


@pytest.fixture(scope="module")
def served(published):
    pub, _src = published
    with RepositoryServer({FQRN: pub.config.storage}) as srv:
        yield srv.repository_url(FQRN)


def _pycvmfs(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return res


def test_get_exports_255_byte_and_non_utf8_names(published, served, tmp_path):
    pub, src = published
    out = tmp_path / "out"
    _pycvmfs("get", served, "/", out, "-k", pub.config.key_path("pub"),
             "--cache-dir", tmp_path / "cache")
    assert _shape(out) == _shape(src)
    linked = os.fsencode(out) + b"/" + LONG_DIR + b"/"
    assert os.stat(linked + LONG).st_ino == os.stat(linked + b"M" * 255).st_ino
    assert not [n for n in os.listdir(out) if n.startswith(".pycvmfs-")]


def test_get_of_one_255_byte_file_into_a_directory(published, served, tmp_path):
    pub, _src = published
    into = tmp_path / "into"
    into.mkdir()
    _pycvmfs("get", served, os.fsdecode(b"/" + LONG_DIR + b"/" + LONG), into,
             "-k", pub.config.key_path("pub"), "--cache-dir", tmp_path / "cache")
    assert os.listdir(os.fsencode(into)) == [LONG]
    with open(os.fsencode(into) + b"/" + LONG, "rb") as f:
        assert f.read() == b"long in long\n" * 1000


def test_snapshot_then_get_from_the_replica(published, served, tmp_path):
    pub, src = published
    replica = tmp_path / "s1" / FQRN
    _pycvmfs("snapshot", served, replica, "-k", pub.config.key_path("pub"),
             "--state-dir", tmp_path / "state")
    out = tmp_path / "out"
    _pycvmfs("get", replica, "/", out, "-k", pub.config.key_path("pub"),
             "--cache-dir", tmp_path / "cache")
    assert _shape(out) == _shape(src)


@needs_fuse
def test_the_mount_lists_and_reads_every_name(published, served, tmp_path):
    pub, src = published
    mp = mount(FQRN, tmp_path / "mnt", served, pub.config.key_path("pub"), tmp_path / "cache")
    try:
        assert _shape(mp) == _shape(src)
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=False)
