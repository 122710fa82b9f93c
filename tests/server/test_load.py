"""Load test: 1,000 concurrent wrk connections against ``pycvmfs serve`` for 30 s, every byte
checked."""

from __future__ import annotations

import hashlib
import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.daemons import free_port, require_binary

WRK = "/usr/bin/wrk"
FQRN = "load.example.org"
CONNECTIONS = 1000
SECONDS = 30
PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyz\n"

# Each object starts with its own size ("%08d\n") followed by PATTERN repeated: the script
# rebuilds the expected bytes from the first line and compares the whole body with them.
CHECKING_SCRIPT = """\
local paths, n, i = {}, 0, 0
local expected = {}
local threads = {}
local PATTERN = "0123456789abcdefghijklmnopqrstuvwxyz\\n"
setup = function(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
init = function(args)
  for line in io.lines(args[1]) do n = n + 1; paths[n] = line end
  i = (tid or 0) * 7919 % n
  good, bad, bytes, first_bad = 0, 0, 0, ""
end
local function body_of(size)
  local b = expected[size]
  if b == nil then
    local reps = math.floor((size - 9) / #PATTERN) + 1
    b = string.format("%08d\\n", size) .. string.sub(string.rep(PATTERN, reps), 1, size - 9)
    expected[size] = b
  end
  return b
end
request = function()
  i = i % n + 1
  return wrk.format("GET", paths[i])
end
response = function(status, headers, body)
  local size = tonumber(string.sub(body, 1, 8))
  if status == 200 and size ~= nil and #body == size and body == body_of(size) then
    good = good + 1
    bytes = bytes + size
  else
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " with " .. #body .. " bytes" end
  end
end
done = function(summary, latency, requests)
  local good_all, bad_all, bytes_all, first = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    good_all = good_all + t:get("good")
    bad_all = bad_all + t:get("bad")
    bytes_all = bytes_all + t:get("bytes")
    if first == "" then first = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    '\\nLOADJSON {"requests": %d, "duration_us": %d, "good": %d, "bad": %d, "bytes": %d, ' ..
    '"first_bad": "%s", "p50_us": %d, "p99_us": %d, "max_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, good_all, bad_all, bytes_all, first,
    latency:percentile(50), latency:percentile(99), latency.max, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


def object_bytes(size: int) -> bytes:
    body = PATTERN * ((size - 9) // len(PATTERN) + 1)
    return b"%08d\n" % size + body[:size - 9]


def make_storage(root: Path, golden_repo: Path) -> list[str]:
    """A repository storage with 300 objects of 9 B to 512 KiB (mostly small, some sent with
    sendfile); returns their paths."""
    root.mkdir(parents=True)
    (root / ".cvmfspublished").write_bytes((golden_repo / ".cvmfspublished").read_bytes())
    sizes = [9 + (i * 37) % 8000 for i in range(270)]
    sizes += [64 * 1024 + i * 15_000 for i in range(30)]  # 64 KiB .. 512 KiB
    paths = []
    for size in sorted(set(sizes)):
        data = object_bytes(size)
        name = hashlib.sha1(data).hexdigest()
        obj = root / "data" / name[:2] / name[2:]
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        paths.append(f"data/{name[:2]}/{name[2:]}")
    return paths


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * CONNECTIONS + 1024
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


@pytest.mark.slow
def test_a_thousand_connections_for_30_seconds_get_every_byte_right(tmp_path, golden_repo):
    require_binary(WRK, "wrk")
    raise_open_files_limit()
    paths = make_storage(tmp_path / "srv" / FQRN, golden_repo)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"/cvmfs/{FQRN}/{p}\n" for p in paths))
    script = tmp_path / "check.lua"
    script.write_text(CHECKING_SCRIPT)
    log = tmp_path / "access.log"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pycvmfs.cli.main", "serve", str(tmp_path / "srv"), "--port",
         str(port), "--workers", "2", "--access-log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert f"/cvmfs/{FQRN}" in server.stdout.readline()  # listening
        wrk = subprocess.run(
            [WRK, "-t", "2", "-c", str(CONNECTIONS), "-d", f"{SECONDS}s", "--timeout", "10s",
             "-s", str(script), f"http://127.0.0.1:{port}", "--", str(urls)],
            capture_output=True, text=True, timeout=SECONDS + 60)
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert wrk.returncode == 0, wrk.stderr
    line = next((ln for ln in wrk.stdout.splitlines() if ln.startswith("LOADJSON ")), None)
    assert line is not None, wrk.stdout + wrk.stderr
    r = json.loads(line.split(" ", 1)[1])
    seconds = r["duration_us"] / 1e6
    report = {"connections": CONNECTIONS, "seconds": round(seconds, 1),
              "requests": r["requests"], "requests_per_s": round(r["requests"] / seconds),
              "mb_per_s": round(r["bytes"] / seconds / 1e6, 1),
              "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
              "max_ms": r["max_us"] / 1000,
              "socket_errors": {k: r[k] for k in ("connect", "read", "write", "timeout")},
              "non_200_or_wrong_bytes": r["bad"]}
    (tmp_path / "load-report.json").write_text(json.dumps(report, indent=2))
    print(f"\nload test: {json.dumps(report)}")
    assert server.returncode == 0, err
    assert "Traceback" not in err
    assert report["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert r["status"] == 0 and r["bad"] == 0, r["first_bad"]
    assert r["good"] == r["requests"] >= 10 * CONNECTIONS
    # the server logged every answer wrk counted (and those cut off at the end of the run)
    lines = log.read_text().splitlines()
    assert r["requests"] <= len(lines) <= r["requests"] + CONNECTIONS
    assert all(re.search(r'" 200 (\d+|-)$', ln) for ln in lines)
