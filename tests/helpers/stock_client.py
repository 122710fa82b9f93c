"""The stock CernVM-FS client (``cvmfs2``), built from the upstream source, mounting by hand.

Used by ``tests/stock_client/`` (opt-in: ``PYCVMFS_STOCK_CLIENT`` names the folder holding
``cvmfs2``, ``libcvmfs_fuse3_stub.so``, ``libcvmfs_fuse3.so`` and ``cvmfs_talk``; see
``docs/stock-client.md`` and ``tools/stock-cvmfs.sh``). The client is run directly, as
root, with one configuration file passed by ``-o config=`` (so nothing under ``/etc/cvmfs``
is read or needed) and a cache, a socket folder and a mount point of its own.
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "PYCVMFS_STOCK_CLIENT"


@dataclass
class StockMount:
    """One mounted repository: its mount point and what ``cvmfs_talk`` needs."""

    fqrn: str
    mountpoint: Path
    cache: Path
    client: StockClient

    def talk(self, *command: str) -> str:
        """``cvmfs_talk`` on the mount's control socket (e.g. ``"remount", "sync"``)."""
        sock = self.cache / self.fqrn / f"cvmfs_io.{self.fqrn}"
        out = subprocess.run([str(self.client.talk_binary), "-p", str(sock), *command],
                             capture_output=True, text=True, check=True, timeout=120)
        return out.stdout


class StockClient:
    """The stock client's build folder; :meth:`mount` is a context manager."""

    def __init__(self, build_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(build_dir).resolve()
        self.cvmfs2 = self.dir / "cvmfs2"
        self.talk_binary = self.dir / "cvmfs_talk"
        for p in (self.cvmfs2, self.dir / "libcvmfs_fuse3_stub.so", self.talk_binary):
            if not p.exists():
                raise RuntimeError(f"{ENV}={self.dir}: {p.name} is missing there (build the "
                                   "client with tools/stock-cvmfs.sh build)")

    def version(self) -> str:
        out = subprocess.run([str(self.cvmfs2), "--version"], capture_output=True, text=True,
                             env=self._env(), check=False)
        return (out.stdout or out.stderr).strip()

    def _env(self) -> dict[str, str]:
        return {**os.environ, "CVMFS_LIBRARY_PATH": str(self.dir)}

    @contextlib.contextmanager
    def mount(self, fqrn: str, server_url: str, keys: Path, workdir: Path,
              config: Mapping[str, str] | None = None) -> Iterator[StockMount]:
        """Mount ``fqrn`` from ``server_url`` (``;``-separated, ``@fqrn@`` allowed), trusting
        the ``*.pub`` keys in the folder ``keys``; ``config`` adds or overrides variables."""
        workdir.mkdir(parents=True, exist_ok=True)
        mnt, cache, sockets = workdir / "mnt", workdir / "cache", workdir / "run"
        for d in (mnt, cache, sockets):
            d.mkdir(exist_ok=True)
        settings = {
            "CVMFS_SERVER_URL": server_url,
            "CVMFS_HTTP_PROXY": "DIRECT",
            "CVMFS_KEYS_DIR": str(keys),
            "CVMFS_CACHE_BASE": str(cache),
            "CVMFS_RELOAD_SOCKETS": str(sockets),
            "CVMFS_MOUNT_DIR": "/cvmfs",
            "CVMFS_SHARED_CACHE": "no",
            "CVMFS_QUOTA_LIMIT": "2000",
            "CVMFS_HIDE_MAGIC_XATTRS": "yes",  # listxattr shows only the files' own
            **(config or {}),
        }
        conf = workdir / "client.conf"
        conf.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        proc = subprocess.run(
            [str(self.cvmfs2), "-o", f"config={conf},libfuse=3", fqrn, str(mnt)],
            capture_output=True, text=True, env=self._env(), cwd="/", timeout=120, check=False)
        if proc.returncode != 0 or not os.path.ismount(mnt):
            raise RuntimeError(f"stock cvmfs2 could not mount {fqrn} from {server_url} "
                               f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        try:
            yield StockMount(fqrn, mnt, cache, self)
        finally:
            _unmount(mnt)


def _unmount(mnt: Path) -> None:
    for _ in range(50):
        if not os.path.ismount(mnt):
            return
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            time.sleep(0.2)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def keys_dir(tmp: Path, *pubs: Path) -> Path:
    """A folder ``tmp/keys`` with the given public keys (files, or folders of ``*.pub``)."""
    d = tmp / "keys"
    d.mkdir(exist_ok=True)
    for p in pubs:
        for f in [p] if p.is_file() else sorted(p.glob("*.pub")):
            (d / f.name).write_bytes(f.read_bytes())
    return d


def same_links(desc: dict[str, dict]) -> dict[str, dict]:
    """Inode numbers differ between clients; what must agree is which files share one."""
    groups: dict[int, list[str]] = {}
    for path, e in desc.items():
        if "ino" in e:
            groups.setdefault(e["ino"], []).append(path)
    out = copy.deepcopy(desc)
    for e in out.values():
        if "ino" in e:
            e["ino"] = sorted(groups[e["ino"]])
    return out
