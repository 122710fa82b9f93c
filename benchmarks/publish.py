"""Publish benchmark: pycvmfs against the stock ``cvmfs_server``, side by side.

Run by hand (as root for the stock tools):
    .venv/bin/python benchmarks/publish.py [--tree DIR] [--files N] [--scale F] [--rounds N]

Each round publishes the same release-like tree (benchmarks/treegen.py) into a new repository
with pycvmfs (a child process, timed whole: interpreter start included) and, when the stock
tools are installed (``tools/stock-cvmfs.sh install``: ``cvmfs_server`` on PATH), with
``cvmfs_server``: ``mkfs`` with the stock defaults (SHA-1, zlib, 4/8/16 MiB chunks, as
pycvmfs's), ``transaction``, ``cp -a`` of the tree into ``/cvmfs/<fqrn>`` (timed on its own),
``publish`` (timed), then ``rmfs -f``. Both then publish the same 1 % change (new content and
mtime). The order alternates between rounds. Printed: every round, the ratios (pycvmfs time /
stock publish time), CPU seconds and the peak RSS of each (the largest process: pycvmfs's
main process or a worker, the stock ``cvmfs_swissknife``; and the largest anonymous part, as
file pages a process maps count in its RSS), and two baselines measured in the same run:
single-core ``zlib.compress`` of all the bytes, and the floor: zlib + SHA-1 of each distinct
content once, on all cores. Targets (issue 16): full publish <= 0.5x the stock time,
1 % change <= 5 % of the full publish, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stock import Measured, StockRepository, run_measured, settle, stock_server, stock_version
from treegen import apply_changes, change_set, generate, restore

FQRN = "bench.example.org"
STOCK_FQRN = "stock-bench.example.org"
PIECE = 8 << 20  # what the baselines compress at once: the stock average chunk size

_CHILD = r"""
import json, sys, time
from pycvmfs.publish.repository import Publisher
t0 = time.perf_counter()
pub = Publisher.open(sys.argv[1], config_dir=sys.argv[2])
with pub.transaction() as txn:
    txn.add_tree(sys.argv[3], "/", delete=True)
secs = time.perf_counter() - t0
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        rss = int(line.split()[1]) * 1024
print(json.dumps({"seconds": secs, "rss": rss, **txn.summary.to_dict()}))
"""


def zlib_baseline(root: Path) -> tuple[float, int]:
    """Seconds to zlib.compress every file (8 MiB pieces for big ones) on one core."""
    total = 0
    t = 0.0
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        total += len(data)
        t0 = time.perf_counter()
        for i in range(0, max(1, len(data)), PIECE):
            zlib.compress(data[i:i + PIECE])
        t += time.perf_counter() - t0
    return t, total


def _compress_and_hash(pieces: list[tuple[str, int, int]]) -> float:
    """Worker of :func:`floor_baseline`: read, zlib and SHA-1 (of the compressed bytes, as
    CernVM-FS names objects) each piece; returns the CPU seconds spent."""
    t0 = time.process_time()
    for path, offset, length in pieces:
        with open(path, "rb") as f:
            f.seek(offset)
            hashlib.sha1(zlib.compress(f.read(length))).digest()
    return time.process_time() - t0


def floor_baseline(root: Path) -> tuple[float, float, int]:
    """The floor of any publisher: zlib + SHA-1 of each distinct content once, spread over
    all cores (worker processes started before the clock; the files are in the page cache).
    Finding the distinct contents is not timed. Returns wall seconds, CPU seconds, bytes."""
    distinct: dict[bytes, tuple[str, int]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            distinct.setdefault(hashlib.blake2b(p.read_bytes()).digest(), (str(p),
                                                                            p.stat().st_size))
    pieces = [(path, off, min(PIECE, size - off)) for path, size in distinct.values()
              for off in range(0, max(1, size), PIECE)]
    batches: list[list[tuple[str, int, int]]] = [[]]
    filled = 0
    for piece in pieces:  # tasks of about 8 MiB: big enough to keep the hand-off cheap
        batches[-1].append(piece)
        filled += piece[2]
        if filled >= PIECE:
            batches.append([])
            filled = 0
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(time.sleep, [0.01] * workers))  # started before the clock
        t0 = time.perf_counter()
        cpu = sum(pool.map(_compress_and_hash, batches))
        wall = time.perf_counter() - t0
    return wall, cpu, sum(size for _, size in distinct.values())


def publish(fqrn: str, config: Path, tree: Path) -> dict:
    """Publish ``tree`` as the whole of repository ``fqrn`` in a child process; its summary,
    ``seconds`` in the API, ``rss`` (its VmHWM), and from ``wait4``: ``wall`` (the whole
    process), ``cpu`` and ``maxrss`` (the largest of it and its worker processes)."""
    m = run_measured([sys.executable, "-c", _CHILD, fqrn, str(config), str(tree)])
    out = json.loads(m.output.strip().splitlines()[-1])
    return {**out, "wall": m.seconds, "cpu": m.cpu, "maxrss": m.maxrss, "largest": m.largest,
            "anon": m.anon}


def round_pycvmfs(work: Path, tree: Path, changes: dict[str, bytes]) -> dict[str, dict]:
    """A new pycvmfs repository under ``work``: full publish, the change, no change."""
    from pycvmfs.publish.repository import Publisher

    Publisher.mkfs(FQRN, work / "srv" / FQRN, config_dir=work / "etc")
    settle()
    full = publish(FQRN, work / "etc", tree)
    originals = apply_changes(tree, changes)
    try:
        settle()
        inc = publish(FQRN, work / "etc", tree)
    finally:
        restore(tree, originals)
    noop = publish(FQRN, work / "etc", tree)
    shutil.rmtree(work)
    return {"full": full, "inc": inc, "noop": noop}


def round_stock(tree: Path, changes: dict[str, bytes]) -> dict[str, Measured | float]:
    """A new stock repository: copy + full publish, then the change; removed afterwards."""
    with StockRepository(STOCK_FQRN) as repo:
        repo.transaction()
        copy = repo.copy_in(tree)
        settle()
        full = repo.publish()
        repo.transaction()
        apply_changes(repo.mountpoint, changes)
        settle()
        inc = repo.publish()
    return {"copy": copy, "full": full, "inc": inc}


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report_round(n: int, order: list[str], py: dict, st: dict | None, floor: float,
                 nbytes: int) -> dict[str, float]:
    """Print one round; returns its ratios."""
    full, inc = py["full"], py["inc"]
    print(f"[round {n}: {' first, '.join(order)} second]" if st else f"[round {n}]")
    print(f"  pycvmfs full publish: {full['wall']:.2f} s ({full['seconds']:.2f} s in the API) = "
          f"{nbytes / full['wall'] / 1e6:.1f} MB/s, CPU {full['cpu']:.1f} s, peak RSS "
          f"{_mib(full['maxrss'])} ({full['largest']}; anonymous {_mib(full['anon'])}), stored "
          f"{full['bytes_stored'] / 1e6:.0f} MB in {full['objects_new']} objects")
    print(f"  pycvmfs 1 % change: {inc['wall']:.2f} s = {inc['wall'] / full['wall'] * 100:.1f} % "
          f"of its full publish (target <= 5 %), CPU {inc['cpu']:.1f} s, peak RSS "
          f"{_mib(inc['maxrss'])}; no change: {py['noop']['wall']:.2f} s")
    out = {"py_full": full["wall"], "py_inc": inc["wall"]}
    if st:
        sf, si = st["full"], st["inc"]
        print(f"  stock   full publish: {sf.seconds:.2f} s = {nbytes / sf.seconds / 1e6:.1f} MB/s, "
              f"CPU {sf.cpu:.1f} s, peak RSS {_mib(sf.maxrss)} ({sf.largest}; anonymous "
              f"{_mib(sf.anon)}); the copy into the "
              f"transaction before it {st['copy']:.2f} s (not counted)")
        print(f"  stock   1 % change: {si.seconds:.2f} s = "
              f"{si.seconds / sf.seconds * 100:.1f} % of its full publish, CPU {si.cpu:.1f} s, "
              f"peak RSS {_mib(si.maxrss)} ({si.largest})")
        out |= {"full": full["wall"] / sf.seconds, "inc": inc["wall"] / si.seconds,
                "st_full": sf.seconds, "floor": floor / sf.seconds,
                "cpu_full": full["cpu"] / sf.cpu, "cpu_inc": inc["cpu"] / si.cpu}
        print(f"  ratio pycvmfs/stock: full {out['full']:.2f}x (target <= 0.5x), 1 % change "
              f"{out['inc']:.2f}x; the floor is {out['floor']:.2f}x the stock publish; CPU "
              f"seconds full {out['cpu_full']:.2f}x, 1 % change {out['cpu_inc']:.2f}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="pycvmfs and stock publish, side by side")
    ap.add_argument("--tree", type=Path, help="reuse/generate the tree here")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-stock", action="store_true", help="pycvmfs only")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="pycvmfs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tree = args.tree or tmp / "tree"
        if not (tree / "releases").exists():
            t0 = time.perf_counter()
            info = generate(tree, files=args.files, scale=args.scale)
            print(f"generated {info} in {time.perf_counter() - t0:.1f} s")
        base_s, total = zlib_baseline(tree)
        nfiles = sum(1 for p in tree.rglob("*") if p.is_file())
        print(f"tree: {nfiles} files, {total / 1e6:.0f} MB; load {os.getloadavg()[0]:.2f}")
        print(f"baseline: single-core zlib.compress of the same bytes: {base_s:.2f} s = "
              f"{total / base_s / 1e6:.1f} MB/s")
        floor_s, floor_cpu, distinct = floor_baseline(tree)
        print(f"floor: zlib + SHA-1 of each distinct content once ({distinct / 1e6:.0f} MB) on "
              f"{os.cpu_count()} cores: {floor_s:.2f} s (CPU {floor_cpu:.1f} s)")
        stock = None if args.no_stock else stock_server()
        if stock:
            print(f"stock tools: {stock_version()} ({stock})")
        else:
            print("stock tools: " + ("not asked for (--no-stock)" if args.no_stock else
                  "not installed (no cvmfs_server on PATH; tools/stock-cvmfs.sh install): "
                  "pycvmfs alone"))
        changes = change_set(tree, 0.01)
        print(f"1 % change: {len(changes)} files get new content and mtime")
        rounds = []
        for n in range(1, args.rounds + 1):
            order = ["pycvmfs", "stock"] if stock else ["pycvmfs"]
            if n % 2 == 0:
                order.reverse()
            res: dict[str, dict] = {}
            for who in order:
                res[who] = (round_pycvmfs(tmp / f"round{n}", tree, changes) if who == "pycvmfs"
                            else round_stock(tree, changes))
            rounds.append(report_round(n, order, res["pycvmfs"], res.get("stock"), floor_s,
                                       total))
        summarize(rounds, floor_s)


def summarize(rounds: list[dict[str, float]], floor: float) -> None:
    def spread(key: str, fmt: str = "{:.2f}") -> str:
        vals = [r[key] for r in rounds]
        return (", ".join(fmt.format(v) for v in vals)
                + (f" (median {fmt.format(statistics.median(vals))})" if len(vals) > 1 else ""))

    print(f"[{len(rounds)} rounds; load {os.getloadavg()[0]:.2f}]")
    print(f"  pycvmfs full publish s: {spread('py_full')}; 1 % change s: {spread('py_inc')}")
    if "full" in rounds[0]:
        print(f"  stock full publish s:   {spread('st_full')}; floor {floor:.2f} s")
        print(f"  ratio full (target <= 0.5x): {spread('full', '{:.2f}x')}")
        print(f"  ratio 1 % change:            {spread('inc', '{:.2f}x')}")
        print(f"  CPU seconds ratio, full:     {spread('cpu_full', '{:.2f}x')}")


if __name__ == "__main__":
    main()
