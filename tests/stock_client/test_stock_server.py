"""Repositories written by the stock ``cvmfs_server`` (not the golden fixture: made here, with
the stock defaults), read by pycvmfs: the library, the FUSE mount while its first server dies,
and a pycvmfs stratum 1 mounted by the stock client. The stock client's own view of each
revision is the oracle.

Needs the stock server tools installed on a throwaway machine (``tools/stock-cvmfs.sh``:
root, Apache on port 80, OverlayFS) and ``PYCVMFS_STOCK_SERVER=1``; see
``docs/stock-client.md``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.server.http import RepositoryServer
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage

from helpers.daemons import stop_process
from helpers.fuse import mount
from helpers.publishing import describe_tree, describe_view
from helpers.stock_client import ENV, StockClient, keys_dir, same_links
from helpers.webservers import nginx_server

FQRN = "pycvmfs-check.example.org"
STORAGE = Path("/srv/cvmfs") / FQRN
KEY = Path("/etc/cvmfs/keys") / f"{FQRN}.pub"
S0_URL = f"http://127.0.0.1/cvmfs/{FQRN}"  # the stock stratum 0's Apache


def _server(*args: str) -> str:
    out = subprocess.run(["cvmfs_server", *args], capture_output=True, text=True, check=False,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"cvmfs_server {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def _write_tree(root: Path, revision: int) -> None:
    """Content for the stock publisher: every kind of entry, a large file it chunks with its
    default 4/8/16 MiB sizes, a nested catalog, many small files."""
    (root / "sw" / "lib").mkdir(parents=True, exist_ok=True)
    (root / "sw" / ".cvmfscatalog").write_bytes(b"")
    rnd = os.urandom(1 << 20)
    (root / "sw" / "lib" / "big.so").write_bytes(rnd * 22 + bytes([revision]) * 1000)
    for i in range(300):
        (root / "sw" / "lib" / f"small-{i:03d}.py").write_text(f"x = {i * revision}\n" * 20)
    (root / "sw" / "bin").mkdir(exist_ok=True)
    script = root / "sw" / "bin" / "run.sh"
    script.write_text("#!/bin/sh\necho run\n")
    script.chmod(0o755)
    (root / "sw" / "bin" / "run-link").unlink(missing_ok=True)
    (root / "sw" / "bin" / "run-link").symlink_to("run.sh")
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "ünïcødé файл 日本.txt").write_text("names\n")
    (root / "docs" / "empty").write_bytes(b"")
    os.setxattr(root / "docs" / "empty", "user.note", b"an xattr")
    (root / f"revision-{revision}.txt").write_text(f"revision {revision}\n")
    if revision > 1:
        for i in range(0, 300, 7):
            (root / "sw" / "lib" / f"small-{i:03d}.py").unlink()
        shutil.rmtree(root / "docs")


@pytest.fixture(scope="module")
def stock_repo():
    """``FQRN`` made by ``cvmfs_server mkfs`` (garbage-collectable, xattrs on), two
    revisions tagged v1 and v2; removed afterwards."""
    if Path("/etc/cvmfs/repositories.d", FQRN).exists():
        _server("rmfs", "-f", FQRN)
    _server("mkfs", "-o", "root", "-z", FQRN)
    conf = Path("/etc/cvmfs/repositories.d", FQRN, "server.conf")
    conf.write_text(conf.read_text() + "CVMFS_INCLUDE_XATTRS=true\n")
    try:
        for revision, tag in ((1, "v1"), (2, "v2")):
            _server("transaction", FQRN)
            _write_tree(Path("/cvmfs", FQRN), revision)  # into the stock union file system
            _server("publish", FQRN)
            _server("tag", "-a", tag, FQRN)
        _server("check", "-c", FQRN)
        yield FQRN
    finally:
        _server("rmfs", "-f", FQRN)


@pytest.fixture(scope="module")
def oracle(stock_repo, stock, tmp_path_factory):
    """What the stock client shows of v1 and of v2 (the head)."""
    views = {}
    for tag in ("v1", "v2"):
        work = tmp_path_factory.mktemp(f"oracle-{tag}")
        with stock.mount(FQRN, S0_URL, keys_dir(work, KEY), work,
                         {"CVMFS_REPOSITORY_TAG": tag}) as m:
            views[tag] = same_links(describe_tree(m.mountpoint))
    assert "revision-1.txt" in views["v1"] and "revision-2.txt" in views["v2"]
    assert int(views["v2"]["sw/lib/big.so"]["size"]) > 20 << 20
    return views


@pytest.fixture(scope="module")
def stock(stock_repo):
    return StockClient(os.environ[ENV])


@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_the_pycvmfs_reader_sees_what_the_stock_client_sees(oracle, tmp_path, tag):
    with open_repository(S0_URL, keys=[KEY], cache_dir=tmp_path / "c") as repo, \
            repo.open_revision(tag=tag) as view:
        assert same_links(describe_view(view)) == oracle[tag]


def test_the_pycvmfs_mount_reads_everything_while_its_first_server_dies(oracle, tmp_path):
    """Issue 4's "done when": the mount on a stock-written repository, its serving server
    killed mid-read while a second one is configured."""
    with nginx_server(STORAGE.parent) as first, \
            RepositoryServer({FQRN: STORAGE}) as second:
        urls = f"{first.url}/{FQRN};{second.repository_url(FQRN)}"
        mp = mount(FQRN, tmp_path / "mnt", urls, KEY, tmp_path / "cache",
                   "--hide-magic-xattrs", log_file=tmp_path / "mount.log")
        try:
            with open(mp / "sw" / "lib" / "big.so", "rb") as f:
                head = f.read(1 << 20)  # a first chunk, from the first server
                assert os.getxattr(mp, "user.host").decode().startswith(first.url)
                stop_process(first.proc)  # killed mid-read
                rest = f.read()
            got = same_links(describe_tree(mp))
            assert got == oracle["v2"]
            assert len(head + rest) == got["sw/lib/big.so"]["size"]
            assert os.getxattr(mp, "user.host").decode().startswith(second.url)
            assert int(os.getxattr(mp, "user.nioerr")) > 0
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)


@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_the_stock_client_mounts_a_pycvmfs_stratum1_of_it(oracle, stock, tmp_path, tag):
    src = HttpSource([S0_URL])
    try:
        report = snapshot(src, LocalStorage(tmp_path / "s1" / FQRN), FQRN, [KEY],
                          state_dir=tmp_path / "state")
    finally:
        src.close()
    assert "v1" in report.tags
    with RepositoryServer({FQRN: tmp_path / "s1" / FQRN}) as srv, \
            stock.mount(FQRN, srv.repository_url(FQRN), keys_dir(tmp_path, KEY),
                        tmp_path / "m", {"CVMFS_REPOSITORY_TAG": tag}) as m:
        assert same_links(describe_tree(m.mountpoint)) == oracle[tag]
