"""A tampered copy of the golden repository: every broken link of the chain is refused by name."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.errors import (
    FormatError,
    HashMismatchError,
    IntegrityError,
    OutdatedManifestError,
    SignatureError,
    WhitelistError,
)
from pycvmfs.format.certificate import create_certificate
from pycvmfs.format.hashes import ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.manifest import Manifest, sign_manifest
from pycvmfs.format.signature import generate_rsa_key, public_key_pem
from pycvmfs.format.whitelist import create_whitelist

FQRN = "golden.example.org"
ROOT_V2 = "434e2742ad19baa1f5be5ffcb3c755ecabae7562"
ROOT_V1 = "94c073f20e6d79b3abea61eb44ffe1ad26a1bd90"
NESTED_V2 = "428ecd9b6fb54a4257cf72cebbf89af58e49799e"
CERT = "a9668beea3a885622bfc513554b3b4dc42371cbd"


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset % len(data)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def obj(repo_dir: Path, h: str, kind: ObjectKind = ObjectKind.FILE) -> Path:
    return repo_dir / ContentHash.parse(h).object_path(kind)


@pytest.fixture(params=["local", "http"])
def served(request, golden_copy, http_server):
    """(storage dir, location) — the tampered copy read from disk or over HTTP."""
    if request.param == "local":
        return golden_copy, str(golden_copy)
    srv = http_server(golden_copy.parent)
    return golden_copy, f"{srv.url}/{FQRN}"


def _open(location, keys, tmp_path, **kw):
    return open_repository(location, keys=[keys], cache_dir=tmp_path / "cache", **kw)


def test_untouched_copy_opens(served, golden_keys, tmp_path):
    _, loc = served
    with _open(loc, golden_keys, tmp_path) as repo, repo.open_revision() as v:
        assert v.read_bytes("text/hello.txt").startswith(b"Hello again")


def test_flipped_manifest_body_byte_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    m = d / ".cvmfspublished"
    data = m.read_bytes()
    flip(m, data.index(b"\nS3\n") + 2)  # revision 3 -> 2
    with _open(loc, golden_keys, tmp_path) as repo, \
            pytest.raises(IntegrityError, match=r"\.cvmfspublished"):
        repo.refresh()


def test_flipped_manifest_signature_byte_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    flip(d / ".cvmfspublished", -1)
    with _open(loc, golden_keys, tmp_path) as repo, \
            pytest.raises(SignatureError, match=r"\.cvmfspublished"):
        repo.refresh()


def test_flipped_whitelist_byte_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    w = d / ".cvmfswhitelist"
    flip(w, w.read_bytes().index(b"23:7F") + 1)
    with _open(loc, golden_keys, tmp_path) as repo, \
            pytest.raises(IntegrityError, match=r"\.cvmfswhitelist"):
        repo.refresh()


def test_flipped_whitelist_signature_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    flip(d / ".cvmfswhitelist", -3)
    with _open(loc, golden_keys, tmp_path) as repo, \
            pytest.raises(SignatureError, match=r"\.cvmfswhitelist"):
        repo.refresh()


def test_flipped_certificate_object_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    flip(obj(d, CERT, ObjectKind.CERTIFICATE))
    with _open(loc, golden_keys, tmp_path) as repo, \
            pytest.raises(HashMismatchError, match=CERT + "X"):
        repo.refresh()
    assert not (tmp_path / "cache" / CERT[:2] / CERT[2:]).exists()


def test_flipped_root_catalog_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    flip(obj(d, ROOT_V2, ObjectKind.CATALOG))
    with _open(loc, golden_keys, tmp_path) as repo, \
            pytest.raises(HashMismatchError, match=ROOT_V2 + "C"):
        repo.open_revision()
    # the untouched v1 catalog still opens
    with _open(loc, golden_keys, tmp_path) as repo, repo.open_revision(tag="v1") as v:
        assert v.read_bytes("text/hello.txt") == b"Hello, CernVM-FS!\n"


def test_flipped_nested_catalog_is_rejected(served, golden_keys, tmp_path):
    d, loc = served
    flip(obj(d, NESTED_V2, ObjectKind.CATALOG))
    with _open(loc, golden_keys, tmp_path) as repo, repo.open_revision() as v:
        assert v.stat("/nested").is_dir  # answered by the parent catalog
        assert v.read_bytes("README.txt")
        with pytest.raises(HashMismatchError, match=NESTED_V2 + "C"):
            v.listdir("/nested")


def test_flipped_data_object_is_rejected_and_never_served(served, golden_keys, golden_expected,
                                                          tmp_path):
    d, loc = served
    h = golden_expected["published"]["files"]["rev2"]["text/hello.txt"]["cvmfs_hash"]
    flip(obj(d, h), 3)
    with _open(loc, golden_keys, tmp_path) as repo, repo.open_revision() as v:
        with pytest.raises(HashMismatchError, match=h), v.open("text/hello.txt") as f:
            f.read()
        assert not repo.cache.contains(ContentHash.parse(h))
        assert v.read_bytes("README.txt")  # other files are unaffected


def test_flipped_chunk_is_rejected(served, golden_keys, golden_expected, tmp_path):
    d, loc = served
    chunk = golden_expected["published"]["files"]["rev2"]["bin/blob-3m.bin"]["chunk_list"][5]
    flip(obj(d, chunk["hash"], ObjectKind.PARTIAL))
    with _open(loc, golden_keys, tmp_path) as repo, repo.open_revision() as v, \
            v.open("bin/blob-3m.bin") as f:
        assert len(f.pread(1000, 0)) == 1000  # chunk 0 is fine
        with pytest.raises(HashMismatchError, match=chunk["hash"] + "P"):
            f.pread(10, chunk["offset"] + 5)


def test_truncated_object_is_rejected(served, golden_keys, golden_expected, tmp_path):
    d, loc = served
    h = golden_expected["published"]["files"]["rev2"]["README.txt"]["cvmfs_hash"]
    p = obj(d, h)
    p.write_bytes(p.read_bytes()[:-4])
    with _open(loc, golden_keys, tmp_path) as repo, repo.open_revision() as v, \
            pytest.raises(IntegrityError, match=h):
        v.read_bytes("README.txt")


def test_expired_whitelist_is_rejected_at_the_expiry_hour(served, golden_keys, tmp_path):
    _, loc = served
    before = dt.datetime(2126, 10, 31, 19, 59, tzinfo=dt.UTC)
    at = dt.datetime(2126, 10, 31, 20, 0, tzinfo=dt.UTC)
    with _open(loc, golden_keys, tmp_path, now=lambda: before) as repo:
        repo.refresh()
    with _open(loc, golden_keys, tmp_path / "2", now=lambda: at) as repo, \
            pytest.raises(WhitelistError, match=r"\.cvmfswhitelist.*expired"):
        repo.refresh()


def test_wrong_public_key_is_rejected(served, tmp_path):
    _, loc = served
    key = tmp_path / "other.pub"
    key.write_bytes(public_key_pem(generate_rsa_key()))
    with _open(loc, key, tmp_path) as repo, \
            pytest.raises(SignatureError, match=r"\.cvmfswhitelist"):
        repo.refresh()


def test_wrong_repository_name_is_rejected(served, golden_keys, tmp_path):
    _, loc = served
    with _open(loc, golden_keys, tmp_path, fqrn="other.example.org") as repo, \
            pytest.raises(FormatError, match=r"other\.example\.org"):
        repo.refresh()


def _rekey(d: Path, tmp_path: Path):
    """Re-sign the copy with our own master key and certificate (the storage stays stock)."""
    master, repo_key = generate_rsa_key(), generate_rsa_key()
    cert = create_certificate(FQRN, repo_key)
    cert_obj = zlib.compress(cert.pem)
    cert_hash = hash_bytes(cert_obj)
    target = d / cert_hash.object_path(ObjectKind.CERTIFICATE)
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(cert_obj)
    pub = tmp_path / "master.pub"
    pub.write_bytes(public_key_pem(master))
    old = Manifest.parse((d / ".cvmfspublished").read_bytes())
    return master, repo_key, cert, cert_hash, pub, old


def test_certificate_not_in_whitelist_is_rejected(served, tmp_path):
    d, loc = served
    master, repo_key, _cert, cert_hash, pub, old = _rekey(d, tmp_path)
    other_cert = create_certificate(FQRN, generate_rsa_key())
    (d / ".cvmfswhitelist").write_bytes(create_whitelist(FQRN, other_cert, master, days=30))
    (d / ".cvmfspublished").write_bytes(sign_manifest(
        dataclasses.replace(old, certificate=cert_hash), repo_key))
    with _open(loc, pub, tmp_path) as repo, \
            pytest.raises(WhitelistError, match="not in whitelist"):
        repo.refresh()


def test_older_manifest_after_a_newer_one_is_refused(served, tmp_path):
    d, loc = served
    master, repo_key, cert, cert_hash, pub, old = _rekey(d, tmp_path)
    (d / ".cvmfswhitelist").write_bytes(create_whitelist(FQRN, cert, master, days=30))
    newer = dataclasses.replace(old, certificate=cert_hash, publish_timestamp=old.publish_timestamp)
    older = dataclasses.replace(old, certificate=cert_hash, revision=2,
                                root_catalog=ContentHash.parse(ROOT_V1),
                                publish_timestamp=old.publish_timestamp - 1)
    (d / ".cvmfspublished").write_bytes(sign_manifest(newer, repo_key))
    with _open(loc, pub, tmp_path) as repo:
        assert repo.refresh().manifest.revision == 3
    (d / ".cvmfspublished").write_bytes(sign_manifest(older, repo_key))
    with _open(loc, pub, tmp_path) as repo, \
            pytest.raises(OutdatedManifestError, match="revision 2 is older than revision 3"):
        repo.refresh()
    # same revision but an older timestamp is refused too
    stale = dataclasses.replace(newer, publish_timestamp=old.publish_timestamp - 100)
    (d / ".cvmfspublished").write_bytes(sign_manifest(stale, repo_key))
    with _open(loc, pub, tmp_path) as repo, pytest.raises(OutdatedManifestError):
        repo.refresh()
    # a fresh cache has seen nothing and accepts the older, validly signed revision
    (d / ".cvmfspublished").write_bytes(sign_manifest(older, repo_key))
    with open_repository(loc, keys=[pub], cache_dir=tmp_path / "fresh") as repo:
        assert repo.refresh().manifest.revision == 2
