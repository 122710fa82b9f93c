"""FUSE test modules' shared pieces: the /dev/fuse-and-root gate and ``pycvmfs mount``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

FUSE_OK = os.path.exists("/dev/fuse") and os.geteuid() == 0
if not FUSE_OK and os.environ.get("CI"):
    raise RuntimeError("CI needs /dev/fuse and root for the FUSE tests")
#: ``pytestmark = needs_fuse`` (or a decorator) in the modules that mount
needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and root")

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


def mount(fqrn: str, mp: Path, url: str, key: str | os.PathLike[str], cache_dir: Path,
          *options: str, log_file: Path | None = None) -> Path:
    """``pycvmfs mount`` of ``url`` at ``mp`` (created); asserts that it succeeded."""
    mp.mkdir()
    log = ["--log-file", str(log_file)] if log_file is not None else []
    res = subprocess.run([*CLI, "mount", fqrn, str(mp), "--server-url", url, "-k", str(key),
                          "--cache-dir", str(cache_dir), *log, *options],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return mp


def pid_alive(pid: int) -> bool:
    """Running (a zombie, which nobody may reap in a container, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def eventually(predicate, seconds: float = 10.0) -> bool:
    """Whether ``predicate()`` becomes true within ``seconds`` (polled every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
