"""Client benchmark: the pycvmfs FUSE mount against the stock ``cvmfs2`` and local disk.

Run by hand as root (needs /dev/fuse):
    .venv/bin/python benchmarks/client.py [--tree DIR] [--files N --scale F] [--rounds N]

Publishes the tree of ``benchmarks/treegen.py``, serves it on loopback (nginx by default, or
``pycvmfs serve`` in this process) and, in each round, mounts it with a fresh mount and an empty
cache: a cold full read (``tar | cat`` after dropping the kernel's caches), a warm full read, a
metadata walk (``find`` + stat of every entry, warm), and the mount process's peak RSS; the same
operations on the source tree on local disk. When the stock client is there (``$PYCVMFS_STOCK_
CLIENT``: a build's ``cvmfs`` folder, or ``tools/stock-cvmfs.sh install``), each round mounts the
same repository from the same server with it too (its own configuration file and empty cache,
docs/stock-client.md), the order alternating, and prints pycvmfs/stock ratios. Targets (issue
16): cold read >= 1.5x the stock throughput, warm read >= 0.8x, warm walk <= 1.0x the stock
time, RSS < 200 MB. The machine may be shared: every round is printed, then the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' helpers
from _stock import stock_client_dir
from treegen import generate

from helpers.stock_client import StockClient, keys_dir
from helpers.webservers import nginx_server

FQRN = "bench.example.org"
WALK = ["find", "{}", "-printf", "%s %m %T@\n"]
PHASES = ("cold", "warm", "first walk", "walk")


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _tar(directory: Path) -> list[str]:
    # GNU tar does not read file data when the archive is /dev/null: pipe it through cat
    return ["sh", "-c", f"tar cf - -C '{directory}' . | cat > /dev/null"]


def _walk(directory: Path) -> list[str]:
    return [str(directory) if a == "{}" else a for a in WALK]


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
    ap = argparse.ArgumentParser(description="pycvmfs mount, stock cvmfs2, local disk")
    ap.add_argument("--tree", type=Path)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rounds", "--runs", type=int, default=3, dest="rounds")
    ap.add_argument("--server", choices=("nginx", "pycvmfs"), default="nginx",
                    help="what serves the repository on loopback to both clients: nginx, or "
                         "pycvmfs serve (in this process: its CPU time is reported as the "
                         "server's)")
    ap.add_argument("--no-stock", action="store_true", help="without the stock client")
    args = ap.parse_args()
    from pycvmfs.publish.repository import Publisher
    from pycvmfs.server.http import RepositoryServer

    with tempfile.TemporaryDirectory(prefix="pycvmfs-client-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tree = args.tree or tmp / "tree"
        if not (tree / "releases").exists():
            generate(tree, files=args.files, scale=args.scale)
        size = _tree_bytes(tree)
        pub = Publisher.mkfs(FQRN, tmp / "srv" / FQRN, config_dir=tmp / "etc")
        with pub.transaction() as txn:
            txn.add_tree(tree, "/", delete=True)
        print(f"tree: {txn.summary.files} files, {size / 1e6:.0f} MB, published in "
              f"{txn.summary.seconds:.1f} s; served by {args.server}")
        stock_dir = None if args.no_stock else stock_client_dir(tmp)
        stock = StockClient(stock_dir) if stock_dir else None
        print("stock client: " + (f"{stock.version()} ({stock.dir})" if stock else
              "not asked for (--no-stock)" if args.no_stock else
              "none (set PYCVMFS_STOCK_CLIENT=<build>/cvmfs or tools/stock-cvmfs.sh install)"))
        if args.server == "nginx":
            tmp.chmod(0o755)  # nginx workers (nobody) must reach the storage
            subprocess.run(["chmod", "-R", "a+rX", str(tmp / "srv")], check=True)
            server = nginx_server(tmp / "srv", workers=2, benchmark=True)
        else:
            server = RepositoryServer({FQRN: pub.config.storage})
        key = pub.config.key_path("pub")
        results = []
        with server as srv:
            url = (f"{srv.url}/{FQRN}" if args.server == "nginx"
                   else srv.repository_url(FQRN))
            for n in range(1, args.rounds + 1):
                order = ["pycvmfs", "stock"] if stock else ["pycvmfs"]
                if n % 2 == 0:
                    order.reverse()
                r = {"local": _measure_local(tree)}
                for who in order:
                    work = tmp / f"round{n}-{who}"
                    r[who] = (_measure_pycvmfs(work, url, key) if who == "pycvmfs"
                              else _measure_stock(stock, work, url, key))
                results.append(r)
                _report(f"round {n}: " + " first, ".join(order) + (" second" if stock else ""),
                        r, size)
        if len(results) > 1:
            median = {who: {k: statistics.median(r[who][k] for r in results)
                            for k in results[0][who]} for who in results[0]}
            _report(f"median times of {len(results)} rounds; load {os.getloadavg()[0]:.2f}",
                    median, size, ratios=False)
            if stock:
                _ratios(results)


def _ratios(results: list[dict[str, dict[str, float]]]) -> None:
    """Each round's pycvmfs/stock ratios and their medians."""
    for name, key, flip, target in (("cold read throughput", "cold", True, ">= 1.5x"),
                                    ("warm read throughput", "warm", True, ">= 0.8x"),
                                    ("warm walk time", "walk", False, "<= 1.0x")):
        vals = [(r["stock"][key] / r["pycvmfs"][key]) if flip
                else (r["pycvmfs"][key] / r["stock"][key]) for r in results]
        print(f"  pycvmfs/stock {name}: {', '.join(f'{v:.2f}x' for v in vals)} (median "
              f"{statistics.median(vals):.2f}x; target {target})")


def _measure_local(tree: Path) -> dict[str, float]:
    _drop_caches()
    return {"cold": _timed(_tar(tree)), "warm": _timed(_tar(tree)),
            "walk": _timed(_walk(tree))}


def _measure_pycvmfs(work: Path, url: str, key: Path) -> dict[str, float]:
    cli = [sys.executable, "-m", "pycvmfs.cli.main"]
    mp = work / "mnt"
    mp.mkdir(parents=True)
    subprocess.run([*cli, "mount", FQRN, str(mp), "--server-url", url, "-k", str(key),
                    "--cache-dir", str(work / "cache")], check=True, stdout=subprocess.DEVNULL)
    pid = int(os.getxattr(mp, "user.pid"))
    out: dict[str, float] = {}
    try:
        self_cost = _requests(mp)
        self_cost = {k: v - self_cost.get(k, 0) for k, v in _requests(mp).items()}
        _drop_caches()
        for phase in PHASES:
            cmd = _tar(mp) if phase in ("cold", "warm") else _walk(mp)
            before, cpu, here, busy = _requests(mp), _cpu(pid), time.process_time(), _busy()
            out[phase] = _timed(cmd)
            cpu = [b - a for a, b in zip(cpu, _cpu(pid), strict=True)]
            here, busy = time.process_time() - here, _busy() - busy
            out[f"cpu {phase}"] = sum(cpu)
            _print_requests(phase, before, _requests(mp), self_cost)
            print(f"    CPU seconds: mount {cpu[0]:.2f}, download process {cpu[1]:.2f}, "
                  f"this process (the server, if pycvmfs serve) {here:.2f}; the whole machine "
                  f"{busy:.2f} of {out[phase] * os.cpu_count():.2f}")
        out["rss"] = _rss_of(pid)
        out["rss_children"] = sum(_rss_of(c) for c in _children(pid))  # the download process
    finally:
        subprocess.run([*cli, "umount", str(mp)], check=False, stdout=subprocess.DEVNULL)
    return out


def _measure_stock(stock: StockClient, work: Path, url: str, key: Path) -> dict[str, float]:
    """The same phases with the stock client (its own configuration file and empty cache)."""
    work.mkdir(parents=True)
    out: dict[str, float] = {}
    with stock.mount(FQRN, url, keys_dir(work, key), work) as m:
        pid = int(m.talk("pid").strip())
        _drop_caches()
        for phase in PHASES:
            cmd = _tar(m.mountpoint) if phase in ("cold", "warm") else _walk(m.mountpoint)
            cpu, busy = _cpu(pid)[0], _busy()
            out[phase] = _timed(cmd)
            out[f"cpu {phase}"] = _cpu(pid)[0] - cpu
            print(f"  stock {phase}: CPU seconds: cvmfs2 {out[f'cpu {phase}']:.2f}; the whole "
                  f"machine {_busy() - busy:.2f} of {out[phase] * os.cpu_count():.2f}")
        out["rss"] = _rss_of(pid)
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


def _report(label: str, r: dict[str, dict[str, float]], size: int, ratios: bool = True) -> None:
    local, py, st = r["local"], r["pycvmfs"], r.get("stock")
    print(f"[{label}]")
    mb = size / 1e6
    for name, key, ref in (("cold full read (tar)", "cold", "caches dropped"),
                           ("warm full read (tar)", "warm", "warm")):
        line = (f"{name}: pycvmfs {py[key]:6.2f} s = {mb / py[key]:6.1f} MB/s (CPU "
                f"{py['cpu ' + key]:.1f} s)")
        if st:
            line += (f", stock {st[key]:6.2f} s = {mb / st[key]:6.1f} MB/s (CPU "
                     f"{st['cpu ' + key]:.1f} s)")
        print(f"{line}; local disk, {ref}: {local[key]:.2f} s")
    line = f"warm metadata walk: pycvmfs {py['walk']:6.2f} s"
    if st:
        line += f", stock {st['walk']:6.2f} s"
    print(f"{line}; {py['walk'] / local['walk']:.2f}x local disk ({local['walk']:.2f} s)")
    line = (f"peak RSS: pycvmfs mount {py['rss'] / 2**20:.0f} MiB + its download process "
            f"{py.get('rss_children', 0) / 2**20:.0f} MiB")
    if st:
        line += f", stock cvmfs2 {st['rss'] / 2**20:.0f} MiB"
    print(f"{line} (target < 200 MiB)")
    if st and ratios:
        print(f"  ratios pycvmfs/stock: cold read {st['cold'] / py['cold']:.2f}x throughput "
              f"(target >= 1.5x), warm read {st['warm'] / py['warm']:.2f}x (target >= 0.8x), "
              f"walk {py['walk'] / st['walk']:.2f}x the time (target <= 1.0x)", flush=True)


if __name__ == "__main__":
    main()
