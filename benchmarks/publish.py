"""Publish benchmark: full publish and a 1 % change of a release-like tree.

Run by hand:  .venv/bin/python benchmarks/publish.py [--tree DIR] [--files N] [--scale F]

Prints MB/s, files/s and peak RSS of each publish (run in a child process so its memory is its
own), and the ratio of full-publish throughput to a single-core ``zlib.compress`` of the same bytes
measured in the same run. Targets (issue 3): ratio >= 1.6, incremental <= 5 % of the full publish
time, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from treegen import change_fraction, generate

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
        for i in range(0, max(1, len(data)), 8 << 20):
            zlib.compress(data[i:i + (8 << 20)])
        t += time.perf_counter() - t0
    return t, total


def publish(fqrn: str, config: Path, tree: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, fqrn, str(config), str(tree)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, help="reuse/generate the tree here")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    from pycvmfs.publish.repository import Publisher

    with tempfile.TemporaryDirectory(prefix="pycvmfs-bench-") as tmp:
        tmp = Path(tmp)
        tree = args.tree or tmp / "tree"
        if not (tree / "releases").exists():
            t0 = time.perf_counter()
            info = generate(tree, files=args.files, scale=args.scale)
            print(f"generated {info} in {time.perf_counter() - t0:.1f} s")
        base_s, total = zlib_baseline(tree)
        nfiles = sum(1 for p in tree.rglob("*") if p.is_file())
        print(f"tree: {nfiles} files, {total / 1e6:.0f} MB")
        print(f"baseline: single-core zlib.compress of the same bytes: {base_s:.2f} s = "
              f"{total / base_s / 1e6:.1f} MB/s")
        Publisher.mkfs("bench.example.org", tmp / "srv" / "bench.example.org",
                       config_dir=tmp / "etc")
        full = publish("bench.example.org", tmp / "etc", tree)
        rate = total / full["seconds"]
        print(f"full publish: {full['seconds']:.2f} s = {rate / 1e6:.1f} MB/s, "
              f"{nfiles / full['seconds']:.0f} files/s, peak RSS {full['rss'] / 2**20:.0f} MiB, "
              f"stored {full['bytes_stored'] / 1e6:.0f} MB in {full['objects_new']} objects "
              f"(dedup ratio {full['dedup_ratio']})")
        print(f"  ratio to single-core zlib: {rate / (total / base_s):.2f}x (target >= 1.6x)")
        changed = change_fraction(tree, 0.01)
        inc = publish("bench.example.org", tmp / "etc", tree)
        print(f"incremental publish ({changed} files changed): {inc['seconds']:.2f} s = "
              f"{inc['seconds'] / full['seconds'] * 100:.1f} % of the full publish "
              f"(target <= 5 %), peak RSS {inc['rss'] / 2**20:.0f} MiB")
        noop = publish("bench.example.org", tmp / "etc", tree)
        print(f"no-change publish: {noop['seconds']:.2f} s (revision {noop['revision']})")


if __name__ == "__main__":
    main()
