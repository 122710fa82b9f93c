"""Content hashes: textual forms, length-based parsing, fingerprints, object paths, path MD5."""

from __future__ import annotations

import contextlib
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycvmfs.errors import FormatError
from pycvmfs.format.hashes import (
    Algorithm,
    ContentHash,
    ObjectKind,
    hash_bytes,
    md5_pair,
    new_hasher,
    parse_object_name,
)

EMPTY_ZLIB = {  # format doc §1.4
    Algorithm.SHA1: "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78",
    Algorithm.RMD160: "fcdb20b894f31f1306d56294c049ca7293dde0fc-rmd160",
    Algorithm.SHAKE128: "28d94b83b7229b331fc601362b8e272e02665122-shake128",
}
EMPTY_RAW = {
    Algorithm.SHA1: "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    Algorithm.RMD160: "9c1185a5c5e9fc54612808977ee8f548b2258d31-rmd160",
    Algorithm.SHAKE128: "7f9c2ba4e88f827d616045507605853ed73b8093-shake128",
}


@pytest.mark.parametrize("algo", list(Algorithm))
def test_empty_object_hashes_match_the_format_doc(algo):
    assert zlib.compress(b"") == bytes.fromhex("789c030000000001")
    assert str(hash_bytes(zlib.compress(b""), algo)) == EMPTY_ZLIB[algo]
    assert str(hash_bytes(b"", algo)) == EMPTY_RAW[algo]


def test_shake128_is_the_fips_xof_squeezed_to_160_bits():
    assert hash_bytes(b"abc", Algorithm.SHAKE128).digest == hashlib.shake_128(b"abc").digest(20)


def test_incremental_hasher_equals_one_shot():
    h = new_hasher(Algorithm.RMD160)
    for piece in (b"a", b"bc", b""):
        h.update(piece)
    assert h.digest() == hash_bytes(b"abc", Algorithm.RMD160).digest


@pytest.mark.parametrize("text", [*EMPTY_ZLIB.values(), *EMPTY_RAW.values()])
def test_textual_form_round_trips(text):
    h = ContentHash.parse(text)
    assert str(h) == text
    assert ContentHash.parse(text.encode()) == h


@pytest.mark.parametrize("text", [
    "", "e8ec", "E8EC3D88B62EBF526E4E5A4FF6162A3AA48A6B78",  # upper case is not accepted
    "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b7g",  # non-hex
    "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78-rmd16",  # 46 chars
    "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78-shake12x",  # 49 chars, wrong suffix
    "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78-sha256",  # 47 chars, wrong suffix
])
def test_malformed_textual_hashes_are_rejected(text):
    with pytest.raises(FormatError):
        ContentHash.parse(text)


def test_null_hashes_read_as_absent():
    assert ContentHash.parse_optional("0" * 40) is None
    assert ContentHash.parse_optional("0" * 40 + "-shake128") is None
    assert ContentHash.parse_optional("") is None and ContentHash.parse_optional(None) is None
    assert ContentHash.null().is_null and ContentHash.null().null_text() == "0" * 40
    assert ContentHash.parse_optional(EMPTY_ZLIB[Algorithm.SHA1]) is not None


@pytest.mark.parametrize(("algo", "suffix"), [(Algorithm.SHA1, ""), (Algorithm.RMD160, "-RMD160"),
                                              (Algorithm.SHAKE128, "-SHAKE128")])
def test_fingerprint_form_round_trips(algo, suffix):
    h = hash_bytes(b"certificate", algo)
    fp = h.fingerprint()
    assert fp.endswith(suffix) and fp.count(":") == 19 and fp[:2] == f"{h.digest[0]:02X}"
    assert len(fp) == 59 + len(suffix)
    assert ContentHash.parse_fingerprint(fp) == h


def test_object_paths_carry_the_algorithm_before_the_suffix():
    root = ContentHash.parse("434e2742ad19baa1f5be5ffcb3c755ecabae7562")
    assert root.object_path(ObjectKind.CATALOG) == "data/43/4e2742ad19baa1f5be5ffcb3c755ecabae7562C"
    r = ContentHash.parse(EMPTY_ZLIB[Algorithm.RMD160])
    assert r.object_path(ObjectKind.PARTIAL) == (
        "data/fc/db20b894f31f1306d56294c049ca7293dde0fc-rmd160P")
    s = ContentHash.parse(EMPTY_ZLIB[Algorithm.SHAKE128])
    assert s.object_path(ObjectKind.CERTIFICATE).endswith("-shake128X")
    assert s.object_path() == "data/28/d94b83b7229b331fc601362b8e272e02665122-shake128"


@pytest.mark.parametrize("kind", list(ObjectKind))
@pytest.mark.parametrize("algo", list(Algorithm))
def test_object_names_parse_back(kind, algo):
    h = hash_bytes(b"x", algo)
    assert parse_object_name(h.object_name(kind)) == (h, kind)


def test_md5_path_vectors_of_the_format_doc():
    assert md5_pair(b"") == (338333539836370388, 9098107892288553193)
    p = (b"/lib/lhcb/ALIGNMENT/ALIGNMENT_v9r2/Phys/CommonParticles/tests/qmtest/"
         b"commonparticles.qms/.svn/tmp/prop-base")
    assert hashlib.md5(p).hexdigest() == "07936cda4b887b38639426ee8630d1cf"
    assert md5_pair(p) == (4069996547627848455, -3471940481646685085)


def test_algorithm_names_and_codes():
    for algo, name, code in ((Algorithm.SHA1, "sha1", 0), (Algorithm.RMD160, "rmd160", 1),
                             (Algorithm.SHAKE128, "shake128", 2)):
        assert Algorithm.from_config_name(name.upper()) is algo
        assert Algorithm.from_flag_code(code) is algo and algo.flag_code == code
    with pytest.raises(FormatError):
        Algorithm.from_config_name("md5")
    with pytest.raises(FormatError):
        Algorithm.from_flag_code(5)


@given(st.sampled_from(list(Algorithm)), st.binary(min_size=20, max_size=20))
def test_any_digest_round_trips_through_text_and_fingerprint(algo, digest):
    h = ContentHash(algo, digest)
    assert ContentHash.parse(str(h)) == h
    assert ContentHash.parse_fingerprint(h.fingerprint()) == h


@given(st.text(max_size=60))
def test_parse_raises_only_format_errors(text):
    with contextlib.suppress(FormatError):
        ContentHash.parse(text)
