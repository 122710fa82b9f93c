"""The binary cache in a directory and in a real SeaweedFS bucket: round trips that keep modes,
links (absolute targets too), empty directories and mtimes; tampering detected before anything
is extracted; broken entries repaired by the next put; interrupted puts invisible; hostile
artifacts (the chained-symlink bypass) refused; two nodes sharing one bucket."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from pycvmfs.errors import StackError
from pycvmfs.stacks.binarycache import (
    BinaryCache,
    DirectoryBinaryCache,
    S3BinaryCache,
    open_binary_cache,
)
from stacks.test_safetar import chained_symlink_tar

H1 = hashlib.sha256(b"one").hexdigest()
H2 = hashlib.sha256(b"two").hexdigest()
RECORD = {"name": "pkg", "version": "1.0", "hash": H1}
ABSOLUTE_TARGET = "/cvmfs/sft.example.org/lcg/releases/zlib/1.3-abcde/x86_64-el9-gcc13-opt/lib/z.so"


@pytest.fixture(params=["dir", "s3"])
def cache(request, tmp_path) -> BinaryCache:
    if request.param == "dir":
        return DirectoryBinaryCache(tmp_path / "cache")
    seaweed = request.getfixturevalue("seaweed")
    return _s3_cache(seaweed, seaweed.new_bucket("bc"), "builds/x86_64")


def _s3_cache(seaweed, bucket: str, prefix: str) -> S3BinaryCache:
    return S3BinaryCache(bucket, prefix=prefix, endpoint_url=seaweed.endpoint,
                         access_key=seaweed.access_key, secret_key=seaweed.secret_key)


def make_tree(root: Path) -> Path:
    """An install tree with every kind of entry the cache must keep."""
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkgconfig").mkdir(parents=True)
    (root / "share" / "empty").mkdir(parents=True)
    (root / "private").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "lib" / "libx.so.1.2").write_bytes(os.urandom(300_000))
    (root / "lib" / "libx.so.1.2").chmod(0o644)
    (root / "lib" / "libx.so").symlink_to("libx.so.1.2")
    (root / "lib" / "dangling").symlink_to("../nowhere")
    (root / "lib" / "libz.so").symlink_to(ABSOLUTE_TARGET)      # relocated builds make these
    (root / "lib" / "pkgconfig" / "x.pc").write_text("prefix=/cvmfs/x\n")
    os.link(root / "bin" / "tool", root / "bin" / "tool-alias")
    (root / "private" / "secret").write_text("s\n")
    (root / "private" / "secret").chmod(0o600)
    (root / "readonly.txt").write_text("r\n")
    (root / "readonly.txt").chmod(0o444)
    (root / "private").chmod(0o700)
    (root / "share" / "empty").chmod(0o750)
    (root / "ünïcode-näme.txt").write_text("u\n")
    for n, p in enumerate(sorted(root.rglob("*"), reverse=True)):
        if not p.is_symlink():
            os.utime(p, (1_600_000_000 + n, 1_600_000_000 + n))
    os.utime(root, (1_500_000_000, 1_500_000_000))
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry's kind, mode, mtime, content or link target (and inode group)."""
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
        else:
            first = inodes.setdefault(st.st_ino, rel)
            out[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime),
                        hashlib.sha256(p.read_bytes()).hexdigest(), first)
    return out


def test_put_has_unpack_round_trip(cache, tmp_path):
    tree = make_tree(tmp_path / "install")
    assert not cache.has(H1) and cache.record(H1) is None and list(cache.list()) == []
    stored = cache.put(H1, tree, RECORD)
    art = stored["artifact"]
    assert art["format"] == "tar+zstd" and len(art["sha256"]) == 64
    assert art["files"] == 6    # tool-alias is a hard link, not a file
    assert art["bytes"] == sum(p.stat().st_size for p in tree.rglob("*")
                               if p.is_file() and not p.is_symlink()
                               and p.name != "tool-alias")
    assert {k: stored[k] for k in RECORD} == RECORD
    assert cache.has(H1) and cache.record(H1) == stored
    assert list(cache.list()) == [H1]
    dest = tmp_path / "out" / "pkg"
    cache.unpack(H1, dest)
    assert snapshot(dest) == snapshot(tree)
    assert os.readlink(dest / "lib" / "libz.so") == ABSOLUTE_TARGET
    assert (dest / "bin" / "tool").stat().st_ino == (dest / "bin" / "tool-alias").stat().st_ino
    assert [p.name for p in dest.parent.iterdir()] == ["pkg"]   # no temporary left
    # an existing empty directory is a fine destination; a non-empty one is not
    (tmp_path / "empty").mkdir()
    cache.unpack(H1, tmp_path / "empty")
    assert snapshot(tmp_path / "empty") == snapshot(tree)
    with pytest.raises(StackError, match="not an empty directory"):
        cache.unpack(H1, tmp_path / "empty")
    # the artifact stream is the plain tar of the tree
    with cache.open_artifact(H1) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        names = [m.name for m in tar]
    assert names[0] == "." and "lib/libx.so" in names and "share/empty" in names
    assert names == sorted(names, key=lambda n: n.split("/"))


def test_put_is_deterministic_and_a_second_put_is_a_no_op(cache, tmp_path):
    tree = make_tree(tmp_path / "install")
    first = cache.put(H1, tree, RECORD)
    other = DirectoryBinaryCache(tmp_path / "other").put(H2, tree, {"x": 1})
    assert other["artifact"] == first["artifact"]
    (tree / "bin" / "tool").write_text("changed\n")
    again = cache.put(H1, tree, {"name": "different"})
    assert again == first == cache.record(H1)


def _artifact_bytes(cache: BinaryCache, full: str) -> bytes:
    if isinstance(cache, DirectoryBinaryCache):
        return (cache.root / full[:2] / f"{full}.tar.zst").read_bytes()
    return cache.storage.fetch(f"{full[:2]}/{full}.tar.zst", b"".join, what="artifact")


def _replace_artifact(cache: BinaryCache, full: str, data: bytes) -> None:
    if isinstance(cache, DirectoryBinaryCache):
        (cache.root / full[:2] / f"{full}.tar.zst").write_bytes(data)
    else:
        cache.storage.put_bytes(f"{full[:2]}/{full}.tar.zst", data)


def test_tampered_artifact_refused_with_the_key_named(cache, tmp_path):
    tree = make_tree(tmp_path / "install")
    cache.put(H1, tree, RECORD)
    key = cache.describe(f"{H1[:2]}/{H1}.tar.zst")
    good = _artifact_bytes(cache, H1)
    # another valid artifact in its place: decompresses fine, refused at the end
    small = tmp_path / "small"
    small.mkdir()
    (small / "evil").write_text("not the build\n")
    cache.put(H2, small, RECORD)
    _replace_artifact(cache, H1, _artifact_bytes(cache, H2))
    dest = tmp_path / "out"
    with pytest.raises(StackError) as e:
        cache.unpack(H1, dest)
    assert key in str(e.value) and "not the recorded one" in str(e.value)
    assert not dest.exists() and list(tmp_path.glob(".out.unpack-*")) == []
    with pytest.raises(StackError, match="not the recorded one"):
        cache.open_artifact(H1)
    # one flipped byte in the middle
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    _replace_artifact(cache, H1, bytes(bad))
    with pytest.raises(StackError) as e:
        cache.unpack(H1, dest)
    assert key in str(e.value)
    assert not dest.exists()
    # longer than recorded
    _replace_artifact(cache, H1, good + b"\0" * 100)
    with pytest.raises(StackError, match=key.replace(".", r"\.")):
        cache.unpack(H1, dest)
    _replace_artifact(cache, H1, good)
    cache.unpack(H1, dest)
    assert snapshot(dest) == snapshot(tree)


def test_a_put_repairs_a_broken_entry(cache, tmp_path):
    tree = make_tree(tmp_path / "install")
    first = cache.put(H1, tree, RECORD)
    good = _artifact_bytes(cache, H1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("another build\n")
    cache.put(H2, other, {"name": "other"})
    # the artifact of another build in its place, then one flipped byte, then none at all
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    for broken in (_artifact_bytes(cache, H2), bytes(bad), None):
        if broken is None:
            _delete_artifact(cache, H1)
        else:
            _replace_artifact(cache, H1, broken)
        with pytest.raises(StackError):
            cache.unpack(H1, tmp_path / "out")
        again = cache.put(H1, tree, RECORD)
        assert again["artifact"] == first["artifact"] and _artifact_bytes(cache, H1) == good
        cache.unpack(H1, tmp_path / "out")
        assert snapshot(tmp_path / "out") == snapshot(tree)
        _remove_tree(tmp_path / "out")
    # an unreadable record is replaced too
    _put_record(cache, H1, b"{not json")
    assert cache.put(H1, tree, RECORD) == first == cache.record(H1)


def _delete_artifact(cache: BinaryCache, full: str) -> None:
    if isinstance(cache, DirectoryBinaryCache):
        (cache.root / full[:2] / f"{full}.tar.zst").unlink()
    else:
        cache.storage.delete(f"{full[:2]}/{full}.tar.zst")


def _put_record(cache: BinaryCache, full: str, data: bytes) -> None:
    if isinstance(cache, DirectoryBinaryCache):
        (cache.root / full[:2] / f"{full}.json").write_bytes(data)
    else:
        cache.storage.put_bytes(f"{full[:2]}/{full}.json", data)


def _remove_tree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o700)
    shutil.rmtree(path)


def test_interrupted_put_is_not_visible(cache, tmp_path):
    tree = make_tree(tmp_path / "install")
    cache.put(H1, tree, RECORD)
    artifact = _artifact_bytes(cache, H1)
    # a put that died after the artifact and before the record (the commit point)
    if isinstance(cache, DirectoryBinaryCache):
        (cache.root / H1[:2] / f"{H1}.json").unlink()
    else:
        cache.storage.delete(f"{H1[:2]}/{H1}.json")
    assert _artifact_bytes(cache, H1) == artifact
    assert not cache.has(H1) and cache.record(H1) is None and list(cache.list()) == []
    with pytest.raises(StackError, match=f"no build of {H1}"):
        cache.unpack(H1, tmp_path / "out")
    # the next put of that hash completes it
    stored = cache.put(H1, tree, RECORD)
    assert cache.has(H1) and list(cache.list()) == [H1]
    assert stored["artifact"]["sha256"] == hashlib.sha256(artifact).hexdigest()


def test_hostile_artifact_in_a_shared_cache_refused(cache, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo("../escaped")
        ti.size = 1
        tar.addfile(ti, io.BytesIO(b"x"))
    data = zstandard.ZstdCompressor().compress(buf.getvalue())
    _replace_artifact_with_record(cache, H1, data)
    with pytest.raises(StackError) as e:
        cache.unpack(H1, tmp_path / "out" / "pkg")
    assert "'../escaped'" in str(e.value) and H1 in str(e.value)
    assert not (tmp_path / "out" / "escaped").exists()
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "tampered"])
def test_chained_symlink_artifact_writes_nothing_outside(cache, tmp_path, recorded):
    """The filter-bypass archive as a build: refused by the extraction when its record names
    it; refused before ANY extraction when it replaced a recorded artifact."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out" / "pkg"
    data = zstandard.ZstdCompressor().compress(chained_symlink_tar(dest, outside))
    if recorded:
        _replace_artifact_with_record(cache, H1, data)
        expected = "is a symbolic link in the archive"
    else:
        tree = tmp_path / "tree"
        (tree / "bin").mkdir(parents=True)
        (tree / "bin" / "x").write_bytes(os.urandom(1 << 20))
        cache.put(H1, tree, RECORD)
        _replace_artifact(cache, H1, data)
        expected = "the artifact is not the recorded one"
    with pytest.raises(StackError) as e:
        cache.unpack(H1, dest)
    assert cache.describe(f"{H1[:2]}/{H1}.tar.zst") in str(e.value)
    assert expected in str(e.value)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _replace_artifact_with_record(cache: BinaryCache, full: str, data: bytes) -> None:
    record = json.dumps({"artifact": {"format": "tar+zstd", "size": len(data), "files": 1,
                                      "bytes": 1, "sha256": hashlib.sha256(data).hexdigest()}})
    if isinstance(cache, DirectoryBinaryCache):
        (cache.root / full[:2]).mkdir(parents=True, exist_ok=True)
    _replace_artifact(cache, full, data)
    if isinstance(cache, DirectoryBinaryCache):
        (cache.root / full[:2] / f"{full}.json").write_text(record)
    else:
        cache.storage.put_bytes(f"{full[:2]}/{full}.json", record.encode())


def test_bad_inputs_named(tmp_path):
    cache = DirectoryBinaryCache(tmp_path / "cache")
    with pytest.raises(StackError, match="'7d678' is not a full package hash"):
        cache.has("7d678")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "pipe")
    with pytest.raises(StackError, match=f"{tree / 'pipe'} is not a file"):
        cache.put(H1, tree, RECORD)
    assert not cache.has(H1)
    assert [p.name for p in (cache.root / H1[:2]).iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(StackError, match="is not a directory to store"):
        cache.put(H1, tmp_path / "missing", RECORD)
    (tmp_path / "t2").mkdir()
    with pytest.raises(StackError, match=f"record of {H1} is not JSON"):
        cache.put(H1, tmp_path / "t2", {"bad": object()})
    assert not cache.has(H1)
    (cache.root / H2[:2]).mkdir(parents=True, exist_ok=True)
    (cache.root / H2[:2] / f"{H2}.json").write_text("{not json")
    with pytest.raises(StackError, match=f"{H2}.json: not JSON"):
        cache.record(H2)


def test_open_binary_cache_specs(tmp_path, monkeypatch):
    assert open_binary_cache(tmp_path / "c").describe() == str(tmp_path / "c")
    assert open_binary_cache(f"file://{tmp_path}/d").describe() == f"{tmp_path}/d"
    assert open_binary_cache(str(tmp_path / "e")).describe() == str(tmp_path / "e")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s3 = open_binary_cache("s3://bucket/some/prefix/")
    assert isinstance(s3, S3BinaryCache)
    assert s3.describe() == "s3://bucket/some/prefix"
    assert s3.storage.endpoint_url == "http://127.0.0.1:9"
    s3 = open_binary_cache("s3://bucket?endpoint=http://127.0.0.1:10")
    assert s3.describe() == "s3://bucket" and s3.storage.endpoint_url == "http://127.0.0.1:10"
    with pytest.raises(StackError, match="unsupported scheme 'http'"):
        open_binary_cache("http://example.org/cache")
    with pytest.raises(StackError, match="no bucket"):
        open_binary_cache("s3:///prefix")


def test_two_nodes_share_one_bucket(seaweed, tmp_path, monkeypatch):
    bucket = seaweed.new_bucket("nodes")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    node_a = open_binary_cache(f"s3://{bucket}/cache")
    node_b = open_binary_cache(f"s3://{bucket}/cache?endpoint={seaweed.endpoint}")
    other_prefix = open_binary_cache(f"s3://{bucket}/elsewhere")
    tree_a = make_tree(tmp_path / "a")
    tree_b = tmp_path / "b"
    tree_b.mkdir()
    (tree_b / "only-b").write_text("b\n")
    node_a.put(H1, tree_a, {"node": "a"})
    assert node_b.has(H1) and node_b.record(H1)["node"] == "a"
    node_b.put(H2, tree_b, {"node": "b"})
    assert sorted(node_a.list()) == sorted([H1, H2]) == sorted(node_b.list())
    assert list(other_prefix.list()) == [] and not other_prefix.has(H1)
    node_b.unpack(H1, tmp_path / "on-b")
    assert snapshot(tmp_path / "on-b") == snapshot(tree_a)
    node_a.unpack(H2, tmp_path / "on-a")
    assert (tmp_path / "on-a" / "only-b").read_text() == "b\n"
    # node b's put of a hash node a stored is a no-op returning a's record
    assert node_b.put(H1, tree_b, {"node": "b"})["node"] == "a"
