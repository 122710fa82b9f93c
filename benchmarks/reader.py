"""Reader benchmark: `verify` objects/s and a full `get`, from disk and over loopback HTTP.

Run by hand:  .venv/bin/python benchmarks/reader.py [--fixture DIR]

Baselines measured in the same run:
* verify: reading and SHA-1 hashing the same object files straight from disk (no catalogs, no
  decompression, no HTTP) — what a dumb checksum pass costs;
* get: `cp -a` of the fixture's source tree (regenerated with its gen_fixture.py) — what copying
  the same files locally costs.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pycvmfs.client.export import export_tree
from pycvmfs.client.repository import open_repository
from pycvmfs.client.verify import verify_repository

FQRN = "golden.example.org"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real web server
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms)

    def log_message(self, *a) -> None:
        pass


def _serve(directory: Path):
    h = functools.partial(_Quiet, directory=str(directory))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default=str(Path(__file__).resolve().parents[2] / "shared"
                                             / "fixtures" / "cvmfs-golden"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    fixture = Path(args.fixture)
    storage = fixture / FQRN
    keys = fixture / "keys"
    srv = _serve(fixture)
    url = f"http://127.0.0.1:{srv.server_address[1]}/{FQRN}"
    objects = [p for p in (storage / "data").rglob("*") if p.is_file()]

    def baseline_hash():
        for p in objects:
            hashlib.sha1(p.read_bytes()).digest()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, str(fixture / "gen_fixture.py"), "trees", str(tmp / "src")],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"{len(objects)} objects in the fixture storage; best of {args.rounds} rounds")
        base = min(_timed(baseline_hash)[1] for _ in range(args.rounds))
        print(f"baseline sha1 of every object file: {len(objects) / base:8.0f} objects/s")
        for name, loc in (("local", str(storage)), ("http", url)):
            best = None
            for r in range(args.rounds):
                with open_repository(loc, keys=[keys], cache_dir=tmp / f"c-{name}-{r}") as repo:
                    rep, secs = _timed(lambda repo=repo: verify_repository(repo, tags=True))
                assert rep.ok, rep.failures
                best = secs if best is None else min(best, secs)
            rate = rep.objects / best
            print(f"verify --all-tags ({name:5}): {rep.objects} objects in {best:6.3f} s = "
                  f"{rate:8.0f} objects/s = {rate / (len(objects) / base):.2f}x baseline")
        cp_times = []
        for r in range(args.rounds):
            dest = tmp / f"cp{r}"
            cp_times.append(_timed(lambda dest=dest: subprocess.run(
                ["cp", "-a", str(tmp / "src" / "rev2"), str(dest)], check=True))[1])
        cp = min(cp_times)
        print(f"baseline cp -a of the source tree: {cp:6.3f} s")
        for name, loc in (("local", str(storage)), ("http", url)):
            for warm in (False, True):
                times = []
                for r in range(args.rounds):
                    cache = tmp / f"g-{name}" if warm else tmp / f"g-{name}-{r}"
                    dest = tmp / f"out-{name}-{warm}-{r}"
                    with open_repository(loc, keys=[keys], cache_dir=cache) as repo, \
                            repo.open_revision() as view:
                        if warm and r == 0:
                            export_tree(view, "/", tmp / "prime")
                        rep, secs = _timed(
                            lambda view=view, dest=dest: export_tree(view, "/", dest))
                    times.append(secs)
                    shutil.rmtree(dest)
                t = min(times)
                print(f"get / ({name:5}, {'warm' if warm else 'cold'} cache): {rep.files} files, "
                      f"{rep.bytes} bytes in {t:6.3f} s = {t / cp:5.1f}x cp -a")
    srv.shutdown()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
