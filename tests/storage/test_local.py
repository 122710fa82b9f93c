"""Tests of LocalStorage: reading, path safety, atomic writes, listing and the mkfs skeleton."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycvmfs.errors import (
    ConfigError,
    FetchError,
    HashMismatchError,
    IntegrityError,
    ObjectNotFoundError,
)
from pycvmfs.storage.base import BLOCK_SIZE, ObjectStore, fetch_bytes
from pycvmfs.storage.local import LocalStorage, check_relpath
from pycvmfs.storage.locate import open_source

ROOT_CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"


def verify_sha1(expected: str):
    """A consumer that checks the SHA-1 of the stream like a client checks an object."""

    def consume(blocks: Iterator[bytes]) -> int:
        h = hashlib.sha1()
        n = 0
        for b in blocks:
            h.update(b)
            n += len(b)
        if h.hexdigest() != expected:
            raise HashMismatchError("object", expected, h.hexdigest())
        return n

    return consume


def never_called(blocks: Iterator[bytes]) -> None:
    raise AssertionError("the consumer must not be called")


# -- reading -------------------------------------------------------------------------------------


def test_local_storage_is_an_object_store(tmp_path: Path) -> None:
    assert isinstance(LocalStorage(tmp_path), ObjectStore)


def test_fetch_golden_manifest_returns_its_bytes(golden_repo: Path) -> None:
    store = LocalStorage(golden_repo)
    data = fetch_bytes(store, ".cvmfspublished", what="manifest")
    assert data == (golden_repo / ".cvmfspublished").read_bytes()
    assert data.startswith(b"C434e2742ad19baa1f5be5ffcb3c755ecabae7562\n")


def test_fetch_golden_catalog_hashes_to_its_name(golden_repo: Path) -> None:
    store = LocalStorage(golden_repo)
    n = store.fetch(ROOT_CATALOG, verify_sha1("434e2742ad19baa1f5be5ffcb3c755ecabae7562"),
                    what="root catalog")
    assert n == (golden_repo / ROOT_CATALOG).stat().st_size


def test_fetch_streams_large_files_in_blocks(tmp_path: Path) -> None:
    payload = os.urandom(2 * BLOCK_SIZE + 123)
    (tmp_path / "big").write_bytes(payload)
    sizes: list[int] = []

    def consume(blocks: Iterator[bytes]) -> bytes:
        out = b""
        for b in blocks:
            sizes.append(len(b))
            out += b
        return out

    assert LocalStorage(tmp_path).fetch("big", consume, what="big file") == payload
    assert sizes == [BLOCK_SIZE, BLOCK_SIZE, 123]


def test_fetch_missing_file_names_object_and_path(golden_repo: Path) -> None:
    store = LocalStorage(golden_repo)
    with pytest.raises(ObjectNotFoundError) as err:
        store.fetch("data/00/0000000000000000000000000000000000000000", never_called,
                    what="chunk 0000")
    msg = str(err.value)
    assert "chunk 0000" in msg
    assert str(golden_repo / "data/00/0000000000000000000000000000000000000000") in msg


def test_fetch_missing_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError):
        LocalStorage(tmp_path).fetch("data/zz/nothing", never_called, what="x")


def test_fetch_of_a_directory_is_a_fetch_error(golden_repo: Path) -> None:
    with pytest.raises(FetchError) as err:
        LocalStorage(golden_repo).fetch("data/43", never_called, what="folder")
    assert not isinstance(err.value, ObjectNotFoundError)


def test_consumer_integrity_error_propagates_unchanged(golden_repo: Path) -> None:
    store = LocalStorage(golden_repo)
    with pytest.raises(IntegrityError) as err:
        store.fetch(ROOT_CATALOG, verify_sha1("0" * 40), what="root catalog")
    assert isinstance(err.value, HashMismatchError)
    assert err.value.expected == "0" * 40


# -- path safety ---------------------------------------------------------------------------------


@pytest.mark.parametrize("relpath", [
    "../secret", "data/../../secret", "data/..", "/etc/passwd", "data\\43\\x", "data/43\0x", "",
])
def test_unsafe_relpaths_are_refused_without_reading(tmp_path: Path, relpath: str) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "secret").write_bytes(b"do not read")
    store = LocalStorage(root)
    with pytest.raises(ConfigError):
        store.fetch(relpath, never_called, what="bad path")
    with pytest.raises(ConfigError):
        store.put_bytes(relpath, b"x")
    assert (tmp_path / "secret").read_bytes() == b"do not read"


def test_check_relpath_normalises_harmless_components() -> None:
    assert check_relpath("data//43/./x") == "data/43/x"
    assert check_relpath("./", allow_empty=True) == ""


def test_symlink_escaping_the_root_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "data" / "ab").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "data" / "ab" / "link").symlink_to(tmp_path / "secret")
    (root / "data" / "cd").symlink_to(tmp_path)
    store = LocalStorage(root)
    for rel in ("data/ab/link", "data/cd/secret"):
        with pytest.raises(FetchError) as err:
            store.fetch(rel, never_called, what="escaping object")
        assert "outside the storage root" in str(err.value)
    assert not store.exists("data/ab/link")


def test_write_through_a_symlinked_folder_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "data").mkdir(parents=True)
    (root / "data" / "cd").symlink_to(outside)
    store = LocalStorage(root)
    with pytest.raises(ConfigError):
        store.put_bytes("data/cd/obj", b"payload")
    with pytest.raises(ConfigError):
        store.delete("data/cd/obj")
    with pytest.raises(ConfigError):
        list(store.list("data/cd/"))
    (outside / "planted").write_bytes(b"x")
    assert list(store.list("data")) == []  # the symlinked folder is not followed
    assert list(outside.iterdir()) == [outside / "planted"]


def test_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    store = LocalStorage(root)
    store.put_bytes("data/43/target", b"shortcut content")
    (root / ".cvmfsalt-target").symlink_to("data/43/target")
    assert fetch_bytes(store, ".cvmfsalt-target", what="alt path") == b"shortcut content"


# -- writing -------------------------------------------------------------------------------------


def test_put_bytes_creates_folders_and_is_readable(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "repo")
    store.put_bytes("data/4e/1234C", b"catalog bytes")
    path = tmp_path / "repo" / "data" / "4e" / "1234C"
    assert path.read_bytes() == b"catalog bytes"
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "repo" / "data" / "txn").is_dir()
    assert list((tmp_path / "repo" / "data" / "txn").iterdir()) == []


class _SlowSource(io.RawIOBase):
    """A stream that checks, while it is being copied, that nothing is visible yet."""

    def __init__(self, parts: list[bytes], check) -> None:
        self.parts = list(parts)
        self.check = check
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            self.check()
        return self.parts.pop(0) if self.parts else b""


def test_put_file_is_atomic_via_the_txn_folder(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    store = LocalStorage(root)
    store.put_bytes(".cvmfspublished", b"old manifest")
    dest = root / ".cvmfspublished"
    seen: list[tuple[bytes, int]] = []

    def check() -> None:
        # mid-copy: readers still see the complete old file, the new bytes sit in data/txn
        temps = list((root / "data" / "txn").iterdir())
        seen.append((dest.read_bytes(), len(temps)))

    src = _SlowSource([b"new ", b"manifest ", b"content"], check)
    store.put_file(".cvmfspublished", src)
    assert seen and all(s == (b"old manifest", 1) for s in seen)
    assert dest.read_bytes() == b"new manifest content"
    assert list((root / "data" / "txn").iterdir()) == []


def test_put_file_failing_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    store = LocalStorage(root)

    def boom() -> None:
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        store.put_file("data/aa/object", _SlowSource([b"a", b"b"], boom))
    assert not (root / "data" / "aa" / "object").exists()
    assert list((root / "data" / "txn").iterdir()) == []


def test_put_replaces_a_file_with_a_new_inode(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.put_bytes("data/01/x", b"one")
    before = (tmp_path / "data/01/x").stat().st_ino
    with open(tmp_path / "data/01/x", "rb") as reader:
        store.put_bytes("data/01/x", b"two")
        assert reader.read() == b"one"  # an open reader keeps the complete old file
    assert (tmp_path / "data/01/x").read_bytes() == b"two"
    assert (tmp_path / "data/01/x").stat().st_ino != before


def test_exists_and_delete(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert not store.exists("data/ab/cdef")
    store.put_bytes("data/ab/cdef", b"x")
    assert store.exists("data/ab/cdef")
    assert not store.exists("data/ab")  # a folder is not a file
    store.delete("data/ab/cdef")
    assert not store.exists("data/ab/cdef")
    store.delete("data/ab/cdef")  # missing is fine
    store.delete("data/zz/never-there")


# -- listing and skeleton ------------------------------------------------------------------------


def test_list_by_folder_and_by_string_prefix(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    store.create_skeleton()
    for rel in ("data/4e/aaa", "data/4e/bbbC", "data/4f/ccc", "data/50/ddd", ".cvmfspublished"):
        store.put_bytes(rel, b"x")
    (tmp_path / "data" / "txn" / "in-progress").write_bytes(b"partial")
    assert list(store.list("data/4e")) == ["data/4e/aaa", "data/4e/bbbC"]
    assert list(store.list("data/4e/")) == ["data/4e/aaa", "data/4e/bbbC"]
    assert list(store.list("data/4")) == ["data/4e/aaa", "data/4e/bbbC", "data/4f/ccc"]
    assert list(store.list("data/4e/b")) == ["data/4e/bbbC"]
    assert sorted(store.list("")) == [".cvmfspublished", "data/4e/aaa", "data/4e/bbbC",
                                      "data/4f/ccc", "data/50/ddd"]
    assert list(store.list("data/txn")) == ["data/txn/in-progress"]
    assert list(store.list("data/77")) == []
    assert list(store.list("nothing/here")) == []


def test_list_golden_data_finds_every_object(golden_repo: Path) -> None:
    store = LocalStorage(golden_repo)
    listed = set(store.list("data"))
    on_disk = {p.relative_to(golden_repo).as_posix()
               for p in (golden_repo / "data").rglob("*") if p.is_file()}
    assert listed == on_disk
    assert ROOT_CATALOG in listed


def test_create_skeleton_makes_data_00_to_ff_and_txn(tmp_path: Path) -> None:
    root = tmp_path / "new.example.org"
    store = LocalStorage(root)
    store.create_skeleton()
    data = sorted(p.name for p in (root / "data").iterdir())
    assert data == [f"{i:02x}" for i in range(256)] + ["txn"]
    assert sorted(p.name for p in root.iterdir()) == ["data"]
    store.put_bytes("data/00/keep", b"k")
    store.create_skeleton()  # idempotent, keeps content
    assert (root / "data" / "00" / "keep").read_bytes() == b"k"


def test_describe_names_the_file(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert store.describe("data/43/x") == str(tmp_path.resolve() / "data/43/x")
    assert store.describe() == str(tmp_path.resolve())


# -- open_source ---------------------------------------------------------------------------------


def test_open_source_plain_path_and_file_url(golden_repo: Path) -> None:
    for loc in (str(golden_repo), f"file://{golden_repo}", f"file://localhost{golden_repo}"):
        src = open_source(loc)
        assert isinstance(src, LocalStorage)
        assert fetch_bytes(src, ".cvmfspublished", what="manifest").startswith(b"C434e27")


def test_open_source_rejects_missing_folders_and_unknown_schemes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        open_source(str(tmp_path / "missing"))
    assert isinstance(open_source(str(tmp_path / "missing"), must_exist=False), LocalStorage)
    with pytest.raises(ConfigError):
        open_source("ftp://example.org/cvmfs/x")
    with pytest.raises(ConfigError):
        open_source("file://otherhost/path")
    with pytest.raises(ConfigError):
        open_source("http://127.0.0.1:1/a;/local/path")


def test_begin_put_is_invisible_until_commit(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    store = LocalStorage(root)
    store.create_skeleton()
    pending = store.begin_put("data/ab/streamed")
    pending.write(b"first block, ")
    assert not store.exists("data/ab/streamed")  # readers never see a half-written object
    assert len(list((root / "data" / "txn").iterdir())) == 1
    pending.write(b"second block")
    pending.commit()
    assert (root / "data" / "ab" / "streamed").read_bytes() == b"first block, second block"
    assert list((root / "data" / "txn").iterdir()) == []
    with pytest.raises(ValueError, match="already committed"):
        pending.commit()
    pending.abort()  # after commit: nothing to take back, the object stays
    assert store.exists("data/ab/streamed")


def test_begin_put_abort_leaves_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    store = LocalStorage(root)
    store.put_bytes("data/ab/kept", b"old")
    pending = store.begin_put("data/ab/kept")
    pending.write(b"bytes that turned out to be wrong")
    pending.abort()
    pending.abort()  # idempotent
    assert (root / "data" / "ab" / "kept").read_bytes() == b"old"
    assert list((root / "data" / "txn").iterdir()) == []


def test_begin_put_refuses_a_path_outside_the_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "repo")
    with pytest.raises(ConfigError):
        store.begin_put("data/../../escape")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_stored_files_are_world_readable_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store = LocalStorage(tmp_path / "repo")
        store.put_bytes("data/aa/object", b"content")
        pending = store.begin_put("data/aa/streamed")
        pending.write(b"content")
        pending.commit()
    finally:
        os.umask(old)
    for name in ("object", "streamed"):  # a web server (another user) must read them
        assert (tmp_path / "repo" / "data" / "aa" / name).stat().st_mode & 0o777 == 0o644
