"""A deterministic release-like software tree for benchmarks (``python treegen.py DIR``).

About 20,000 files and 1 GiB by default: mostly small compressible text (headers, scripts,
configuration), shared libraries of 1-20 MiB (compressible binary), a few files over 100 MiB, and
about 30 % of the contents duplicated under other names (as release areas repeat packages).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

_VOCABULARY = """
int void return struct include define static const char double float namespace class template
typename public private virtual override std vector string map set unique_ptr auto for while if
else switch case break continue nullptr true false size_t uint64_t ROOT Geant4 Pythia8 HepMC boost
tbb python numpy cmake export PATH LD_LIBRARY_PATH x86_64 el9 gcc13 opt dbg lcg view release
nightly setup sh bin lib include share
"""
WORDS = np.array([w.encode() for w in _VOCABULARY.split()])


def text_bytes(rng: np.random.Generator, size: int) -> bytes:
    n = max(1, size // 6)
    words = WORDS[rng.integers(0, len(WORDS), n)]
    seps = np.where(rng.random(n) < 0.1, b"\n", b" ")
    out = b"".join(w + s for w, s in zip(words.tolist(), seps.tolist(), strict=True))
    return (out * (size // max(1, len(out)) + 1))[:size]


def binary_bytes(rng: np.random.Generator, size: int) -> bytes:
    """Compressible binary (like a shared library: code, tables, zero padding, strings)."""
    parts = []
    total = 0
    while total < size:
        kind = rng.integers(0, 4)
        n = int(rng.integers(4096, 65536))
        if kind == 0:
            parts.append(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        elif kind == 1:
            parts.append(bytes(n))
        elif kind == 2:
            parts.append(rng.integers(0, 16, n, dtype=np.uint8).tobytes())
        else:
            parts.append(text_bytes(rng, n))
        total += n
    return b"".join(parts)[:size]


def generate(root: Path, *, files: int = 20_000, scale: float = 1.0, seed: int = 1) -> dict:
    """Write the tree; returns counts. ``scale`` multiplies the big-file sizes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pool: list[bytes] = []
    stats = {"files": 0, "bytes": 0, "duplicates": 0}
    n_big = 3
    n_libs = 80
    n_small = files - n_big - n_libs
    for i in range(n_small):
        pkg = f"pkg{i % 120:03d}/{i % 7}.{i % 3}"
        sub = ["include", "src", "share", "bin", "python"][i % 5]
        ext = ["h", "cc", "txt", "sh", "py"][i % 5]
        path = root / "releases" / pkg / sub / f"file{i:05d}.{ext}"
        if pool and rng.random() < 0.3:
            data = pool[int(rng.integers(0, len(pool)))]
            stats["duplicates"] += 1
        else:
            data = text_bytes(rng, int(rng.lognormal(8.5, 1.2)) % 400_000 + 10)
            if len(pool) < 4000:
                pool.append(data)
        _write(path, data, stats)
    libs: list[bytes] = []
    for i in range(n_libs):
        path = root / "releases" / f"pkg{i:03d}" / "lib" / f"lib{i:03d}.so"
        if libs and rng.random() < 0.3:
            data = libs[int(rng.integers(0, len(libs)))]
            stats["duplicates"] += 1
        else:
            top = max(2 << 20, int((12 << 20) * scale))
            data = binary_bytes(rng, int(rng.integers(1 << 20, top)))
            libs.append(data)
        _write(path, data, stats)
    for i in range(n_big):
        _write(root / "data" / f"big{i}.root", binary_bytes(rng, int((110 << 20) * scale)), stats)
    return stats


def change_set(root: Path, fraction: float = 0.01, seed: int = 2) -> dict[str, bytes]:
    """New contents for ``fraction`` of the small files (relative path -> bytes, each 17 bytes
    longer than the file now), without writing them: the same set can then be applied to
    several copies of the tree (:func:`apply_changes`)."""
    rng = np.random.default_rng(seed)
    files = sorted(p for p in (root / "releases").rglob("file*") if p.is_file())
    chosen = rng.choice(len(files), max(1, int(len(files) * fraction)), replace=False)
    return {str(files[int(i)].relative_to(root)): text_bytes(rng, files[int(i)].stat().st_size
                                                             + 17)
            for i in chosen}


def apply_changes(root: Path, changes: dict[str, bytes]) -> dict[str, bytes]:
    """Write ``changes`` (new content, new mtime) under ``root``; returns the contents they
    replaced, for :func:`restore`."""
    before = {rel: (root / rel).read_bytes() for rel in changes}
    for rel, data in changes.items():
        (root / rel).write_bytes(data)
    return before


def restore(root: Path, originals: dict[str, bytes]) -> None:
    """Put back what :func:`apply_changes` replaced, with the generated trees' fixed mtime."""
    stats = {"files": 0, "bytes": 0}
    for rel, data in originals.items():
        _write(root / rel, data, stats)


def change_fraction(root: Path, fraction: float = 0.01, seed: int = 2) -> int:
    """Rewrite ``fraction`` of the small files (new content, new mtime); returns how many."""
    changes = change_set(root, fraction, seed)
    apply_changes(root, changes)
    return len(changes)


def _write(path: Path, data: bytes, stats: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    stats["files"] += 1
    stats["bytes"] += len(data)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args()
    print(generate(a.dir, files=a.files, scale=a.scale))
