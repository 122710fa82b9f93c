"""The stock CernVM-FS tools in the benchmarks: measuring child processes (CPU of all they
start, peak RSS), a throwaway stock repository and stratum 1 (``cvmfs_server``), finding the
stock client (``cvmfs2``).

The tools are built and installed by ``tools/stock-cvmfs.sh`` (docs/stock-client.md). Nothing
here is needed when they are absent: :func:`stock_server` and :func:`stock_client_dir` then
answer ``None`` and the benchmarks say so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLIENT_ENV = "PYCVMFS_STOCK_CLIENT"  # as tests/helpers/stock_client.py


@dataclass
class Measured:
    """One finished child process: wall seconds, CPU seconds (user + system of it and of every
    process it started, waited for or not), the peak RSS of its largest process, what it
    printed."""

    seconds: float
    cpu: float
    maxrss: int
    output: str
    largest: str = "?"  # the name of the process whose peak RSS is maxrss
    anon: int = 0  # the largest anonymous resident memory sampled in one process (no file pages)


class ProcessGroup:
    """A cgroup (v2: the unified hierarchy) of our own for one measured command: its CPU time
    counts every process the command starts, also those nobody waits for (pycvmfs's forkserver
    workers, the client ``cvmfs_server publish`` remounts); a thread samples the VmHWM of each
    member. Without a writable cgroup v2 hierarchy, :meth:`create` answers None."""

    _count = 0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak = 0
        self.largest = "?"
        self.anon = 0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    @classmethod
    def create(cls) -> ProcessGroup | None:
        for base in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
            if (base / "cgroup.procs").exists() and (base / "cpu.stat").exists():
                cls._count += 1
                path = base / f"pycvmfs-bench-{os.getpid()}-{cls._count}"
                try:
                    path.mkdir()
                except OSError:
                    return None
                return cls(path)
        return None

    def join_me(self) -> None:
        """Move the calling process in (a ``preexec_fn``: the command runs inside)."""
        fd = os.open(self.path / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def start_sampling(self) -> None:
        self._sampler.start()

    def cpu(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return 0.0

    def _members(self) -> list[int]:
        return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            for pid in self._members():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    hwm = int(status.split("VmHWM:", 1)[1].split()[0]) * 1024
                    if hwm > self.peak:
                        self.peak = hwm
                        self.largest = status.split("Name:", 1)[1].split()[0]
                    anon = int(status.split("RssAnon:", 1)[1].split()[0]) * 1024
                    self.anon = max(self.anon, anon)

    def close(self) -> None:
        """Stop sampling; what still runs in the group (a daemon) goes back to the root."""
        self._done.set()
        if self._sampler.is_alive():
            self._sampler.join()
        for _ in range(50):  # a member still exiting keeps the group busy for a moment
            for pid in self._members():
                with contextlib.suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(str(pid))
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_measured(argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None) -> Measured:
    """Run ``argv`` to its end and measure it: CPU and peak RSS from a :class:`ProcessGroup`
    where there is one, else from ``wait4`` (whose ``ru_maxrss`` is the largest of the child
    and the descendants it waited for, e.g. ``cvmfs_swissknife`` under ``cvmfs_server``, but
    no less than this process's RSS at the fork).
    Raises with its output if it fails."""
    group = ProcessGroup.create()
    with tempfile.TemporaryFile() as out:
        try:
            t0 = time.perf_counter()
            proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                    preexec_fn=group.join_me if group else None)
            if group:
                group.start_sampling()
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
            cpu = group.cpu() if group else usage.ru_utime + usage.ru_stime
        finally:
            if group:
                group.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{text}")
    # (ru_maxrss also counts this process's own RSS, which the forked child had before exec)
    if group:
        return Measured(seconds, cpu, group.peak, text, group.largest, group.anon)
    return Measured(seconds, cpu, usage.ru_maxrss * 1024, text)


def settle() -> None:
    """Flush what earlier steps wrote, so that its writeback does not land on the next
    measurement."""
    os.sync()
    time.sleep(1.0)


def stock_server() -> str | None:
    """The installed ``cvmfs_server`` (with ``cvmfs_swissknife`` beside it), or None."""
    server = shutil.which("cvmfs_server")
    return server if server and shutil.which("cvmfs_swissknife") else None


def stock_version() -> str:
    out = subprocess.run(["cvmfs_server", "--version"], capture_output=True, text=True,
                         check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.stdout or out.stderr else "?"


def server(*args: str) -> str:
    """``cvmfs_server ARGS``; raises with its output if it fails."""
    out = subprocess.run(["cvmfs_server", *args], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"cvmfs_server {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


class StockRepository:
    """A repository made by ``cvmfs_server mkfs -o root`` with the stock defaults (SHA-1,
    zlib, chunking 4/8/16 MiB, no nested catalogs, no garbage collection: the pycvmfs
    defaults too), removed with ``rmfs -f`` when the ``with`` block ends."""

    def __init__(self, fqrn: str) -> None:
        self.fqrn = fqrn
        self.mountpoint = Path("/cvmfs") / fqrn
        self.storage = Path("/srv/cvmfs") / fqrn

    def __enter__(self) -> StockRepository:
        if Path("/etc/cvmfs/repositories.d", self.fqrn).exists():
            server("rmfs", "-f", self.fqrn)
        server("mkfs", "-o", "root", self.fqrn)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(RuntimeError):
            server("abort", "-f", self.fqrn)
        server("rmfs", "-f", self.fqrn)

    def transaction(self) -> None:
        server("transaction", self.fqrn)

    def copy_in(self, tree: Path) -> float:
        """Seconds to copy ``tree`` into the open transaction (``cp -a``, then ``sync`` so
        that the copy's writeback is part of it), replacing ``/new_repository``."""
        t0 = time.perf_counter()
        (self.mountpoint / "new_repository").unlink(missing_ok=True)
        subprocess.run(["cp", "-a", f"{tree}/.", f"{self.mountpoint}/"], check=True)
        os.sync()
        return time.perf_counter() - t0

    def publish(self) -> Measured:
        """``cvmfs_server publish``, measured (the swissknife's RSS is the peak)."""
        return run_measured(["cvmfs_server", "publish", self.fqrn])


def stock_client_dir(work: Path) -> Path | None:
    """A folder holding the stock client as tests/helpers/stock_client.py expects it:
    ``$PYCVMFS_STOCK_CLIENT`` (a build's ``cvmfs`` folder), else links under ``work`` to the
    installed ``/usr/bin/cvmfs2`` and ``/usr/lib/libcvmfs_fuse3*.so``; None without one."""
    given = os.environ.get(CLIENT_ENV)
    if given:
        return Path(given)
    installed = {"cvmfs2": Path("/usr/bin/cvmfs2"), "cvmfs_talk": Path("/usr/bin/cvmfs_talk"),
                 "libcvmfs_fuse3_stub.so": Path("/usr/lib/libcvmfs_fuse3_stub.so"),
                 "libcvmfs_fuse3.so": Path("/usr/lib/libcvmfs_fuse3.so")}
    if not all(p.exists() for p in installed.values()):
        return None
    links = work / "stock-client"
    links.mkdir(parents=True, exist_ok=True)
    for name, target in installed.items():
        (links / name).unlink(missing_ok=True)
        (links / name).symlink_to(target.resolve())
    return links


class StockReplica:
    """A stock stratum 1 (``cvmfs_server add-replica -o root -n ALIAS``) of the repository at
    ``stratum0`` (an URL; its ``.cvmfs_master_replica`` must be there), trusting the key file
    ``public_key``; removed with ``rmfs -f`` when the ``with`` block ends. GeoIP lookups are
    switched off (``CVMFS_GEO_DB_FILE=NONE``: no database to download here)."""

    def __init__(self, alias: str, stratum0: str, public_key: Path) -> None:
        self.alias, self.stratum0, self.public_key = alias, stratum0, public_key
        self.env = {**os.environ, "CVMFS_GEO_DB_FILE": "NONE"}

    def __enter__(self) -> StockReplica:
        if Path("/etc/cvmfs/repositories.d", self.alias).exists():
            server("rmfs", "-f", self.alias)
        # add-replica links the (here absent) GeoIP database in this folder
        Path("/var/lib/cvmfs-server/geo").mkdir(parents=True, exist_ok=True)
        run_measured(["cvmfs_server", "add-replica", "-o", "root", "-n", self.alias, "-a",
                      self.stratum0, str(self.public_key)], env=self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        server("rmfs", "-f", self.alias)

    def snapshot(self) -> Measured:
        """``cvmfs_server snapshot ALIAS``, measured."""
        return run_measured(["cvmfs_server", "snapshot", self.alias], env=self.env)
