"""Fuzzing the signed-file readers: whatever the bytes, only pycvmfs errors come out."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycvmfs.errors import CvmfsError
from pycvmfs.format.certificate import Certificate, create_certificate
from pycvmfs.format.hashes import Algorithm, hash_bytes
from pycvmfs.format.manifest import (
    Manifest,
    parse_signed_manifest,
    sign_manifest,
    verify_manifest,
)
from pycvmfs.format.signature import make_letter, sign_raw_pkcs1
from pycvmfs.format.whitelist import (
    Whitelist,
    create_whitelist,
    parse_blacklist,
    verify_whitelist,
)

FQRN = "fuzz.example.org"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def material(rsa_key, master_key):
    cert = create_certificate(FQRN, rsa_key)
    manifest = Manifest(root_catalog=hash_bytes(b"root"), root_catalog_size=4096, revision=5,
                        fqrn=FQRN, certificate=cert.fingerprint(), history=hash_bytes(b"h"),
                        publish_timestamp=1_700_000_000, meta_info=hash_bytes(b"m"),
                        reflog=hash_bytes(b"y"))
    return {
        "cert": cert,
        "keys": [master_key.public_key()],
        "master": master_key,
        "manifest": sign_manifest(manifest, rsa_key),
        "whitelist": create_whitelist(FQRN, cert, master_key, now=NOW),
    }


def _only_cvmfs_errors(fn, *args, **kwargs) -> None:
    with contextlib.suppress(CvmfsError):
        fn(*args, **kwargs)


def _readers(data: bytes, m: dict) -> None:
    _only_cvmfs_errors(Manifest.parse, data)
    _only_cvmfs_errors(parse_signed_manifest, data)
    _only_cvmfs_errors(verify_manifest, data, m["cert"])
    _only_cvmfs_errors(Whitelist.parse, data)
    _only_cvmfs_errors(verify_whitelist, data, m["keys"], fqrn=FQRN, certificate=m["cert"],
                       now=NOW)
    _only_cvmfs_errors(Certificate.from_pem, data)
    parse_blacklist(data)


@st.composite
def mutated(draw, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\n", b"--", b"\n--\n", b":", b"#", b"\x00",
                                                  b"\xff", b"9" * 30, b"E", b"-rmd160"]))
        elif op == "delete" and data:
            del data[pos: pos + draw(st.integers(1, 50))]
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=700))
def test_arbitrary_bytes_raise_only_pycvmfs_errors(material, data):
    _readers(data, material)


@FUZZ
@given(data=st.data())
def test_mutated_manifests_raise_only_pycvmfs_errors(material, data):
    _readers(data.draw(mutated(material["manifest"])), material)


@FUZZ
@given(data=st.data())
def test_mutated_whitelists_raise_only_pycvmfs_errors(material, data):
    _readers(data.draw(mutated(material["whitelist"])), material)


_LINE = st.tuples(
    st.sampled_from(list("CBRDSGALNXHTMYZQ-\r")),
    st.one_of(st.text(max_size=60), st.from_regex(r"[0-9a-f]{40}(-rmd160|-shake128)?",
                                                  fullmatch=True)),
)


@FUZZ
@given(lines=st.lists(_LINE, max_size=20))
def test_validly_signed_arbitrary_manifest_bodies_raise_only_pycvmfs_errors(material, lines):
    body = "".join(k + v.replace("\n", "") + "\n" for k, v in lines).encode("utf-8",
                                                                             "surrogatepass")
    try:
        data = make_letter(body, Algorithm.SHA1, lambda t: b"\x00" * 256)
    except CvmfsError:
        return
    _only_cvmfs_errors(parse_signed_manifest, data)
    _only_cvmfs_errors(Manifest.parse, body)


@FUZZ
@given(lines=st.lists(st.binary(max_size=70).filter(lambda b: b"\n" not in b), max_size=8),
       expiry=st.from_regex(rb"E[0-9]{14}", fullmatch=True))
def test_validly_signed_arbitrary_whitelists_raise_only_pycvmfs_errors(material, lines, expiry):
    body = b"20300101000000\n" + expiry + b"\nN" + FQRN.encode() + b"\n"
    body += b"".join(line + b"\n" for line in lines)
    try:
        data = make_letter(body, Algorithm.SHA1, lambda t: sign_raw_pkcs1(material["master"], t))
    except CvmfsError:
        return
    _only_cvmfs_errors(verify_whitelist, data, material["keys"], fqrn=FQRN,
                       certificate=material["cert"], now=NOW)
