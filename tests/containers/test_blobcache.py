"""BlobCache: verified puts, refused corrupt/truncated/oversized streams, resume, races, prune."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import pytest

from pycvmfs.containers.blobcache import BlobCache
from pycvmfs.errors import ContainerError

DATA = os.urandom(3 << 20) + b"tail"
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def leftovers(cache: BlobCache) -> list[str]:
    return sorted(p.name for p in cache.dir.iterdir())


def test_put_then_open_and_path(tmp_path):
    cache = BlobCache(tmp_path / "c")
    assert cache.path_for(DIGEST) is None
    path = cache.put_stream(DIGEST, len(DATA), io.BytesIO(DATA).read, "blob x")
    assert path == tmp_path / "c" / "sha256" / DIGEST[7:]
    assert path.read_bytes() == DATA
    assert cache.path_for(DIGEST) == path
    assert leftovers(cache) == [DIGEST[7:]]
    with cache.open(DIGEST, len(DATA), verify=True) as f:
        assert f.read() == DATA


def test_digest_mismatch_refused_and_temp_removed(tmp_path):
    cache = BlobCache(tmp_path)
    bad = bytearray(DATA)
    bad[12345] ^= 1
    with pytest.raises(ContainerError, match=r"blob y: digest mismatch \(expected "
                       + DIGEST + r", got sha256:[0-9a-f]{64}\)"):
        cache.put_stream(DIGEST, len(DATA), io.BytesIO(bytes(bad)).read, "blob y")
    assert leftovers(cache) == []
    assert cache.path_for(DIGEST) is None


def test_oversized_stream_stops_at_the_size(tmp_path):
    cache = BlobCache(tmp_path)
    served = []

    def endless(n: int) -> bytes:
        served.append(n)
        return b"\0" * n

    with pytest.raises(ContainerError, match=f"more than the 100 bytes .* {DIGEST}"):
        cache.put_stream(DIGEST, 100, endless, "blob z")
    assert len(served) == 1  # stopped as soon as it went over, did not drain the stream
    assert leftovers(cache) == []


def test_truncated_stream_refused_then_resumed(tmp_path):
    cache = BlobCache(tmp_path)
    cut = len(DATA) // 3
    with pytest.raises(ContainerError, match=f"ended after {cut} of {len(DATA)} bytes"):
        cache.put_stream(DIGEST, len(DATA), io.BytesIO(DATA[:cut]).read, "blob t")
    assert cache.path_for(DIGEST) is None
    assert leftovers(cache) == [DIGEST[7:] + ".part"]
    claim = cache.partial(DIGEST)
    assert claim is not None and claim.offset == cut
    assert cache.partial(DIGEST) is None  # claimed: a second writer does not get it
    path = cache.put_stream(DIGEST, len(DATA), io.BytesIO(DATA[cut:]).read, "blob t",
                            resume=claim)
    assert path.read_bytes() == DATA
    assert leftovers(cache) == [DIGEST[7:]]


def test_failing_source_keeps_partial_and_wrong_resume_is_refused(tmp_path):
    cache = BlobCache(tmp_path)
    src = io.BytesIO(DATA)

    def flaky(n: int) -> bytes:
        if src.tell() >= 1 << 20:
            raise ConnectionResetError("peer went away")
        return src.read(min(n, 1 << 19))

    with pytest.raises(ConnectionResetError):
        cache.put_stream(DIGEST, len(DATA), flaky, "blob f")
    claim = cache.partial(DIGEST)
    assert claim is not None and claim.offset == 1 << 20
    # the resumed stream sends the wrong bytes: the whole blob is refused, nothing kept
    with pytest.raises(ContainerError, match="digest mismatch"):
        cache.put_stream(DIGEST, len(DATA), io.BytesIO(DATA[:len(DATA) - claim.offset]).read,
                         "blob f", resume=claim)
    assert leftovers(cache) == []


def test_concurrent_puts_of_one_blob_end_with_one_valid_file(tmp_path):
    cache = BlobCache(tmp_path)
    barrier = threading.Barrier(2)
    errors = []

    def put() -> None:
        src = io.BytesIO(DATA)

        def read(n: int) -> bytes:
            chunk = src.read(min(n, 1 << 18))
            if src.tell() == 1 << 18:
                barrier.wait(5)  # both writers are half-way through at the same time
            return chunk

        try:
            cache.put_stream(DIGEST, len(DATA), read, "blob c")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=put) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert leftovers(cache) == [DIGEST[7:]]
    with cache.open(DIGEST, len(DATA), verify=True) as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == DIGEST[7:]


def test_open_detects_damage_on_disk(tmp_path):
    cache = BlobCache(tmp_path)
    path = cache.put_stream(DIGEST, len(DATA), io.BytesIO(DATA).read, "blob d")
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"X")
    with cache.open(DIGEST, len(DATA)) as f:  # same size: only verify=True can tell
        assert f.read(4) == DATA[:4]
    with pytest.raises(ContainerError, match=f"{path} hashes to sha256:[0-9a-f]{{64}}, "
                       f"not {DIGEST}; removed"):
        cache.open(DIGEST, len(DATA), verify=True)
    assert cache.path_for(DIGEST) is None
    with pytest.raises(ContainerError, match=f"{DIGEST} is not cached"):
        cache.open(DIGEST)


def test_open_detects_wrong_size(tmp_path):
    cache = BlobCache(tmp_path)
    path = cache.put_stream(DIGEST, len(DATA), io.BytesIO(DATA).read, "blob s")
    with open(path, "ab") as f:
        f.write(b"more")
    with pytest.raises(ContainerError, match=f"{path} has {len(DATA) + 4} bytes"):
        cache.open(DIGEST, len(DATA))
    assert not path.exists()


def test_open_refuses_a_fifo_without_hanging(tmp_path):
    cache = BlobCache(tmp_path)
    os.mkfifo(cache.dir / DIGEST[7:])
    with pytest.raises(ContainerError, match="not a regular file"):
        cache.open(DIGEST)
    assert cache.path_for(DIGEST) is None


def test_prune_keeps_what_is_asked_and_young_temporaries(tmp_path):
    cache = BlobCache(tmp_path)
    blobs = [os.urandom(100) for _ in range(3)]
    digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
    for b, d in zip(blobs, digests, strict=True):
        cache.put_stream(d, len(b), io.BytesIO(b).read, "blob p")
    young = cache.dir / (digests[0][7:] + ".abc.tmp")
    old = cache.dir / (digests[1][7:] + ".part")
    young.write_bytes(b"x")
    old.write_bytes(b"y")
    long_ago = time.time() - 3 * 24 * 3600
    os.utime(old, (long_ago, long_ago))
    assert cache.prune({digests[0]}) == 3  # two blobs and the stale partial
    assert leftovers(cache) == sorted([digests[0][7:], young.name])
    assert cache.path_for(digests[0]) is not None


def test_bad_digest_refused_by_name(tmp_path):
    cache = BlobCache(tmp_path)
    with pytest.raises(ContainerError, match="'sha256:abc' is not a sha256 digest"):
        cache.put_stream("sha256:abc", 1, io.BytesIO(b"x").read, "blob b")
    assert leftovers(cache) == []
