"""The floor of any pyfuse3 file system on this machine: a do-nothing mount against local disk.

Run by hand as root (needs /dev/fuse):
    .venv/bin/python benchmarks/fuse_floor.py [--tree DIR | --files N --scale F] [--runs N]

Mounts a minimal read-only pyfuse3 file system over a source tree (that of
``benchmarks/treegen.py``, or ``--tree DIR``): every inode, attribute and directory listing is
computed in memory before mounting, and ``read`` is an ``os.pread`` on the source file opened at
``open``. No network, no cache, no hashing: only the FUSE request path through pyfuse3 and trio,
with the options of ``pycvmfs mount`` (``src/pycvmfs/client/fuse.py``: single-threaded trio,
``ro``, ``default_permissions``, entry/attribute timeouts of the repository TTL, readdirplus,
``keep_cache``). Whatever this file system cannot do, ``pycvmfs mount`` cannot do either.

It compares, in the same run, with the same operations on the source tree on local disk (the
commands of ``benchmarks/client.py``): the warm metadata walk (``find -printf``), the first full
read through a fresh mount (``tar``; the source in the page cache, so only the FUSE path is
measured), the warm full read (``keep_cache``: page-cache hits, ``open``/``release`` requests
only) and the full read with the page cache dropped (also for the source files). For each it
prints the FUSE requests served per kind, and the cost per request: wall seconds / requests,
(FUSE - local disk) seconds / requests, and CPU seconds of the serving process / requests.
``--loop asyncio`` serves with pyfuse3's asyncio loop instead of trio, for comparison.

The file system runs in a child process (``fuse_floor.py --serve SRC MNT``); the measuring
process unmounts it and stops it on exit, errors included. ``--no-drop-caches`` skips the cold
read: dropping the page cache disturbs everything else running on the machine.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from treegen import generate

from client import _drop_caches, _tar, _timed, _tree_bytes

TTL = 240  # seconds: the default repository TTL, which pycvmfs mount uses as entry/attr timeout
WALK = ["find", "{}", "-printf", "%s %m %T@\n"]  # as benchmarks/client.py
COUNTED = ("lookup", "getattr", "readlink", "opendir", "readdir", "releasedir", "open", "read",
           "release", "flush", "forget", "access", "getxattr", "statfs")
STATS_XATTR = "user.fusefloor.counts"


# -- the file system (child process) -----------------------------------------------------------
def _serve(src: Path, mnt: Path, ttl: int, loop: str) -> None:
    """Mount the floor file system of ``src`` on ``mnt`` and serve until unmounted."""
    import pyfuse3

    class FloorFS(pyfuse3.Operations):
        """Every answer precomputed; ``read`` is one ``os.pread``."""

        enable_writeback_cache = False

        def __init__(self) -> None:
            super().__init__()
            self.paths: dict[int, bytes] = {}
            self.attrs: dict[int, pyfuse3.EntryAttributes] = {}
            self.children: dict[int, dict[bytes, int]] = {}
            self.listings: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
            self.parents: dict[int, int] = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}
            self.links: dict[int, bytes] = {}
            self.dirs: dict[int, list] = {}
            self.next_fh = 1
            self.calls: Counter[str] = Counter()
            self._add(os.fsencode(src), pyfuse3.ROOT_INODE)

        def _add(self, path: bytes, ino: int) -> int:
            """Register ``path`` (recursively for a directory) under ``ino``; next free inode."""
            st = os.lstat(path)
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.generation = 0
            a.entry_timeout = a.attr_timeout = ttl
            a.st_mode, a.st_nlink, a.st_rdev = st.st_mode, st.st_nlink, st.st_rdev
            a.st_uid, a.st_gid = st.st_uid, st.st_gid
            a.st_size, a.st_blksize, a.st_blocks = st.st_size, 4096, st.st_blocks
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = st.st_mtime_ns
            self.paths[ino], self.attrs[ino] = path, a
            nxt = ino + 1
            if stat.S_ISLNK(st.st_mode):
                self.links[ino] = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                names = sorted(os.listdir(path))
                kids = self.children[ino] = {}
                for name in names:
                    kids[name] = nxt
                    self.parents[nxt] = ino
                    nxt = self._add(path + b"/" + name, nxt)
                self.listings[ino] = [(n, self.attrs[kids[n]]) for n in names]
            return nxt

        async def lookup(self, parent_inode, name, ctx=None):
            self.calls["lookup"] += 1
            if name == b".":
                return self.attrs[parent_inode]
            if name == b"..":
                return self.attrs[self.parents[parent_inode]]
            ino = self.children.get(parent_inode, {}).get(name)
            if ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attrs[ino]

        async def getattr(self, inode, ctx=None):
            self.calls["getattr"] += 1
            return self.attrs[inode]

        async def readlink(self, inode, ctx):
            self.calls["readlink"] += 1
            return self.links[inode]

        async def opendir(self, inode, ctx):
            self.calls["opendir"] += 1
            fh = self.next_fh
            self.next_fh += 1
            self.dirs[fh] = self.listings[inode]
            return fh

        async def readdir(self, fh, start_id, token):  # served as READDIRPLUS by pyfuse3
            self.calls["readdir"] += 1
            listing = self.dirs[fh]
            for i in range(start_id, len(listing)):
                name, a = listing[i]
                if not pyfuse3.readdir_reply(token, name, a, i + 1):
                    break

        async def releasedir(self, fh):
            self.calls["releasedir"] += 1
            self.dirs.pop(fh, None)

        async def open(self, inode, flags, ctx):
            self.calls["open"] += 1
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
                raise pyfuse3.FUSEError(errno.EROFS)
            fi = pyfuse3.FileInfo(fh=os.open(self.paths[inode], os.O_RDONLY))
            fi.keep_cache = True
            return fi

        async def read(self, fh, off, size):
            self.calls["read"] += 1
            return os.pread(fh, size, off)

        async def release(self, fh):
            self.calls["release"] += 1
            os.close(fh)

        async def flush(self, fh):
            self.calls["flush"] += 1
            raise pyfuse3.FUSEError(errno.ENOSYS)  # as pycvmfs mount (pyfuse3's default)

        async def forget(self, inode_list):
            self.calls["forget"] += 1

        async def access(self, inode, mode, ctx):
            self.calls["access"] += 1
            if mode & os.W_OK:
                raise pyfuse3.FUSEError(errno.EROFS)
            return True

        async def statfs(self, ctx):
            self.calls["statfs"] += 1
            st = pyfuse3.StatvfsData()
            st.f_bsize = st.f_frsize = 4096
            st.f_files = len(self.attrs)
            st.f_namemax = 255
            return st

        async def getxattr(self, inode, name, ctx):
            if name == STATS_XATTR.encode():  # the measuring process's query: not counted
                return json.dumps(self.calls).encode()
            self.calls["getxattr"] += 1
            raise pyfuse3.FUSEError(errno.ENODATA)

        async def listxattr(self, inode, ctx):
            return []

    fs = FloorFS()
    options = set(pyfuse3.default_options)
    options |= {"ro", "fsname=fusefloor", "subtype=fusefloor", "default_permissions"}
    pyfuse3.init(fs, str(mnt), options)
    print(f"ready {len(fs.attrs)}", flush=True)
    try:
        if loop == "asyncio":
            import asyncio

            import pyfuse3.asyncio

            pyfuse3.asyncio.enable()
            asyncio.run(pyfuse3.main())
        else:
            import trio

            trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


# -- the measurements (parent process) ---------------------------------------------------------
class Mount:
    """The floor file system of ``src`` served by a child process on ``mnt``."""

    def __init__(self, src: Path, mnt: Path, ttl: int, loop: str) -> None:
        self.mnt = mnt
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(src), str(mnt), "--ttl", str(ttl),
             "--loop", loop], stdout=subprocess.PIPE, text=True)
        try:
            line = self.proc.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"the floor file system did not mount on {mnt}: {line!r}")
        except BaseException:
            self.close()
            raise
        self.inodes = int(line.split()[1])

    def counts(self) -> Counter[str]:
        return Counter(json.loads(os.getxattr(self.mnt, STATS_XATTR)))

    def cpu(self) -> float:
        """CPU seconds (user + system) of the serving process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def measure(self, cmd: list[str]) -> dict:
        """Run ``cmd``: wall seconds, serving CPU seconds, and the requests it caused."""
        c0, cpu0 = self.counts(), self.cpu()
        seconds = _timed(cmd)
        cpu, c1 = self.cpu() - cpu0, self.counts()
        return {"s": seconds, "cpu": cpu, "req": {k: c1[k] - c0[k] for k in COUNTED}}

    def mounted(self) -> bool:
        mnt = str(self.mnt).replace(" ", "\\040")
        return any(line.split()[1] == mnt for line in Path("/proc/mounts").read_text().splitlines())

    def close(self) -> None:
        """Unmount (even when the server died) and stop the server."""
        if self.mounted():
            subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False,
                           stderr=subprocess.DEVNULL)
            if self.mounted():
                subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _measure(work: Path, tree: Path, ttl: int, loop: str, drop: bool) -> dict:
    mnt = work / "mnt"
    mnt.mkdir(parents=True)
    walk = [a.replace("{}", str(tree)) for a in WALK]
    fwalk = [a.replace("{}", str(mnt)) for a in WALK]
    mount = Mount(tree, mnt, ttl, loop)
    out: dict = {"inodes": mount.inodes}
    try:
        if drop:
            _drop_caches()
            out["local_cold"] = _timed(_tar(tree))
        out["local_warm"] = _timed(_tar(tree))
        out["local_walk"] = _timed(walk)
        out["first"] = mount.measure(_tar(mnt))  # fresh mount, source in the page cache
        out["warm"] = mount.measure(_tar(mnt))
        out["walk1"] = mount.measure(fwalk)  # entries known from tar, listings not yet read
        out["walk"] = mount.measure(fwalk)
        if drop:
            _drop_caches()
            out["cold"] = mount.measure(_tar(mnt))
    finally:
        mount.close()
    return out


def _requests(label: str, m: dict, local: float | None = None) -> None:
    n = sum(m["req"].values())
    kinds = ", ".join(f"{k} {v}" for k, v in m["req"].items() if v)
    per = f"{m['s'] / n * 1e6:.1f} µs wall" if n else "-"
    if n and local is not None:
        per += f", {(m['s'] - local) / n * 1e6:.1f} µs over local disk"
    if n:
        per += f", {m['cpu'] / n * 1e6:.1f} µs CPU of the FUSE process"
    print(f"  {label}: {n} requests ({kinds}); per request {per}")


def _report(label: str, r: dict, size: int) -> None:
    mb = size / 1e6
    print(f"[{label}]")
    walk, lw = r["walk"]["s"], r["local_walk"]
    print(f"{'warm metadata walk:':26s}floor {walk:6.3f} s = {walk / lw:5.2f}x local disk "
          f"({lw:.3f} s; target <= 2x)")
    rows = [("first", "local_warm", "first read (fresh mount):", "warm"),
            ("warm", "local_warm", "warm full read:", "warm"),
            ("cold", "local_cold", "cold full read:", "caches dropped")]
    for key, lkey, name, how in rows:
        if key in r:
            s, ls = r[key]["s"], r[lkey]
            print(f"{name:26s}floor {s:6.2f} s = {mb / s:7.1f} MB/s = {s / ls:5.2f}x local disk "
                  f"{how} ({ls:.2f} s = {mb / ls:.0f} MB/s)")
    if "req" in r["walk"]:
        _requests("first walk", r["walk1"])
        _requests("warm walk", r["walk"], r["local_walk"])
        _requests("first read", r["first"], r["local_warm"])
        _requests("warm read", r["warm"], r["local_warm"])
        if "cold" in r:
            _requests("cold read", r["cold"], r.get("local_cold"))
    print(flush=True)


def _median(results: list[dict]) -> dict:
    out = {}
    for k, v in results[0].items():
        if isinstance(v, dict):
            out[k] = {"s": statistics.median(r[k]["s"] for r in results)}
        elif k != "inodes":
            out[k] = statistics.median(r[k] for r in results)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, help="an existing tree (default: generate one)")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--ttl", type=int, default=TTL, help="entry and attribute timeout, seconds")
    ap.add_argument("--loop", choices=("trio", "asyncio"), default="trio",
                    help="event loop of the FUSE process (pycvmfs mount: trio)")
    ap.add_argument("--no-drop-caches", action="store_true", help="skip the cold read")
    ap.add_argument("--serve", nargs=2, type=Path, metavar=("SRC", "MNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(*args.serve, args.ttl, args.loop)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount on the way out
    with tempfile.TemporaryDirectory(prefix="pycvmfs-fuse-floor-") as tmp:
        tree = args.tree or Path(tmp) / "tree"
        if not tree.exists() or not any(tree.iterdir()):
            generate(tree, files=args.files, scale=args.scale)
        size = _tree_bytes(tree)
        results = []
        for run in range(args.runs):
            r = _measure(Path(tmp) / f"run{run}", tree, args.ttl, args.loop,
                         not args.no_drop_caches)
            if run == 0:
                print(f"tree {tree}: {r['inodes']} inodes, {size / 1e6:.0f} MB; "
                      f"pyfuse3 on {args.loop}\n")
            results.append(r)
            _report(f"run {run + 1}", r, size)
        if len(results) > 1:
            _report("median", _median(results), size)


if __name__ == "__main__":
    main()
