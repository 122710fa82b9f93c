"""Client benchmark: the FUSE mount against local disk on the release-like tree.

Run by hand as root (needs /dev/fuse):
    .venv/bin/python benchmarks/client.py [--tree DIR] [--files N --scale F] [--runs N]

Publishes the tree of ``benchmarks/treegen.py``, serves it with ``pycvmfs serve`` on loopback,
mounts it, and compares with the same operation on the source tree on local disk, in the same
run: a cold-cache full read (``tar`` to /dev/null), a warm-cache full read, a metadata walk
(``find`` + stat of every entry, warm); plus the mount process's peak RSS. Targets (issue 4):
warm metadata walk <= 2x local disk, cold read >= 100 MB/s, RSS < 200 MB. ``--runs N`` repeats
the measurements (a fresh mount and an empty cache each time, local disk measured again in each
run) and prints every run and the median: the machine may be shared, report the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' nginx
import contextlib

from treegen import generate

from helpers.webservers import nginx_server

FQRN = "bench.example.org"


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _tar(directory: Path) -> list[str]:
    # GNU tar does not read file data when the archive is /dev/null: pipe it through cat
    return ["sh", "-c", f"tar cf - -C '{directory}' . | cat > /dev/null"]


def _drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--server", choices=("pycvmfs", "nginx"), default="pycvmfs",
                    help="what serves the repository on loopback: pycvmfs serve (in this "
                         "process: its CPU time is reported as the server's) or nginx")
    args = ap.parse_args()
    from pycvmfs.publish.repository import Publisher
    from pycvmfs.server.http import RepositoryServer

    with tempfile.TemporaryDirectory(prefix="pycvmfs-client-bench-") as tmp:
        tmp = Path(tmp)
        tree = args.tree or tmp / "tree"
        if not (tree / "releases").exists():
            generate(tree, files=args.files, scale=args.scale)
        size = _tree_bytes(tree)
        pub = Publisher.mkfs(FQRN, tmp / "srv" / FQRN, config_dir=tmp / "etc")
        with pub.transaction() as txn:
            txn.add_tree(tree, "/", delete=True)
        print(f"tree: {txn.summary.files} files, {size / 1e6:.0f} MB, published in "
              f"{txn.summary.seconds:.1f} s")
        results = []
        if args.server == "nginx":
            tmp.chmod(0o755)  # nginx workers (nobody) must reach the storage
            subprocess.run(["chmod", "-R", "a+rX", str(tmp / "srv")], check=True)
            server = nginx_server(tmp / "srv", workers=2, benchmark=True)
        else:
            server = RepositoryServer({FQRN: pub.config.storage})
        with server as srv:
            url = (f"{srv.url}/{FQRN}" if args.server == "nginx"
                   else srv.repository_url(FQRN))
            for run in range(args.runs):
                r = _measure(tmp / f"run{run}", tree, size, url, pub.config.key_path("pub"))
                results.append(r)
                _report(f"run {run + 1}", r, size)
        if len(results) > 1:
            median = {k: statistics.median(r[k] for r in results) for k in results[0]}
            _report("median", median, size)


def _measure(work: Path, tree: Path, size: int, url: str, key: Path) -> dict[str, float]:
    cli = [sys.executable, "-m", "pycvmfs.cli.main"]
    mp = work / "mnt"
    mp.mkdir(parents=True)
    subprocess.run([*cli, "mount", FQRN, str(mp), "--server-url", url, "-k", str(key),
                    "--cache-dir", str(work / "cache")], check=True, stdout=subprocess.DEVNULL)
    pid = int(os.getxattr(mp, "user.pid"))
    try:
        _drop_caches()
        out = {"local_cold": _timed(_tar(tree)), "local_warm": _timed(_tar(tree)),
               "local_walk": _timed(["find", str(tree), "-printf", "%s %m %T@\n"])}
        walk = ["find", str(mp), "-printf", "%s %m %T@\n"]
        self_cost = _requests(mp)
        self_cost = {k: v - self_cost.get(k, 0) for k, v in _requests(mp).items()}
        for phase, cmd in (("cold", _tar(mp)), ("warm", _tar(mp)), ("first walk", walk),
                           ("walk", walk)):
            before, cpu, here, busy = _requests(mp), _cpu(pid), time.process_time(), _busy()
            out[phase] = _timed(cmd)
            cpu = [b - a for a, b in zip(cpu, _cpu(pid), strict=True)]
            here, busy = time.process_time() - here, _busy() - busy
            _print_requests(phase, before, _requests(mp), self_cost)
            print(f"    CPU seconds: mount {cpu[0]:.2f}, download process {cpu[1]:.2f}, "
                  f"this process (the server, if pycvmfs serve) {here:.2f}; the whole machine "
                  f"{busy:.2f} of {out[phase] * os.cpu_count():.2f}")
        del out["first walk"]
        out["rss"] = _rss_of(pid)
        out["rss_children"] = sum(_rss_of(c) for c in _children(pid))  # the download process
    finally:
        subprocess.run([*cli, "umount", str(mp)], check=False, stdout=subprocess.DEVNULL)
    return out


def _requests(mp: Path) -> dict[str, int]:
    """The mount's FUSE requests served so far, per kind (``user.fuse_requests``)."""
    return json.loads(os.getxattr(mp, "user.fuse_requests"))


def _print_requests(phase: str, before: dict[str, int], after: dict[str, int],
                    self_cost: dict[str, int]) -> None:
    # (minus the requests of reading the counters)
    delta = {k: after[k] - before.get(k, 0) - self_cost.get(k, 0) for k in after}
    print(f"  FUSE requests, {phase}: " + ", ".join(f"{k} {v}" for k, v in sorted(delta.items())
                                                     if v), flush=True)


def _busy() -> float:
    """CPU seconds the whole machine has been busy (all but idle and I/O wait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of process ``pid`` and of its children alive now."""
    def one(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return one(pid), sum(one(c) for c in _children(pid))


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _report(label: str, r: dict[str, float], size: int) -> None:
    cold, warm, walk = r["cold"], r["warm"], r["walk"]
    print(f"[{label}]")
    print(f"cold full read (tar):  mount {cold:6.2f} s = {size / cold / 1e6:6.1f} MB/s  "
          f"(local disk, caches dropped {r['local_cold']:6.2f} s; target >= 100 MB/s)")
    print(f"warm full read (tar):  mount {warm:6.2f} s = {size / warm / 1e6:6.1f} MB/s  "
          f"= {warm / r['local_warm']:5.2f}x local disk ({r['local_warm']:.2f} s)")
    print(f"warm metadata walk:    mount {walk:6.2f} s = {walk / r['local_walk']:5.2f}x local "
          f"disk ({r['local_walk']:.2f} s; target <= 2x)")
    print(f"mount process peak RSS {r['rss'] / 2**20:.0f} MiB, its download process "
          f"{r.get('rss_children', 0) / 2**20:.0f} MiB (target < 200 MiB)", flush=True)


if __name__ == "__main__":
    main()
