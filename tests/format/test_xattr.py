"""Tests of the catalog xattr blob codec against the golden fixture and the format rules."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import FormatError
from pycvmfs.format.hashes import md5_pair
from pycvmfs.format.xattr import decode_xattrs, encode_xattrs

ROOT_CATALOG = "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"
XATTR_PATH = "xattr/with-xattr.txt"

# The 71-byte example of the spec (section 4.11).
SPEC_BLOB = (bytes([1, 3])
             + bytes([11, 16]) + b"user.binary" + bytes(range(16))
             + bytes([12, 14]) + b"user.comment" + b"golden fixture"
             + bytes([10, 0]) + b"user.empty")


def expected_attrs(golden_expected: dict) -> dict[bytes, bytes]:
    entry = golden_expected["trees"]["rev2"]["entries"][XATTR_PATH]
    return {k.encode(): bytes.fromhex(v) for k, v in entry["xattrs_hex"].items()}


@pytest.fixture(scope="module")
def golden_blob(golden_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    db = tmp_path_factory.mktemp("xattr") / "root.db"
    db.write_bytes(zlib.decompress((golden_repo / ROOT_CATALOG).read_bytes()))
    conn = sqlite3.connect(db)
    try:
        p1, p2 = md5_pair(b"/" + XATTR_PATH.encode())
        row = conn.execute("SELECT xattr FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?",
                           (p1, p2)).fetchone()
    finally:
        conn.close()
    assert row is not None and row[0] is not None
    return bytes(row[0])


def test_spec_example_is_the_blob_in_the_golden_root_catalog(golden_blob: bytes) -> None:
    assert len(SPEC_BLOB) == 71
    assert golden_blob == SPEC_BLOB


def test_golden_blob_decodes_to_expected_attributes(golden_blob: bytes,
                                                    golden_expected: dict) -> None:
    attrs = decode_xattrs(golden_blob, what=XATTR_PATH)
    assert attrs == expected_attrs(golden_expected)
    assert list(attrs) == sorted(attrs)


def test_encoding_expected_attributes_reproduces_the_stock_blob(golden_expected: dict) -> None:
    attrs = expected_attrs(golden_expected)
    shuffled = dict(reversed(list(attrs.items())))
    assert encode_xattrs(shuffled, what=XATTR_PATH) == SPEC_BLOB


def test_no_attributes_encode_to_null() -> None:
    assert encode_xattrs({}, what="x") is None


def test_empty_attribute_list_blob_decodes_to_empty_dict() -> None:
    assert decode_xattrs(b"\x01\x00", what="x") == {}


def test_keys_are_sorted_bytewise_not_by_length() -> None:
    blob = encode_xattrs({b"user.b": b"1", b"user.aa": b"2", b"user.B": b""}, what="x")
    assert blob is not None
    assert blob == (b"\x01\x03" + b"\x06\x00user.B" + b"\x07\x01user.aa2" + b"\x06\x01user.b1")


def test_maximum_sizes_round_trip() -> None:
    attrs = {b"k" * 255: b"v" * 255}
    attrs.update({b"user.%03d" % i: bytes([i]) for i in range(254)})
    blob = encode_xattrs(attrs, what="x")
    assert blob is not None and blob[1] == 255
    assert decode_xattrs(blob, what="x") == attrs


@pytest.mark.parametrize(("attrs", "message"), [
    ({b"k" * 256: b""}, "256 bytes"),
    ({b"user.big": b"v" * 256}, "user.big"),
    ({b"": b"v"}, "empty xattr key"),
    ({b"user.\0x": b""}, "NUL"),
])
def test_encode_rejects_unstorable_attributes(attrs: dict, message: str) -> None:
    with pytest.raises(FormatError, match="some/file") as info:
        encode_xattrs(attrs, what="some/file")
    assert message in str(info.value)


def test_encode_rejects_more_than_255_attributes() -> None:
    attrs = {b"user.%03d" % i: b"" for i in range(256)}
    with pytest.raises(FormatError, match="some/file: 256 extended attributes"):
        encode_xattrs(attrs, what="some/file")


def test_encode_rejects_text_keys() -> None:
    with pytest.raises(TypeError):
        encode_xattrs({"user.a": b"1"}, what="x")  # type: ignore[dict-item]


@pytest.mark.parametrize(("blob", "message"), [
    (b"", "shorter than its 2-byte header"),
    (b"\x01", "shorter than its 2-byte header"),
    (b"\x02\x00", "version 2"),
    (b"\x00\x01\x01\x00a", "version 0"),
    (b"\x01\x01", "truncated in the header of entry 0"),
    (b"\x01\x01\x01", "truncated in the header of entry 0"),
    (SPEC_BLOB[:-1], "truncated in entry 2"),
    (SPEC_BLOB + b"\x00", "1 bytes after the last xattr entry"),
    (b"\x01\x00junk", "4 bytes after"),
    (b"\x01\x01\x00\x00", "empty key and value"),
    (b"\x01\x01\x00\x01v", "empty key"),
    (b"\x01\x01\x03\x00a\0b", "NUL"),
    (b"\x01\x02\x01\x00b\x01\x00a", "out of order"),
    (b"\x01\x02\x01\x00a\x01\x01ax", "repeated"),
])
def test_decode_rejects_malformed_blobs(blob: bytes, message: str) -> None:
    with pytest.raises(FormatError, match="/some/file") as info:
        decode_xattrs(blob, what="/some/file")
    assert message in str(info.value)


def test_decode_accepts_any_bytes_like() -> None:
    assert decode_xattrs(memoryview(SPEC_BLOB), what="x") == decode_xattrs(bytearray(SPEC_BLOB),
                                                                           what="x")
