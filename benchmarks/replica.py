"""Stratum-1 benchmark: `pycvmfs snapshot` of a release-like repository served by nginx.

Run by hand:  .venv/bin/python benchmarks/replica.py [--files N] [--scale F] [--workers N]
(quick run: --files 2000 --scale 0.1)

Publishes the tree of benchmarks/treegen.py with our publisher, serves the storage with a real
nginx on 127.0.0.1 (docs/nginx-cvmfs.conf), and measures in the same run: a full snapshot
(objects/s, MB/s, peak RSS) against `curl --parallel --parallel-max N` downloading the same object
URLs from the same server into files (ratio; target >= 0.8x), an incremental snapshot after a 1 %
change (objects fetched = objects the publish added), and a no-op snapshot (target < 0.5 s)
against, when the stock tools are installed (tools/stock-cvmfs.sh), a no-op `cvmfs_server
snapshot` of a stock stratum 1 of the same source (issue 16: pycvmfs <= 1.0x the stock time).
Numbers on a shared machine are noisy: run it twice.

Extra measurements plug in through ``HOOKS`` (callables taking a :class:`BenchContext`), e.g.
"pycvmfs serve vs nginx requests/s" from benchmarks/serve.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' nginx
from _stock import StockReplica, stock_server, stock_version
from treegen import apply_changes, change_set, generate, restore

from publish import publish

from helpers.webservers import nginx_server

FQRN = "bench.example.org"
STOCK_ALIAS = "stock-s1-bench.example.org"  # the stock stratum 1's name (add-replica -n)

# The snapshot runs in a child process so that its peak RSS is its own.
_CHILD = r"""
import json, sys
from pathlib import Path
from pycvmfs.replica.snapshot import snapshot
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage
url, dest, state, key, workers = sys.argv[1:6]
src = HttpSource([url], pool_size=int(workers))
store = LocalStorage(dest, fsync=False)
store.create_skeleton()
r = snapshot(src, store, "bench.example.org", [key], state_dir=state, workers=int(workers))
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        rss = int(line.split()[1]) * 1024
print(json.dumps({**r.to_dict(), "rss": rss}))
"""


@dataclass
class BenchContext:
    """What a hook gets: the published storage, the nginx base URL, the keys, a scratch dir."""

    storage: Path  # <srv>/<fqrn>: the stratum 0's storage directory
    nginx_url: str  # http://127.0.0.1:PORT/cvmfs (repository: nginx_url + "/" + fqrn)
    fqrn: str
    public_key: Path
    scratch: Path


#: Extra measurements run after the snapshot ones, e.g. serve-vs-nginx from benchmarks/serve.py.
HOOKS: list[Callable[[BenchContext], None]] = []


def data_objects(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*")
                  if p.is_file() and p.parent.name != "txn")


def curl_parallel(base: str, objects: list[str], out: Path, parallel: int) -> float:
    """Seconds for curl to download every object into files under ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    conf = out.parent / "curl.conf"
    conf.write_text("".join(f'url = "{base}/{rel}"\noutput = "{out}/{rel}"\n'
                            for rel in objects))
    t0 = time.perf_counter()
    subprocess.run(["curl", "--no-progress-meter", "--fail", "--create-dirs", "--parallel",
                    "--parallel-max", str(parallel), "--config", str(conf)], check=True)
    return time.perf_counter() - t0


def _settle() -> None:
    """Flush what earlier steps wrote, so that its writeback does not slow the next one."""
    os.sync()
    time.sleep(1.0)


def snapshot_child(url: str, dest: Path, state: Path, key: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, url, str(dest), str(state), str(key),
                          str(workers)], check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall"] = time.perf_counter() - t0
    return res


def cli_noop(url: str, dest: Path, state: Path, key: Path) -> float:
    """Wall time of `pycvmfs snapshot URL DEST` when nothing changed (startup included), best
    of three. Bytecode may be written (an installed package has it; PYTHONDONTWRITEBYTECODE
    would otherwise make every run compile the sources again, about 0.2 s here)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [sys.executable, "-m", "pycvmfs.cli.main", "snapshot", url, str(dest), "-k",
            str(key), "--fqrn", FQRN, "--state-dir", str(state)]
    times = []
    for _ in range(4):  # the first run writes the bytecode
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def stock_noop_snapshot(url: str, key: Path, ours: float, full_s: float, skip: bool) -> None:
    """The same no-op with a stock stratum 1 of the same source (``cvmfs_server add-replica``,
    a full ``snapshot``, then no-op ones: best of three), when the stock tools are installed;
    ``ours``: the pycvmfs no-op command's seconds, ``full_s``: its full snapshot's."""
    if skip or not stock_server():
        print("stock no-op snapshot: " + ("not asked for (--no-stock)" if skip else
              "the stock tools are not installed (tools/stock-cvmfs.sh install)"))
        return
    with StockReplica(STOCK_ALIAS, url, key) as replica:
        full = replica.snapshot()
        print(f"stock full snapshot: {full.seconds:.2f} s, CPU {full.cpu:.1f} s, peak RSS "
              f"{full.maxrss / 2**20:.0f} MiB ({stock_version()}); the pycvmfs one (in the "
              f"API) took {full_s / full.seconds:.2f}x its time")
        noops = [replica.snapshot().seconds for _ in range(3)]
    print(f"stock no-op snapshot (the whole `cvmfs_server snapshot` command): "
          f"{min(noops) * 1000:.0f} ms (runs: {', '.join(f'{x * 1000:.0f}' for x in noops)} ms)"
          f"; pycvmfs/stock: {ours / min(noops):.2f}x the time (target <= 1.0x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, help="reuse/generate the tree here")
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--scratch", type=Path,
                    help="where the replicas and curl's files go (default: the temporary "
                         "folder); e.g. /dev/shm to compare the programs without the disk")
    ap.add_argument("--no-stock", action="store_true",
                    help="without the stock no-op snapshot (stock tools installed)")
    args = ap.parse_args()
    from pycvmfs.publish.repository import Publisher

    with tempfile.TemporaryDirectory(prefix="pycvmfs-s1bench-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx workers (nobody) must reach the storage
        tree = args.tree or tmp / "tree"
        if not (tree / "releases").exists():
            print(f"generated {generate(tree, files=args.files, scale=args.scale)}")
        srv = tmp / "srv"
        pub = Publisher.mkfs(FQRN, srv / FQRN, config_dir=tmp / "etc")
        publish(FQRN, tmp / "etc", tree)
        key = pub.config.key_path("pub")
        subprocess.run(["chmod", "-R", "a+rX", str(srv)], check=True)
        with nginx_server(srv, workers=2, benchmark=True) as server:
            base = server.url
            url = f"{base}/{FQRN}"
            objects = data_objects(srv / FQRN)
            size = sum((srv / FQRN / rel).stat().st_size for rel in objects)
            print(f"source: {len(objects)} objects, {size / 1e6:.0f} MB stored")
            out = Path(tempfile.mkdtemp(dir=args.scratch)) if args.scratch else tmp
            curl_parallel(url, objects, out / "curl", args.workers)  # warm the page cache
            # Two rounds, alternating, each after the disk has settled: creating 14,000 files
            # costs seconds here, and writeback left over from the previous step would
            # otherwise land on whichever runs next. The best of each is compared.
            fulls: list[dict] = []
            curls: list[float] = []
            for r in range(2):
                dest, state = out / f"replica{r}", tmp / f"state{r}"
                _settle()
                fulls.append(snapshot_child(url, dest, state, key, args.workers))
                copied = data_objects(dest)
                assert set(copied) <= set(objects), "the replica has objects the source has not"
                # the same objects as the snapshot (it skips mkfs's revision 0, old histories)
                _settle()
                curls.append(curl_parallel(url, copied, out / "curl", args.workers))
                shutil.rmtree(out / "curl")
            shutil.rmtree(out / "replica0")
            curl_s = min(curls)
            full = min(fulls, key=lambda f: f["seconds"])
            csize = sum((dest / rel).stat().st_size for rel in copied)
            print(f"curl --parallel-max {args.workers} into files: {curl_s:.2f} s = "
                  f"{len(copied) / curl_s:.0f} objects/s, {csize / curl_s / 1e6:.1f} MB/s "
                  f"(runs: {', '.join(f'{c:.2f}' for c in curls)} s)")
            secs = full["seconds"]
            print(f"full snapshot: {secs:.2f} s = {len(copied) / secs:.0f} objects/s, "
                  f"{full['bytes_fetched'] / secs / 1e6:.1f} MB/s, peak RSS "
                  f"{full['rss'] / 2**20:.0f} MiB (target < 200 MiB), "
                  f"{full['objects_fetched']} data objects + {full['catalogs_fetched']} catalogs"
                  f" (runs: {', '.join(f'{x:.2f}' for x in (f['seconds'] for f in fulls))} s)")
            print(f"  ratio to curl: {curl_s / secs:.2f}x (target >= 0.8x)")

            before = set(objects)
            changes = change_set(tree, 0.01)
            originals = apply_changes(tree, changes)
            try:
                publish(FQRN, tmp / "etc", tree)
            finally:
                restore(tree, originals)  # a --tree given stays as it was
            changed = len(changes)
            subprocess.run(["chmod", "-R", "a+rX", str(srv)], check=True)
            new = set(data_objects(srv / FQRN)) - before
            inc = snapshot_child(url, dest, state, key, args.workers)
            print(f"incremental snapshot ({changed} files changed, {len(new)} new objects): "
                  f"{inc['seconds']:.2f} s = {inc['seconds'] / secs * 100:.1f} % of the full "
                  f"one, {inc['objects_fetched']} data objects + {inc['catalogs_fetched']} "
                  f"catalogs fetched, {inc['objects_present']} looked at and present")
            noop = snapshot_child(url, dest, state, key, args.workers)
            cli_s = cli_noop(url, dest, state, key)
            print(f"no-op snapshot: {noop['seconds'] * 1000:.0f} ms in the API "
                  f"(target < 500 ms), {cli_s * 1000:.0f} ms for the whole `pycvmfs snapshot` "
                  "command")
            stock_noop_snapshot(url, key, cli_s, secs, args.no_stock)
            ctx = BenchContext(srv / FQRN, base, FQRN, key, tmp / "hooks")
            for hook in HOOKS:
                hook(ctx)
            if args.scratch:
                shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
