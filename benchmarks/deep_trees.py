"""Depth benchmark: publishing a tar archive, exporting and checking a chain of directories N
levels deep with a file at the bottom, against N sibling directories and one file in the same
run.

Run by hand:  .venv/bin/python benchmarks/deep_trees.py [--depths 250,500,1000,2000] [--runs 3]

For each N it prints the seconds of each step for the chain and for the flat tree (median of
the runs, and every run) and their ratio. Work that is linear in the number of directories
keeps the ratio flat as N grows; work that walks from the root at every level makes it grow with
N (before issue 12: a 1,000-deep export took 121-412 s, a 3,000-deep tar member raised
RecursionError).
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from pycvmfs.client.export import export_tree
from pycvmfs.client.repository import open_repository
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.repository import Publisher

FQRN = "deep.example.org"


def _tarball(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in names:
            if name.endswith("/"):
                ti = tarfile.TarInfo(name.rstrip("/"))
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti = tarfile.TarInfo(name)
                ti.size = 6
                tf.addfile(ti, io.BytesIO(b"leaf!\n"))
    return buf.getvalue()


def _one_run(work: Path, names: list[str]) -> dict[str, float]:
    pub = Publisher.mkfs(FQRN, work / "srv" / FQRN, config_dir=work / "etc")
    tar = work / "tree.tar"
    tar.write_bytes(_tarball(names))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with pub.transaction() as txn:
        txn.add_tarball(tar, "/t")
    out["publish"] = time.perf_counter() - t0
    with open_repository(str(pub.config.storage), keys=[pub.config.key_path("pub")],
                         cache_dir=work / "cache") as repo, repo.open_revision() as view:
        t0 = time.perf_counter()
        export_tree(view, "/t", work / "out")
        out["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    check_repository(pub)
    out["check"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", default="250,500,1000,2000")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    steps = ("publish", "export", "check")
    print(f"{'N':>6} {'step':<8} {'chain s':>9} {'flat s':>9} {'ratio':>7}  "
          "every run (chain | flat)")
    for n in (int(x) for x in args.depths.split(",")):
        shapes = {"chain": ["d/" * n + "leaf"],
                  "flat": [*(f"d{i}/" for i in range(n)), "leaf"]}
        runs: dict[str, list[dict[str, float]]] = {"chain": [], "flat": []}
        for _ in range(args.runs):
            for shape, names in shapes.items():  # alternate, so drift hits both alike
                work = Path(tempfile.mkdtemp(prefix="pycvmfs-deep-"))
                try:
                    runs[shape].append(_one_run(work, names))
                finally:  # shutil.rmtree recurses per level
                    subprocess.run(["rm", "-rf", str(work)], check=False)
        for step in steps:
            chain = [r[step] for r in runs["chain"]]
            flat = [r[step] for r in runs["flat"]]
            c, f = statistics.median(chain), statistics.median(flat)
            every = " ".join(f"{x:.2f}" for x in chain) + " | " + " ".join(f"{x:.2f}" for x in flat)
            print(f"{n:>6} {step:<8} {c:>9.2f} {f:>9.2f} {c / f:>6.2f}x  {every}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
