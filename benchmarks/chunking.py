"""By-hand benchmark: chunking throughput next to single-core zlib on the same mixed data.

Run: ``.venv/bin/python benchmarks/chunking.py [MiB]`` (default 256). Prints MB/s (10^6 bytes/s).
"""

from __future__ import annotations

import io
import itertools
import resource
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

from pycvmfs.format.chunking import DEFAULT_CHUNKING, cut_points, iter_chunks

MIB = 1 << 20


def mixed_data(size: int, seed: int = 1) -> memoryview:
    """Text-like, random, sparse and numeric 1 MiB segments in a fixed random order."""
    rng = np.random.default_rng(seed)
    symbols = np.frombuffer(b" etaoinshrdlcumwfgypbvkjxqz\n", dtype=np.uint8)
    weights = np.array([18, 12, 9, 8, 7, 7, 6, 6, 6, 5, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1,
                        1, 1, 1, 1, 2], dtype=np.float64)
    weights /= weights.sum()
    out = np.empty(size, dtype=np.uint8)
    for pos in range(0, size, MIB):
        n = min(MIB, size - pos)
        kind = rng.choice(4, p=[0.4, 0.3, 0.15, 0.15])
        if kind == 0:  # text-like
            seg = symbols[rng.choice(len(symbols), n, p=weights)]
        elif kind == 1:  # incompressible
            seg = rng.integers(0, 256, n, dtype=np.uint8)
        elif kind == 2:  # mostly zeros
            seg = np.zeros(n, dtype=np.uint8)
            idx = rng.integers(0, n, n // 50)
            seg[idx] = rng.integers(0, 256, len(idx), dtype=np.uint8)
        else:  # slowly varying little-endian int32 values
            vals = np.cumsum(rng.integers(-3, 4, (n + 3) // 4)).astype("<i4")
            seg = vals.view(np.uint8)[:n]
        out[pos : pos + n] = seg
    return out.data.cast("B")


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM; ru_maxrss keeps the parent's across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_file(path: str) -> None:
    """Child process: chunk a file with iter_chunks and report speed and peak RSS."""
    t0 = time.perf_counter()
    total = chunks = 0
    with open(path, "rb") as f:
        for _offset, chunk in iter_chunks(f, DEFAULT_CHUNKING):
            total += len(chunk)
            chunks += 1
    seconds = time.perf_counter() - t0
    rss = peak_rss_mib()
    print(f"iter_chunks from a file:      {rate(total, seconds):8.1f} MB/s  "
          f"({chunks} chunks, peak RSS of that process {rss:.0f} MiB)")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--stream":
        stream_file(sys.argv[2])
        return
    size = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 256 * MIB
    data = mixed_data(size)
    print(f"data: {size / MIB:.0f} MiB mixed, params {DEFAULT_CHUNKING}")

    t0 = time.perf_counter()
    cuts = cut_points(data)
    t_cut = time.perf_counter() - t0
    print(f"cut_points (whole buffer):    {rate(size, t_cut):8.1f} MB/s  "
          f"({len(cuts) + 1} chunks)")

    source = io.BytesIO(data)
    t0 = time.perf_counter()
    offsets = [offset for offset, _chunk in iter_chunks(source, DEFAULT_CHUNKING)]
    t_stream = time.perf_counter() - t0
    assert offsets == [0, *cuts], "streaming and whole-buffer chunk lists differ"
    print(f"iter_chunks (1 MiB blocks):   {rate(size, t_stream):8.1f} MB/s")

    with tempfile.NamedTemporaryFile(prefix="pycvmfs-bench-") as tmp:
        tmp.write(data)
        tmp.flush()
        subprocess.run([sys.executable, __file__, "--stream", tmp.name], check=True)

    view = memoryview(data)
    t0 = time.perf_counter()
    compressed = sum(len(zlib.compress(view[a:b])) for a, b in itertools.pairwise([0, *cuts, size]))
    t_zlib = time.perf_counter() - t0
    print(f"zlib.compress per chunk:      {rate(size, t_zlib):8.1f} MB/s  "
          f"(one core, compressed/raw {compressed / size:.2f})")
    print(f"chunking / zlib speed:        {t_zlib / t_cut:8.1f}x (whole buffer), "
          f"{t_zlib / t_stream:.1f}x (streaming)")


if __name__ == "__main__":
    main()
