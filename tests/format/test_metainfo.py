"""Tests of the meta-info skeleton and parser against the golden ``M`` object."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import FormatError
from pycvmfs.format.compression import compress
from pycvmfs.format.hashes import ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.metainfo import STOCK_SKELETON, make_skeleton, parse_metainfo

STOCK_M = ContentHash.parse("85e4f386da0d5d77c7f66cf2f58e10951f24b653")


@pytest.fixture(scope="module")
def golden_metainfo(golden_repo: Path) -> bytes:
    return zlib.decompress((golden_repo / STOCK_M.object_path(ObjectKind.METAINFO)).read_bytes())


def test_skeleton_is_the_stock_object_byte_for_byte(golden_metainfo: bytes) -> None:
    assert len(STOCK_SKELETON) == 385
    assert golden_metainfo == STOCK_SKELETON
    assert STOCK_SKELETON.endswith(b"}\n")


def test_skeleton_compresses_to_the_stock_object_name() -> None:
    assert hash_bytes(compress(STOCK_SKELETON)) == STOCK_M


def test_skeleton_does_not_depend_on_the_repository() -> None:
    assert make_skeleton("golden.example.org") == make_skeleton("other.example.org")
    assert make_skeleton() == STOCK_SKELETON


def test_parse_skeleton() -> None:
    info = parse_metainfo(STOCK_SKELETON, what="skeleton")
    assert list(info) == ["administrator", "email", "organisation", "description", "url",
                          "recommended-stratum0", "recommended-stratum1s", "custom"]
    assert info["recommended-stratum1s"] == ["stratum1 url", "stratum1 url"]
    assert info["custom"] == {"_comment": "Put arbitrary structured data here"}
    assert parse_metainfo(b"{}", what="empty") == {}


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not valid JSON"),
    (b"{\"a\": }", "not valid JSON"),
    (b"\xff{}", "not valid JSON"),
    (b"[1, 2]", "is a list, not an object"),
    (b"\"text\"", "is a str"),
    (b"[" * 100000, "not valid JSON"),
])
def test_parse_rejects_non_objects(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match="meta-info M") as info:
        parse_metainfo(data, what="meta-info M")
    assert message in str(info.value)
