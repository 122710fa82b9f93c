"""Signed-letter layout, PKCS#1/SHA-1 and raw PKCS#1 type-1 signatures, key files."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from pycvmfs.errors import ConfigError, FormatError, HashMismatchError, SignatureError
from pycvmfs.format.certificate import Certificate
from pycvmfs.format.hashes import Algorithm, hash_bytes
from pycvmfs.format.signature import (
    Letter,
    check_letter_hash,
    load_private_key,
    load_public_keys,
    make_letter,
    private_key_pem,
    public_key_pem,
    sign_pkcs1_sha1,
    sign_raw_pkcs1,
    split_letter,
    verify_pkcs1_sha1,
    verify_raw_pkcs1,
)

SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def _rsa_public_op(public_key, signature: bytes) -> bytes:
    n = public_key.public_numbers()
    k = (n.n.bit_length() + 7) // 8
    return pow(int.from_bytes(signature, "big"), n.e, n.n).to_bytes(k, "big")


def _golden_cert(golden_keys: Path) -> Certificate:
    return Certificate.from_pem((golden_keys / "golden.example.org.crt").read_bytes())


# -- letters ----------------------------------------------------------------------------------


def test_split_letter_cuts_the_golden_manifest_into_body_hash_and_signature(golden_repo):
    data = (golden_repo / ".cvmfspublished").read_bytes()
    letter = split_letter(data, what=".cvmfspublished")
    assert letter.body.endswith(b"Y5bdaaaa081fa3c96a6cbeaee39674f14239f995a\n")
    assert letter.hash_text == "5eec9b323a6aa0402029fe74db7e116bcab17954"
    assert len(letter.signature) == 256
    assert data == letter.body + b"--\n" + letter.hash_bytes + b"\n" + letter.signature


def test_letter_hash_covers_the_body_with_its_final_newline_only(golden_repo):
    letter = split_letter((golden_repo / ".cvmfspublished").read_bytes(), what="m")
    h = check_letter_hash(letter, what="m")
    assert h == hash_bytes(letter.body)
    assert h != hash_bytes(letter.body[:-1])
    assert h != hash_bytes(letter.body + b"--\n")


def test_split_letter_uses_the_first_separator_even_if_the_signature_holds_another():
    data = b"Ka\n--\n" + b"0" * 40 + b"\nsig\n--\nmore"
    letter = split_letter(data, what="x")
    assert letter == Letter(b"Ka\n", "0" * 40, b"sig\n--\nmore")


def test_split_letter_keeps_every_trailing_byte_as_signature():
    letter = split_letter(b"A\n--\nh\n\n\n", what="x")
    assert letter.signature == b"\n\n"


@pytest.mark.parametrize("data, detail", [
    (b"Cabc\nDdef\n", "no '--'"),
    (b"--\nabc\nsig", "no '--'"),  # a leading "--" line has no newline before it
    (b"C1\n--\n" + b"a" * 40, "no newline"),
    (b"C1\n--\n\xff\xfe\nsig", "not ASCII"),
])
def test_split_letter_rejects_malformed_files_naming_them(data, detail):
    with pytest.raises(FormatError, match=f"my-file.*{detail}"):
        split_letter(data, what="my-file")


def test_check_letter_hash_picks_the_algorithm_from_the_hash_line_length():
    for algorithm in Algorithm:
        data = make_letter(b"Cx\n", algorithm, lambda text: b"sig")
        letter = split_letter(data, what="x")
        assert letter.hash_text.endswith(algorithm.suffix)
        assert check_letter_hash(letter, what="x").algorithm is algorithm


def test_check_letter_hash_rejects_a_changed_body_naming_the_file():
    letter = split_letter(make_letter(b"Cx\n", Algorithm.SHA1, lambda t: b""), what="f")
    bad = Letter(b"Cy\n", letter.hash_text, letter.signature)
    with pytest.raises(HashMismatchError, match=r"the-file"):
        check_letter_hash(bad, what="the-file")


def test_check_letter_hash_rejects_an_unparseable_hash_line():
    with pytest.raises(FormatError, match=r"the-file"):
        check_letter_hash(Letter(b"x\n", "d41d8cd98f00b204e9800998ecf8427e", b""), what="the-file")


@pytest.mark.parametrize("body", [b"no newline", b"a\n--\nb\n", b"--\nb\n"])
def test_make_letter_refuses_bodies_that_would_not_split_back(body):
    with pytest.raises(FormatError):
        make_letter(body, Algorithm.SHA1, lambda t: b"")


def test_make_letter_passes_the_hash_text_without_newline_to_the_signer():
    seen = []
    data = make_letter(b"Cx\n", Algorithm.SHAKE128, lambda t: seen.append(t) or b"SIG")
    assert seen == [str(hash_bytes(b"Cx\n", Algorithm.SHAKE128)).encode()]
    assert data == b"Cx\n--\n" + seen[0] + b"\nSIG"


# -- PKCS#1 v1.5 + SHA-1 (manifest) ----------------------------------------------------------------


def test_pkcs1_sha1_signature_round_trip_and_digest_info(rsa_key):
    sig = sign_pkcs1_sha1(rsa_key, b"abc")
    verify_pkcs1_sha1(rsa_key.public_key(), b"abc", sig, what="m")
    block = _rsa_public_op(rsa_key.public_key(), sig)
    assert block.endswith(b"\x00" + SHA1_DIGEST_INFO + hashlib.sha1(b"abc").digest())
    assert block.startswith(b"\x00\x01\xff")


def test_golden_manifest_signature_is_pkcs1_sha1_over_the_hash_text(golden_repo, golden_keys):
    letter = split_letter((golden_repo / ".cvmfspublished").read_bytes(), what="m")
    key = _golden_cert(golden_keys).public_key
    verify_pkcs1_sha1(key, letter.hash_bytes, letter.signature, what="m")
    with pytest.raises(SignatureError):  # the newline is not part of the signed bytes
        verify_pkcs1_sha1(key, letter.hash_bytes + b"\n", letter.signature, what="m")


@pytest.mark.parametrize("case", ["wrong key", "other data", "flipped", "truncated", "appended"])
def test_verify_pkcs1_sha1_rejects_naming_the_file(rsa_key, other_key, case):
    sig = sign_pkcs1_sha1(rsa_key, b"abc")
    key, data = rsa_key.public_key(), b"abc"
    if case == "wrong key":
        key = other_key.public_key()
    elif case == "other data":
        data = b"abd"
    elif case == "flipped":
        sig = sig[:100] + bytes([sig[100] ^ 1]) + sig[101:]
    elif case == "truncated":
        sig = sig[:-1]
    else:
        sig += b"\x00"
    with pytest.raises(SignatureError, match=r"the-manifest"):
        verify_pkcs1_sha1(key, data, sig, what="the-manifest")


def test_verify_pkcs1_sha1_refuses_non_rsa_keys():
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SignatureError, match=r"m:"):
        verify_pkcs1_sha1(key, b"abc", b"x" * 64, what="m")


# -- raw PKCS#1 type 1 (whitelist) -----------------------------------------------------------------


def test_raw_pkcs1_signature_recovers_to_type1_padding_and_the_data(master_key):
    data = b"78bf0e22b636d6cf8ee91df50e523827c5f5da15"
    sig = sign_raw_pkcs1(master_key, data)
    assert len(sig) == 256
    block = _rsa_public_op(master_key.public_key(), sig)
    assert block == b"\x00\x01" + b"\xff" * (256 - 3 - len(data)) + b"\x00" + data
    recovered = master_key.public_key().recover_data_from_signature(sig, padding.PKCS1v15(), None)
    assert recovered == data
    assert sign_raw_pkcs1(master_key, data) == sig  # deterministic despite blinding


@needs_openssl
def test_raw_pkcs1_signature_equals_openssl_pkeyutl_sign(master_key, tmp_path):
    (tmp_path / "k.pem").write_bytes(private_key_pem(master_key))
    (tmp_path / "in").write_bytes(b"5eec9b323a6aa0402029fe74db7e116bcab17954-shake128")
    out = subprocess.run([OPENSSL, "pkeyutl", "-sign", "-inkey", str(tmp_path / "k.pem"),
                          "-in", str(tmp_path / "in")], capture_output=True, check=True).stdout
    assert sign_raw_pkcs1(master_key, (tmp_path / "in").read_bytes()) == out


def test_verify_raw_pkcs1_accepts_if_any_key_recovers_the_data(master_key, other_key):
    sig = sign_raw_pkcs1(master_key, b"hash-text")
    verify_raw_pkcs1([other_key.public_key(), master_key.public_key()], b"hash-text", sig,
                     what="wl")


@pytest.mark.parametrize("case", ["wrong key", "other data", "flipped", "no keys", "digestinfo"])
def test_verify_raw_pkcs1_rejects_naming_the_file(master_key, other_key, case):
    keys, data = [master_key.public_key()], b"hash-text"
    sig = sign_raw_pkcs1(master_key, data)
    if case == "wrong key":
        keys = [other_key.public_key()]
    elif case == "other data":
        data = b"hash-texT"
    elif case == "flipped":
        sig = bytes([sig[0] ^ 0x10]) + sig[1:]
    elif case == "no keys":
        keys = []
    else:  # a PKCS#1/SHA-1 signature is not a raw signature of the same bytes
        sig = sign_pkcs1_sha1(master_key, data)
    with pytest.raises(SignatureError, match=r"the-whitelist"):
        verify_raw_pkcs1(keys, data, sig, what="the-whitelist")


def test_sign_raw_pkcs1_refuses_data_longer_than_the_padding_allows(master_key):
    with pytest.raises(SignatureError):
        sign_raw_pkcs1(master_key, b"x" * 246)
    assert len(sign_raw_pkcs1(master_key, b"x" * 245)) == 256


def test_golden_whitelist_signature_verifies_with_the_golden_master_key(golden_repo, golden_keys):
    letter = split_letter((golden_repo / ".cvmfswhitelist").read_bytes(), what="wl")
    keys = load_public_keys(golden_keys)
    assert len(keys) == 1
    verify_raw_pkcs1(keys, letter.hash_bytes, letter.signature, what="wl")


# -- key files -------------------------------------------------------------------------------------


def test_generated_keys_are_rsa_2048_with_exponent_65537(rsa_key):
    assert rsa_key.key_size == 2048
    assert rsa_key.public_key().public_numbers().e == 65537


def test_public_key_pem_has_the_openssl_pubout_layout(rsa_key, golden_keys):
    pem = public_key_pem(rsa_key)
    assert len(pem) == 451 == len((golden_keys / "golden.example.org.pub").read_bytes())
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert pem.endswith(b"-----END PUBLIC KEY-----\n")
    assert public_key_pem(rsa_key.public_key()) == pem


@needs_openssl
def test_key_pems_match_what_openssl_writes_and_reads(rsa_key, tmp_path):
    key_file = tmp_path / "repo.key"
    key_file.write_bytes(private_key_pem(rsa_key))
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    out = subprocess.run([OPENSSL, "rsa", "-in", str(key_file), "-pubout"],
                         capture_output=True, check=True).stdout
    assert out == public_key_pem(rsa_key)


def test_private_key_round_trips_through_pem_files(rsa_key, tmp_path):
    p = tmp_path / "repo.masterkey"
    p.write_bytes(private_key_pem(rsa_key))
    loaded = load_private_key(p)
    assert loaded.private_numbers() == rsa_key.private_numbers()
    traditional = rsa_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    p.write_bytes(traditional)
    assert load_private_key(p).private_numbers() == rsa_key.private_numbers()


def test_load_private_key_rejects_encrypted_missing_and_non_rsa_keys(rsa_key, tmp_path):
    enc = tmp_path / "enc.key"
    enc.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pw")))
    ecf = tmp_path / "ec.key"
    ecf.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for path in (enc, ecf, tmp_path / "missing.key"):
        with pytest.raises(ConfigError, match=path.name):
            load_private_key(path)


def test_load_public_keys_reads_every_pub_file_of_a_directory(rsa_key, master_key, tmp_path):
    (tmp_path / "a.pub").write_bytes(public_key_pem(rsa_key))
    (tmp_path / "b.pub").write_bytes(public_key_pem(master_key))
    (tmp_path / "c.crt").write_bytes(b"not a key")
    keys = load_public_keys(tmp_path)
    assert [k.public_numbers() for k in keys] == [rsa_key.public_key().public_numbers(),
                                                 master_key.public_key().public_numbers()]
    assert len(load_public_keys([tmp_path / "b.pub", str(tmp_path / "a.pub")])) == 2


def test_load_public_keys_rejects_pkcs1_rsa_public_keys_naming_the_file(rsa_key, tmp_path):
    p = tmp_path / "pkcs1.pub"
    p.write_bytes(rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.PKCS1))
    assert p.read_bytes().startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    with pytest.raises(ConfigError, match=r"pkcs1.pub.*RSA PUBLIC KEY"):
        load_public_keys(p)


def test_load_public_keys_rejects_non_rsa_and_garbage_naming_the_file(tmp_path):
    p = tmp_path / "ec.pub"
    p.write_bytes(public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    with pytest.raises(ConfigError, match=r"ec.pub.*not an RSA"):
        load_public_keys(p)
    g = tmp_path / "garbage.pub"
    g.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"garbage.pub"):
        load_public_keys(g)


def test_load_public_keys_rejects_missing_files_and_empty_directories(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.pub"):
        load_public_keys(tmp_path / "nope.pub")
    with pytest.raises(ConfigError, match=r"no \*\.pub"):
        load_public_keys(tmp_path)
