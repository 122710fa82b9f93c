"""zlib framing as the stock tools write it, and strict decompression."""

from __future__ import annotations

import contextlib
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.errors import FormatError, IntegrityError
from pycvmfs.format.compression import (
    Compression,
    Inflater,
    compress,
    decompress,
    inflate_stream,
)


def test_zlib_objects_have_the_rfc1950_header_and_adler_trailer():
    data = b"hello world\n" * 100
    out = compress(data)
    assert out[:2] == b"\x78\x9c"
    assert int.from_bytes(out[-4:], "big") == zlib.adler32(data)
    assert compress(b"") == bytes.fromhex("789c030000000001")


def test_none_stores_bytes_unchanged():
    assert compress(b"abc", Compression.NONE) == b"abc"
    assert decompress(b"abc", Compression.NONE) == b"abc"


def test_any_valid_zlib_stream_decodes_whatever_its_level():
    data = os.urandom(1000) + b"a" * 5000
    for level in (0, 1, 9):
        assert decompress(zlib.compress(data, level)) == data


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],  # truncated
    lambda b: b + b"x",  # trailing junk
    lambda b: b[:10] + bytes([b[10] ^ 0xFF]) + b[11:],  # corrupted
    lambda b: b"not zlib at all",
])
def test_broken_streams_are_rejected_with_the_object_named(mangle):
    with pytest.raises(IntegrityError, match="chunk abc"):
        decompress(mangle(zlib.compress(b"payload" * 200)), what="chunk abc")


def test_inflater_streams_with_bounded_pieces():
    data = b"\0" * (8 << 20)  # compresses to a few KiB, inflates to 8 MiB
    z = zlib.compress(data)
    pieces = list(Inflater().feed(z))
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 1 << 20


def test_inflater_detects_truncation_at_finish():
    inf = Inflater(what="catalog X")
    list(inf.feed(zlib.compress(b"abc" * 1000)[:-3]))
    with pytest.raises(IntegrityError, match=r"catalog X.*truncated"):
        inf.finish()


def test_compression_names_and_codes():
    assert Compression.from_config_name("default") is Compression.ZLIB
    assert Compression.from_config_name("none") is Compression.NONE
    assert Compression.from_flag_code(1) is Compression.NONE
    with pytest.raises(FormatError):
        Compression.from_config_name("lz4")
    with pytest.raises(FormatError):
        Compression.from_flag_code(3)


@settings(max_examples=60)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), min_size=1, max_size=8))
def test_streaming_inflate_equals_one_shot_for_any_split(data, cuts):
    z = compress(data)
    pieces, pos = [], 0
    for c in cuts:
        pieces.append(z[pos:pos + c])
        pos += c
    pieces.append(z[pos:])
    assert b"".join(inflate_stream(pieces)) == data


@settings(max_examples=100)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_integrity_errors(blob):
    with contextlib.suppress(IntegrityError):
        decompress(blob)
