"""``pycvmfs get``: bytes progress of a total counted first, opt-in flags, refusals in one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.progress import bytes_line

FQRN = "get.example.org"
BIG = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A repository with a setuid file, a FIFO and a user and a trusted xattr: URL and key."""
    base = tmp_path_factory.mktemp("get-cli")
    settings = ServerSettings()
    settings.include_xattrs = True
    pub = Publisher.mkfs(FQRN, base / "srv" / FQRN, config_dir=base / "etc", settings=settings)
    with pub.transaction() as txn:
        txn.add_file("/t/big.bin", BIG)
        txn.add_file("/t/setuid", b"#!/bin/sh\n", mode=0o4755)
        txn.special("/t/fifo", stat.S_IFIFO)
        txn.add_file("/t/attrs", b"x", xattrs={b"user.u": b"1", b"trusted.t": b"2"})
    return [str(pub.config.storage), "-k", str(pub.config.key_path("pub"))]


def test_get_reports_bytes_of_the_total_counted_first(pycvmfs, cli_env, repo, tmp_path):
    env = cli_env()
    env["PYCVMFS_PROGRESS"] = "1"
    r = pycvmfs("get", repo[0], "/t", tmp_path / "out", *repo[1:], "--json", env=env)
    total = r.json()["bytes"]
    assert total == len(BIG) + len(b"#!/bin/sh\n") + 1
    m = bytes_line(r.stderr, "exporting")
    assert m.group(1) == m.group(2) == f"{total / 1e6:.1f} MB", r.stderr


def test_setid_bits_specials_and_trusted_xattrs_only_with_their_flags(pycvmfs, repo, tmp_path):
    plain, full = tmp_path / "plain", tmp_path / "full"
    r, _ = pycvmfs.many(("get", repo[0], "/t", plain, *repo[1:]),
                        ("get", repo[0], "/t", full, *repo[1:], "--preserve-setid",
                         "--specials", "--xattrs-include", "trusted.*"))
    assert "pycvmfs: warning: /t/fifo: fifo skipped (use --specials)" in r.stderr
    assert stat.S_IMODE((plain / "setuid").stat().st_mode) == 0o755
    assert not os.path.lexists(plain / "fifo")
    assert os.listxattr(plain / "attrs") == ["user.u"]
    assert stat.S_IMODE((full / "setuid").stat().st_mode) == 0o4755
    assert stat.S_ISFIFO((full / "fifo").lstat().st_mode)
    assert sorted(os.listxattr(full / "attrs")) == ["trusted.t", "user.u"]
    pycvmfs("get", repo[0], "/t", tmp_path / "none", *repo[1:], "--no-xattrs")
    assert os.listxattr(tmp_path / "none" / "attrs") == []


def test_a_directory_in_the_way_is_one_error_line_and_kept(pycvmfs, repo, tmp_path: Path):
    dest = tmp_path / "out"
    (dest / "big.bin").mkdir(parents=True)
    (dest / "big.bin" / "mine").write_bytes(b"mine")
    r = pycvmfs("get", repo[0], "/t", dest, *repo[1:], expect=1)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("pycvmfs: error: "), r.stderr
    assert f"{dest / 'big.bin'}: a directory is in the way of file /t/big.bin" in r.stderr
    assert (dest / "big.bin" / "mine").read_bytes() == b"mine"
