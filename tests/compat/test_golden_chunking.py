"""Re-chunking the golden fixture's source files reproduces the stock chunk lists and names."""

from __future__ import annotations

import hashlib
import io
import itertools
from pathlib import Path

import pytest

from pycvmfs.format.chunking import ChunkingParams, cut_points, iter_chunks
from pycvmfs.format.compression import compress
from pycvmfs.format.hashes import Algorithm, hash_bytes

REVS = ["rev1", "rev2"]


def _golden_params(expected: dict) -> ChunkingParams:
    conf = expected["published"]["server_conf"]
    assert conf["CVMFS_USE_FILE_CHUNKING"] == "true"
    return ChunkingParams(
        int(conf["CVMFS_MIN_CHUNK_SIZE"]),
        int(conf["CVMFS_AVG_CHUNK_SIZE"]),
        int(conf["CVMFS_MAX_CHUNK_SIZE"]),
    )


def _object_name(data: bytes) -> str:
    return str(hash_bytes(compress(data), Algorithm.SHA1))


def _source(trees: Path, rev: str, path: str, expected: dict) -> bytes:
    data = (trees / rev / path).read_bytes()
    # the regenerated source must be the tree the stock tools published
    assert hashlib.sha1(data).hexdigest() == expected["trees"][rev]["entries"][path]["sha1"], path
    return data


def test_golden_params_are_the_small_fixture_sizes(golden_expected):
    assert _golden_params(golden_expected) == ChunkingParams(65536, 131072, 262144)


def test_golden_source_trees_carry_user_xattrs(golden_source_trees, golden_expected):
    import os

    for rev in REVS:
        path = "xattr/with-xattr.txt"
        want = golden_expected["trees"][rev]["entries"][path]["xattrs_hex"]
        p = golden_source_trees / rev / path
        got = {k: os.getxattr(p, k).hex() for k in os.listxattr(p) if k.startswith("user.")}
        assert got == want


@pytest.mark.parametrize("rev", REVS)
def test_chunked_files_reproduce_stock_chunk_lists(rev, golden_source_trees, golden_expected):
    params = _golden_params(golden_expected)
    files = golden_expected["published"]["files"][rev]
    chunked = {p: f for p, f in files.items() if f["chunks"] > 1}
    assert len(chunked) >= 4  # about-200k, blob-1m, blob-3m, chunked-in-nested
    for path, info in chunked.items():
        data = _source(golden_source_trees, rev, path, golden_expected)
        assert len(data) > params.min_size
        want = [(c["offset"], c["size"], c["hash"]) for c in info["chunk_list"]]
        assert len(want) == info["chunks"]
        cuts = cut_points(data, params)
        bounds = [0, *cuts, len(data)]
        got = [
            (a, b - a, _object_name(data[a:b])) for a, b in itertools.pairwise(bounds)
        ]
        assert got == want, path
        streamed = [
            (off, len(chunk), _object_name(chunk))
            for off, chunk in iter_chunks(io.BytesIO(data), params, block_size=50_000)
        ]
        assert streamed == want, path


@pytest.mark.parametrize("rev", REVS)
def test_unchunked_files_have_no_cut_and_stock_object_name(
    rev, golden_source_trees, golden_expected
):
    params = _golden_params(golden_expected)
    files = golden_expected["published"]["files"][rev]
    single = {p: f for p, f in files.items() if f["chunks"] == 1}
    above_min = 0
    for path, info in single.items():
        data = _source(golden_source_trees, rev, path, golden_expected)
        assert cut_points(data, params) == [], path
        assert _object_name(data) == info["cvmfs_hash"], path
        above_min += len(data) > params.min_size
    assert above_min >= 1  # text/just-above-min-chunk.txt: chunkable size, no trigger
