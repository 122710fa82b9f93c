"""Trees thousands of levels deep: no recursion proportional to depth in the publisher."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pycvmfs.errors import PublishError

from helpers.publishing import reader


def _deep_dirs(root: Path, depth: int) -> str:
    """``root/d/d/.../d/leaf`` ``depth`` levels deep, made through directory fds (the whole
    path may be longer than PATH_MAX); the leaf's path relative to ``root``."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"at the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)
    return "d/" * depth + "leaf"


def test_a_tar_member_3000_levels_deep_is_published_and_removed(publisher, tmp_path):
    name = "d/" * 3000 + "leaf"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size = 14
        tf.addfile(ti, io.BytesIO(b"at the bottom\n"))
    (tmp_path / "deep.tar").write_bytes(buf.getvalue())
    with publisher.transaction() as txn:  # 2.4 s here; it was cubic in the depth
        txn.add_tarball(tmp_path / "deep.tar", "/deep")
    with reader(publisher, tmp_path / "cache") as r, r.open_revision() as view:
        assert view.read_bytes("deep/" + name) == b"at the bottom\n"
        assert view.stat("deep/" + "d/" * 2999 + "d").is_dir
    with publisher.transaction() as txn:  # removal walks the 3,000 levels too
        txn.remove("/deep")
    with reader(publisher, tmp_path / "cache2") as r, r.open_revision() as view:
        assert not view.exists("deep")


def test_a_directory_tree_1000_levels_deep(publisher, tmp_path, deep_tmp_path):
    src = deep_tmp_path / "src"
    src.mkdir()
    leaf = _deep_dirs(src, 1000)
    with publisher.transaction() as txn:
        txn.add_tree(src, "/deep")
    with reader(publisher, tmp_path / "cache") as r, r.open_revision() as view:
        assert view.read_bytes("deep/" + leaf) == b"at the bottom\n"


def test_a_directory_tree_deeper_than_path_max_is_refused_by_name(publisher, deep_tmp_path):
    src = deep_tmp_path / "src"
    src.mkdir()
    _deep_dirs(src, 3000)
    before = publisher.head()
    too_long = (r"a path too long for this system \(PATH_MAX 4096\); a tree this deep can be "
                r"published from a tar archive")
    with pytest.raises(PublishError, match=too_long) as err, publisher.transaction() as txn:
        txn.add_tree(src, "/deep")
    assert str(err.value).startswith(f"{src}/d/d/d/")
    assert publisher.head() == before
