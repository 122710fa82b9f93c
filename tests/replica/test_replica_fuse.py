"""The FUSE mount reads a replica made by our snapshot, served over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pycvmfs.server.http import RepositoryServer

from helpers.mount_walk import assert_matches_expected, walk_mount
from helpers.replica import GOLDEN_FQRN

FUSE_OK = os.path.exists("/dev/fuse") and os.geteuid() == 0
if not FUSE_OK and os.environ.get("CI"):
    raise RuntimeError("CI needs /dev/fuse and root for the FUSE tests")
pytestmark = pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and root")

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


@pytest.fixture
def mounted(tmp_path):
    """``mount(url, key, *opts)`` -> mount point; unmounted at teardown."""
    points: list[Path] = []

    def mount(url: str, key: Path, *opts: str) -> Path:
        n = len(points)
        mp = tmp_path / f"mnt{n}"
        mp.mkdir()
        res = subprocess.run([*CLI, "mount", GOLDEN_FQRN, str(mp), "--server-url", url, "-k",
                              str(key), "--cache-dir", str(tmp_path / f"cache{n}"),
                              "--log-file", str(tmp_path / f"mount{n}.log"), *opts],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        points.append(mp)
        return mp

    yield mount
    for mp in points:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], check=False)


@pytest.mark.parametrize(("opts", "tree"), [((), "rev2"), (("--tag", "v1"), "rev1")])
def test_the_mount_of_the_replica_matches_expected(golden_replica, golden_keys, golden_expected,
                                                   mounted, opts, tree):
    dest, _report = golden_replica
    with RepositoryServer({GOLDEN_FQRN: dest}) as srv:
        mp = mounted(srv.repository_url(GOLDEN_FQRN), golden_keys, *opts)
        assert_matches_expected(walk_mount(mp), golden_expected["trees"][tree]["entries"])
        assert os.getxattr(mp, "user.revision") == (b"3" if tree == "rev2" else b"2")
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
