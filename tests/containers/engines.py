"""Container engines the tests run images with: bubblewrap on a flat tree, podman on an
additional image store (as root; runc and cgroupfs, because crun fails on this VM's hybrid
cgroups and root cannot raise RLIMIT_NOFILE here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from containers.conftest import require_tool

PODMAN_RUN = ["run", "--rm", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--network", "none"]


def bwrap(root: str | os.PathLike, argv: list[str], env: dict[str, str],
          timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``argv`` in the read-only root file system ``root`` (as a job runs a flat image)."""
    require_tool("bwrap")
    cmd = ["bwrap", "--ro-bind", str(root), "/", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", "--clearenv"]
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=timeout,
                          check=False)


def podman(work: Path, store: str | os.PathLike, *args: str,
           timeout: float = 180) -> subprocess.CompletedProcess:
    """podman with a private graph root under ``work`` whose storage.conf adds ``store`` as
    an additional image store (``--root`` would drop the configuration's stores)."""
    require_tool("podman")
    conf = work / "storage.conf"
    if not conf.exists():
        work.mkdir(parents=True, exist_ok=True)
        conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/graph"\n'
                        f'runroot = "{work}/run"\n[storage.options]\n'
                        f'additionalimagestores = ["{store}"]\n')
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(conf))
    return subprocess.run(["podman", "--tmpdir", str(work / "libpod"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
