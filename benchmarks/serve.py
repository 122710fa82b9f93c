"""Serving benchmark: object GETs per second of ``pycvmfs serve`` against nginx, with wrk.

Run by hand:  .venv/bin/python benchmarks/serve.py [--storage DIR --fqrn NAME] [--seconds S]
                                                   [--workers 1,2] [--connections C]

Serves one repository storage (default: the golden fixture) with nginx configured by
docs/nginx-cvmfs.conf and with ``pycvmfs serve``, the same number of worker processes each, one
after the other in the same run, and spreads wrk's GETs over every object under ``data/``.
Prints requests/s, p99 latency, server CPU seconds and the ratios pycvmfs / nginx (target: at
least 0.5x in requests/s). :func:`compare_serve` is the same as a function for other benchmarks.
wrk and the servers share the machine's cores: numbers on a busy machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' nginx
from helpers.daemons import free_port, stop_process, wait_for_port
from helpers.webservers import WebServer, nginx_server

WRK = "/usr/bin/wrk"
GOLDEN = Path(__file__).resolve().parents[1] / "tests/fixtures/cvmfs-golden/golden.example.org"

# Every thread reads the URL list and walks it from its own offset; done() prints one JSON line.
WRK_SCRIPT = """\
local paths, n, i = {}, 0, 0
local created = 0
setup = function(thread) created = created + 1; thread:set("tid", created) end
init = function(args)
  for line in io.lines(args[1]) do n = n + 1; paths[n] = line end
  i = (tid or 0) * 7919 % n
end
request = function()
  i = i % n + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRKJSON {"requests": %d, "bytes": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants (from /proc)."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    wanted, total, changed = {root_pid}, 0, True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    total = sum(stats[p][1] for p in wanted if p in stats)
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def nginx_benchmarked(serve_root: Path, workers: int) -> Iterator[WebServer]:
    """nginx with docs/nginx-cvmfs.conf and ``workers`` workers, tuned for load, serving
    ``serve_root/<fqrn>/`` at ``/cvmfs/<fqrn>/``."""
    # workers as root: the storage (by default the golden fixture) may not be world-readable
    with nginx_server(serve_root, workers=workers, benchmark=True,
                      user=("root", "root")) as server:
        yield server


@contextlib.contextmanager
def pycvmfs_server(serve_root: Path, workers: int) -> Iterator[WebServer]:
    """``pycvmfs serve`` on the repositories below ``serve_root``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pycvmfs.cli.main", "serve", str(serve_root),
                             "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "pycvmfs serve", limit=20)
        yield WebServer(port, proc)
    finally:
        stop_process(proc, timeout=15)


def object_paths(storage_dir: Path) -> list[str]:
    """Every object file below ``data/`` (relative paths), without ``data/txn``."""
    data = storage_dir / "data"
    found = sorted(str(p.relative_to(storage_dir)) for p in data.glob("??/*") if p.is_file())
    if not found:
        raise RuntimeError(f"{data}: no objects to request")
    return found


def run_wrk(port: int, url_list: Path, script: Path, seconds: float, connections: int,
            threads: int = 1, pid: int | None = None) -> dict:
    """One wrk run; requests/s, latency percentiles, errors and the server's CPU seconds."""
    cpu0 = _cpu_seconds(pid) if pid else 0.0
    duration = f"{max(1, round(seconds))}s"
    out = subprocess.run([WRK, "-t", str(threads), "-c", str(connections), "-d", duration,
                          "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}",
                          "--", str(url_list)], capture_output=True, text=True, check=True)
    cpu = _cpu_seconds(pid) - cpu0 if pid else 0.0
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON "))
    raw = json.loads(line.split(" ", 1)[1])
    secs = raw["duration_us"] / 1e6
    return {"requests_per_s": raw["requests"] / secs, "requests": raw["requests"],
            "mb_per_s": raw["bytes"] / secs / 1e6, "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000,
            "errors": sum(raw[k] for k in ("connect", "read", "write", "status", "timeout")),
            "server_cpu_s": cpu,
            "requests_per_cpu_s": raw["requests"] / cpu if cpu else 0.0}


def compare_serve(storage_dir: Path, fqrn: str, seconds: float, *,
                  workers: tuple[int, ...] = (1, 2), connections: int = 100) -> dict:
    """wrk object GETs against nginx and ``pycvmfs serve`` on ``storage_dir`` in this run.

    For each worker count W: nginx with W workers, then ``pycvmfs serve --workers W``, each for
    ``seconds``. Returns ``{"objects": n, "runs": {W: {"nginx": stats, "pycvmfs": stats,
    "ratio": r, "ratio_per_cpu_s": r2}}}`` where a stats dict holds ``requests_per_s``,
    ``p50_ms``, ``p99_ms``, ``errors``, ``server_cpu_s``, ``requests_per_cpu_s``.
    """
    if not os.access(WRK, os.X_OK):
        raise RuntimeError(f"{WRK} not found: install the Debian package wrk")
    storage_dir = Path(storage_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="pycvmfs-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        serve_root = tmp / "srv"
        serve_root.mkdir()
        (serve_root / fqrn).symlink_to(storage_dir)
        paths = object_paths(storage_dir)
        url_list = tmp / "urls.txt"
        url_list.write_text("".join(f"/cvmfs/{fqrn}/{p}\n" for p in paths))
        script = tmp / "objects.lua"
        script.write_text(WRK_SCRIPT)
        runs: dict[int, dict] = {}
        for w in workers:
            run: dict[str, dict] = {}
            for name, starter in (("nginx", nginx_benchmarked), ("pycvmfs", pycvmfs_server)):
                with starter(serve_root, w) as server:
                    run_wrk(server.port, url_list, script, 1, connections)  # warm up
                    run[name] = run_wrk(server.port, url_list, script, seconds, connections,
                                        pid=server.proc.pid)
            n, p = run["nginx"], run["pycvmfs"]
            runs[w] = {**run, "ratio": p["requests_per_s"] / n["requests_per_s"],
                       "ratio_per_cpu_s": (p["requests_per_cpu_s"] / n["requests_per_cpu_s"]
                                           if n["requests_per_cpu_s"] else 0.0)}
    return {"objects": len(paths), "connections": connections, "seconds": seconds,
            "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", type=Path, default=GOLDEN, help="repository storage directory")
    ap.add_argument("--fqrn", default="golden.example.org")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = ap.parse_args()
    result = compare_serve(args.storage, args.fqrn, args.seconds,
                           workers=tuple(int(w) for w in args.workers.split(",")),
                           connections=args.connections)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['objects']} objects of {args.storage}, {args.connections} connections, "
          f"{args.seconds:g} s per run, on {os.cpu_count()} cores shared with wrk")
    for w, run in result["runs"].items():
        for name in ("nginx", "pycvmfs"):
            s = run[name]
            print(f"  workers={w} {name:8s} {s['requests_per_s']:9.0f} req/s  "
                  f"p50 {s['p50_ms']:6.2f} ms  p99 {s['p99_ms']:6.2f} ms  "
                  f"errors {s['errors']}  cpu {s['server_cpu_s']:5.1f} s  "
                  f"{s['requests_per_cpu_s']:7.0f} req/cpu-s")
        print(f"  workers={w} ratio pycvmfs/nginx: {run['ratio']:.2f}x req/s, "
              f"{run['ratio_per_cpu_s']:.2f}x per CPU-second (target >= 0.5x)")


if __name__ == "__main__":
    main()
