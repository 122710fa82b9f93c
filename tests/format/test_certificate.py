"""The repository certificate: parsing the golden one, creating stock-shaped X.509 v1 ones."""

from __future__ import annotations

import base64
import shutil
import subprocess
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import SignatureAlgorithmOID

from pycvmfs.errors import ConfigError, FormatError, IntegrityError
from pycvmfs.format.certificate import Certificate, certificate_cn, create_certificate
from pycvmfs.format.hashes import Algorithm, ContentHash, hash_bytes
from pycvmfs.format.signature import public_key_pem

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
GOLDEN_X = "a9668beea3a885622bfc513554b3b4dc42371cbd"


def _structure(der: bytes, depth: int = 0) -> list[tuple[int, int]]:
    """(depth, tag) of every DER element, descending into constructed ones."""
    out, i = [], 0
    while i < len(der):
        tag, n = der[i], der[i + 1]
        i += 2
        if n & 0x80:
            width = n & 0x7F
            n = int.from_bytes(der[i: i + width], "big")
            i += width
        out.append((depth, tag))
        if tag & 0x20:
            out += _structure(der[i: i + n], depth + 1)
        i += n
    return out


@pytest.fixture(scope="module")
def golden_cert(golden_keys) -> Certificate:
    return Certificate.from_pem((golden_keys / "golden.example.org.crt").read_bytes(),
                                what="golden.example.org.crt")


@pytest.fixture(scope="module")
def our_cert(rsa_key) -> Certificate:
    return create_certificate("test.example.org", rsa_key,
                              now=datetime(2025, 3, 4, 5, 6, 7, 890, tzinfo=UTC))


# -- the golden certificate ----------------------------------------------------------------------


def test_golden_certificate_object_decompresses_to_the_crt_file(golden_repo, golden_keys):
    stored = (golden_repo / "data" / GOLDEN_X[:2] / (GOLDEN_X[2:] + "X")).read_bytes()
    assert hash_bytes(stored) == ContentHash.parse(GOLDEN_X)
    cert = Certificate.from_object(stored)
    assert cert.pem == (golden_keys / "golden.example.org.crt").read_bytes()
    assert cert.to_object() == stored


def test_golden_certificate_fields(golden_cert):
    assert golden_cert.subject_cn == "golden.example.org CernVM-FS Release Managers"
    assert golden_cert.x509.version is x509.Version.v1
    body = b"".join(golden_cert.pem.splitlines()[1:-1])
    assert golden_cert.der == base64.b64decode(body)
    assert golden_cert.public_key.key_size == 2048


def test_golden_certificate_fingerprint_is_the_whitelisted_one(golden_cert, golden_expected):
    listed = golden_expected["published"]["whitelist"]["certificate_fingerprints"]
    assert golden_cert.fingerprint(Algorithm.SHA1).fingerprint() == listed[0]
    assert golden_cert.fingerprint() == hash_bytes(golden_cert.der)


def test_fingerprint_uses_the_requested_algorithm(golden_cert):
    for algorithm in Algorithm:
        fp = golden_cert.fingerprint(algorithm)
        assert fp == hash_bytes(golden_cert.der, algorithm)
        assert fp.fingerprint().endswith(algorithm.suffix.upper() or "F9")


@pytest.mark.parametrize("data", [
    b"",
    b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    b"-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    b"-----BEGIN CERTIFICATE-----\nMIIC9zCCAd8CFFvGohlVWFsQH3Qf1wFd+tM1g7uX\n",
])
def test_from_pem_rejects_anything_but_a_certificate_block_naming_it(data):
    with pytest.raises(FormatError, match=r"the-cert"):
        Certificate.from_pem(data, what="the-cert")


def test_from_pem_rejects_a_public_key_file(rsa_key):
    with pytest.raises(FormatError, match=r"BEGIN CERTIFICATE"):
        Certificate.from_pem(public_key_pem(rsa_key), what="k")


def test_from_object_rejects_a_broken_zlib_stream(golden_cert):
    with pytest.raises(IntegrityError, match=r"cert-object"):
        Certificate.from_object(golden_cert.to_object()[:-3], what="cert-object")


def test_certificates_compare_by_der(golden_cert, our_cert):
    again = Certificate.from_pem(b"leading text\n" + golden_cert.pem)
    assert again == golden_cert and hash(again) == hash(golden_cert)
    assert our_cert != golden_cert


# -- our certificates ------------------------------------------------------------------------------


def test_created_certificate_is_version_1_without_extensions(our_cert):
    c = our_cert.x509
    assert c.version is x509.Version.v1
    assert len(c.extensions) == 0
    assert c.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256


def test_created_certificate_is_self_signed_with_the_given_key(our_cert, rsa_key):
    c = our_cert.x509
    assert c.issuer == c.subject
    c.verify_directly_issued_by(c)
    assert our_cert.public_key.public_numbers() == rsa_key.public_key().public_numbers()
    rsa_key.public_key().verify(c.signature, c.tbs_certificate_bytes, padding.PKCS1v15(),
                                c.signature_hash_algorithm)


def test_created_certificate_dates_and_serial(our_cert, rsa_key):
    c = our_cert.x509
    assert c.not_valid_before_utc == datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert c.not_valid_after_utc - c.not_valid_before_utc == timedelta(days=365)
    assert 0 < c.serial_number < 2**159
    other = create_certificate("test.example.org", rsa_key)
    assert other.x509.serial_number != c.serial_number
    assert abs(other.x509.not_valid_before_utc - datetime.now(UTC)) < timedelta(minutes=1)


def test_created_certificate_has_the_der_layout_of_the_stock_one(our_cert, golden_cert):
    assert _structure(our_cert.der) == _structure(golden_cert.der)


def test_created_certificate_pem_is_one_64_column_block_with_final_newline(our_cert):
    lines = our_cert.pem.split(b"\n")
    assert lines[0] == b"-----BEGIN CERTIFICATE-----"
    assert lines[-2:] == [b"-----END CERTIFICATE-----", b""]
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1]) and 0 < len(body[-1]) <= 64
    assert base64.b64decode(b"".join(body)) == our_cert.der
    assert our_cert.pem.count(b"BEGIN") == 1


def test_created_certificate_round_trips_through_an_x_object(our_cert):
    obj = our_cert.to_object()
    assert obj == zlib.compress(our_cert.pem)
    assert Certificate.from_object(obj) == our_cert


@pytest.mark.parametrize("fqrn, cn", [
    ("a.b", "a.b CernVM-FS Release Managers"),
    ("x" * 26 + ".org", "x" * 26 + ".org CernVM-FS Release Managers"),  # exactly 30
    ("x" * 27 + ".org", "x" * 27 + ".or[...] CernVM-FS Release Managers"),  # 31
    ("very-long-repository-name.cern.ch",
     "very-long-repository-name.cern[...] CernVM-FS Release Managers"),
])
def test_common_name_truncates_names_longer_than_30_characters(fqrn, cn):
    assert certificate_cn(fqrn) == cn


def test_created_certificate_subject_uses_the_truncated_common_name(rsa_key):
    fqrn = "very-long-repository-name.cern.ch"
    cert = create_certificate(fqrn, rsa_key)
    assert cert.subject_cn == certificate_cn(fqrn)
    assert cert.x509.issuer.rfc4514_string() == "CN=" + certificate_cn(fqrn)


def test_dates_from_2050_on_are_written_as_generalized_time(rsa_key):
    cert = create_certificate("y.org", rsa_key, now=datetime(2049, 12, 1))
    assert cert.x509.not_valid_before_utc == datetime(2049, 12, 1, tzinfo=UTC)
    assert cert.x509.not_valid_after_utc == datetime(2050, 12, 1, tzinfo=UTC)
    assert b"\x18\x0f20501201000000Z" in cert.der
    assert b"\x17\x0d491201000000Z" in cert.der


def test_explicit_serial_must_fit_in_159_bits(rsa_key):
    assert create_certificate("y.org", rsa_key, serial=2**159 - 1).x509.serial_number == 2**159 - 1
    assert create_certificate("y.org", rsa_key, serial=0x80).x509.serial_number == 0x80
    for bad in (0, 2**159):
        with pytest.raises(ConfigError):
            create_certificate("y.org", rsa_key, serial=bad)


@needs_openssl
def test_openssl_shows_version_1_and_no_extensions(our_cert, tmp_path):
    p = tmp_path / "c.crt"
    p.write_bytes(our_cert.pem)
    text = subprocess.run([OPENSSL, "x509", "-in", str(p), "-noout", "-text"],
                          capture_output=True, check=True, text=True).stdout
    assert "Version: 1 (0x0)" in text
    assert "X509v3" not in text
    assert "Signature Algorithm: sha256WithRSAEncryption" in text
    assert "Subject: CN = test.example.org CernVM-FS Release Managers" in text
    assert "Exponent: 65537" in text
    verify = subprocess.run([OPENSSL, "verify", "-no_check_time", "-CAfile", str(p), str(p)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
