"""The manifest: parse rules, stock line order, golden round trip, signing and verification."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from pycvmfs.errors import FormatError, HashMismatchError, SignatureError
from pycvmfs.format.certificate import Certificate, create_certificate
from pycvmfs.format.hashes import MD5_EMPTY_HEX, Algorithm, ContentHash, hash_bytes
from pycvmfs.format.manifest import (
    Manifest,
    SignedManifest,
    parse_signed_manifest,
    sign_manifest,
    verify_manifest,
)
from pycvmfs.format.signature import split_letter

SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")
H1 = ContentHash.parse("434e2742ad19baa1f5be5ffcb3c755ecabae7562")
BASE = b"C" + str(H1).encode() + b"\nR" + MD5_EMPTY_HEX.encode() + b"\nD240\nS7\n"


@pytest.fixture(scope="module")
def golden_data(golden_repo) -> bytes:
    return (golden_repo / ".cvmfspublished").read_bytes()


@pytest.fixture(scope="module")
def golden_certificate(golden_repo, golden_data) -> Certificate:
    x = str(Manifest.parse(golden_data).certificate)
    return Certificate.from_object((golden_repo / "data" / x[:2] / (x[2:] + "X")).read_bytes())


@pytest.fixture(scope="module")
def certificate(rsa_key) -> Certificate:
    return create_certificate("test.example.org", rsa_key)


def _full_manifest(algorithm: Algorithm = Algorithm.SHA1) -> Manifest:
    def h(tag: bytes) -> ContentHash:
        return hash_bytes(tag, algorithm)

    return Manifest(root_catalog=h(b"C"), root_catalog_size=185344, ttl=240, revision=3,
                    garbage_collectable=True, alt_catalog_paths=False, micro_catalog=h(b"L"),
                    fqrn="test.example.org", certificate=h(b"X"), history=h(b"H"),
                    publish_timestamp=1795553323, meta_info=h(b"M"), reflog=h(b"Y"))


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1:]


# -- the golden manifest --------------------------------------------------------------------------


def test_golden_manifest_fields_equal_expected_json(golden_data, golden_expected):
    m = Manifest.parse(golden_data)
    lines = m.export().decode().splitlines()
    assert {line[0]: line[1:] for line in lines} == golden_expected["published"]["manifest"]
    assert m.root_catalog == ContentHash.parse("434e2742ad19baa1f5be5ffcb3c755ecabae7562")
    assert (m.root_catalog_size, m.ttl, m.revision) == (185344, 240, 3)
    assert (m.garbage_collectable, m.alt_catalog_paths) == (False, False)
    assert m.fqrn == "golden.example.org"
    assert m.publish_timestamp == 1795553323
    assert m.micro_catalog is None and m.unknown == {}
    assert m.algorithm is Algorithm.SHA1


def test_golden_manifest_exports_its_body_byte_for_byte(golden_data):
    signed = parse_signed_manifest(golden_data)
    assert isinstance(signed, SignedManifest)
    assert signed.manifest.export() == signed.letter.body


def test_golden_manifest_verifies_with_its_x_object_certificate(golden_data, golden_certificate):
    assert verify_manifest(golden_data, golden_certificate) == Manifest.parse(golden_data)


@pytest.mark.parametrize("part, offset, error", [
    ("body", 0, HashMismatchError),
    ("body", 150, HashMismatchError),
    ("hash line", 7, HashMismatchError),
    ("signature", 0, SignatureError),
    ("signature", 255, SignatureError),
])
def test_golden_manifest_with_one_flipped_byte_is_rejected(golden_data, golden_certificate,
                                                           part, offset, error):
    letter = split_letter(golden_data, what="m")
    start = {"body": 0, "hash line": len(letter.body) + 3,
             "signature": len(golden_data) - len(letter.signature)}[part]
    bad = _flip(golden_data, start + offset)
    with pytest.raises(error, match=r"golden/.cvmfspublished"):
        verify_manifest(bad, golden_certificate, what="golden/.cvmfspublished")


# -- parse rules ---------------------------------------------------------------------------------


def test_required_keys_and_defaults():
    m = Manifest.parse(BASE)
    assert (m.root_catalog, m.ttl, m.revision, m.root_catalog_size) == (H1, 240, 7, 0)
    assert m.fqrn is None and m.certificate is None and m.publish_timestamp == 0
    assert not m.garbage_collectable and not m.alt_catalog_paths


@pytest.mark.parametrize("key", ["C", "R", "D", "S"])
def test_missing_required_key_is_a_format_error_naming_the_manifest(key):
    body = b"".join(line + b"\n" for line in BASE.splitlines() if not line.startswith(key.encode()))
    with pytest.raises(FormatError, match=f"my.cvmfspublished: required key {key}"):
        Manifest.parse(body, what="my.cvmfspublished")


@pytest.mark.parametrize("line, detail", [
    (b"R00000000000000000000000000000000", "key R must be MD5"),
    (b"Cnothash", "key C"),
    (b"C" + b"A" * 40, "key C"),  # upper-case hex is not accepted
    (b"D-1", "key D"),
    (b"S1e3", "key S"),
    (b"B" + b"9" * 21, "key B"),
    (b"T\xd9\xa3", "key T"),  # an Arabic-Indic digit is not a decimal digit here
    (b"Xabc", "key X"),
])
def test_malformed_values_are_format_errors_naming_the_key(line, detail):
    with pytest.raises(FormatError, match=f"the-manifest: {detail}"):
        Manifest.parse(BASE + line + b"\n", what="the-manifest")


def test_keys_in_any_order_blank_lines_and_later_values_win():
    lines = BASE.splitlines()
    body = b"\n\n".join(reversed(lines)) + b"\nS8\nNfirst\nNsecond\n"
    m = Manifest.parse(body)
    assert (m.revision, m.fqrn, m.root_catalog) == (8, "second", H1)


def test_z_values_are_joined_with_a_bar_and_unknown_keys_kept():
    m = Manifest.parse(BASE + b"Za\nQquux\nZb\nZ\nZc\n")
    assert m.unknown == {"Z": "a|b||c", "Q": "quux"}
    assert b"Z" not in m.export()  # stock drops keys it does not know
    assert m.export(include_unknown=True).endswith(b"Za\nZb\nZ\nZc\nQquux\n")


def test_parsing_stops_at_the_first_dash_dash_line():
    m = Manifest.parse(BASE + b"--\nS99\nNafter\n")
    assert m.revision == 7 and m.fqrn is None
    assert Manifest.parse(BASE + b"N--x\n").fqrn == "--x"  # only a whole "--" line ends it


def test_carriage_return_becomes_part_of_the_value():
    assert Manifest.parse(BASE + b"Nname\r\n").fqrn == "name\r"
    with pytest.raises(FormatError, match=r"key D"):
        Manifest.parse(BASE + b"D240\r\n")


def test_yes_is_the_only_true_value_of_g_and_a():
    assert Manifest.parse(BASE + b"Gyes\nAyes\n").garbage_collectable is True
    m = Manifest.parse(BASE + b"GYes\nAtrue\n")
    assert (m.garbage_collectable, m.alt_catalog_paths) == (False, False)


def test_null_and_empty_optional_hashes_are_absent():
    m = Manifest.parse(BASE + b"X" + b"0" * 40 + b"\nH\nY" + b"0" * 40 + b"-rmd160\n")
    assert (m.certificate, m.history, m.reflog) == (None, None, None)


def test_suffixed_hashes_keep_their_own_algorithm():
    rmd = hash_bytes(b"x", Algorithm.RMD160)
    shake = hash_bytes(b"y", Algorithm.SHAKE128)
    m = Manifest.parse(BASE + f"H{rmd}\nM{shake}\n".encode())
    assert m.history == rmd and m.meta_info == shake and m.algorithm is Algorithm.SHA1


# -- export ------------------------------------------------------------------------------------


def test_export_writes_the_stock_line_order():
    m = _full_manifest()
    keys = [line[:1] for line in m.export().split(b"\n")[:-1]]
    assert keys == [bytes([k]) for k in b"CBRDSGALNXHTMY"]
    assert m.export().endswith(b"\n")
    assert Manifest.parse(m.export()) == m


def test_export_omits_absent_optional_keys():
    m = Manifest(root_catalog=H1, revision=0)
    assert m.export() == (f"C{H1}\nB0\nR{MD5_EMPTY_HEX}\nD240\nS0\nGno\nAno\n").encode()


def test_export_refuses_values_that_would_break_the_layout():
    with pytest.raises(FormatError):
        replace(_full_manifest(), fqrn="a\nS9").export()


# -- signing and verification -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_sign_then_verify_round_trip_with_the_algorithm_of_c(rsa_key, certificate, algorithm):
    m = _full_manifest(algorithm)
    data = sign_manifest(m, rsa_key)
    letter = split_letter(data, what="m")
    assert letter.body == m.export()
    assert letter.hash_text == str(hash_bytes(letter.body, algorithm))
    assert len(letter.signature) == 256
    assert verify_manifest(data, certificate) == m


def test_signature_digest_is_sha1_of_the_hash_text_whatever_the_algorithm(rsa_key):
    data = sign_manifest(_full_manifest(Algorithm.SHAKE128), rsa_key)
    letter = split_letter(data, what="m")
    pub = rsa_key.public_key().public_numbers()
    block = pow(int.from_bytes(letter.signature, "big"), pub.e, pub.n).to_bytes(256, "big")
    assert block[:2] == b"\x00\x01"
    assert block.endswith(b"\x00" + SHA1_DIGEST_INFO + hashlib.sha1(letter.hash_bytes).digest())


@pytest.fixture(scope="module")
def signed(rsa_key) -> bytes:
    return sign_manifest(_full_manifest(), rsa_key)


def test_flipped_body_byte_is_a_hash_mismatch(signed, certificate):
    with pytest.raises(HashMismatchError, match=r"repo/.cvmfspublished"):
        verify_manifest(_flip(signed, 50), certificate, what="repo/.cvmfspublished")


def test_flipped_hash_line_character_is_a_hash_mismatch(signed, certificate):
    pos = len(split_letter(signed, what="m").body) + 3 + 5
    bad = signed[:pos] + (b"0" if signed[pos:pos + 1] != b"0" else b"1") + signed[pos + 1:]
    with pytest.raises(HashMismatchError, match=r"repo/.cvmfspublished"):
        verify_manifest(bad, certificate, what="repo/.cvmfspublished")


@pytest.mark.parametrize("change", ["flip", "append", "truncate", "drop"])
def test_damaged_signature_is_a_signature_error(signed, certificate, change):
    bad = {"flip": _flip(signed, len(signed) - 10), "append": signed + b"\n",
           "truncate": signed[:-1], "drop": signed[:-256]}[change]
    with pytest.raises(SignatureError, match=r"repo/.cvmfspublished"):
        verify_manifest(bad, certificate, what="repo/.cvmfspublished")


def test_wrong_certificate_is_a_signature_error(signed, other_key, golden_certificate):
    for cert in (create_certificate("test.example.org", other_key), golden_certificate):
        with pytest.raises(SignatureError, match=r"repo/.cvmfspublished"):
            verify_manifest(signed, cert, what="repo/.cvmfspublished")


def test_manifest_without_separator_is_a_format_error(signed, certificate):
    with pytest.raises(FormatError, match=r"repo/.cvmfspublished"):
        verify_manifest(signed.replace(b"\n--\n", b"\n-+\n"), certificate,
                        what="repo/.cvmfspublished")


def test_parse_signed_manifest_does_not_need_a_valid_signature(signed):
    m, letter = parse_signed_manifest(signed[:-256] + b"x")
    assert m == _full_manifest() and letter.signature == b"x"
