"""Recovering a repository no client accepts: resign -p and certificate rotation (issue 12)."""

from __future__ import annotations

import os
import stat

import pytest

from pycvmfs.errors import ConfigError, IntegrityError
from pycvmfs.format.certificate import Certificate
from pycvmfs.format.signature import load_public_keys, split_letter
from pycvmfs.format.whitelist import Whitelist, create_whitelist, verify_whitelist
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.repository import Publisher
from pycvmfs.publish.signing import MANIFEST, WHITELIST

from helpers.publishing import reader
from helpers.signing import (
    expire_certificate,
    pycvmfs,
    replace_key_file,
    repository_files,
    sign_head_with,
)


@pytest.fixture
def released(publisher, tmp_path):
    """A repository at revision 2 (tag v1) and a client cache that has seen revision 2."""
    with publisher.transaction(tag="v1") as txn:
        txn.add_file("/f", b"one\n")
    cache = tmp_path / "client-cache"
    with reader(publisher, cache) as r:
        assert r.manifest.revision == 2
    return publisher, cache


def whitelist_of(pub: Publisher) -> Whitelist:
    data = (pub.config.storage / WHITELIST).read_bytes()
    return Whitelist.parse(split_letter(data, what=WHITELIST).body)


def assert_recovered(pub: Publisher, cache, tmp_path) -> None:
    """The client that had seen revision 2 reads it again, every write command works."""
    with reader(pub, cache) as r, r.open_revision() as view:
        assert r.manifest.revision == 2 and view.read_bytes("f") == b"one\n"
    with reader(pub, tmp_path / "fresh-cache") as r:
        assert r.manifest.revision == 2
    reopened = Publisher.open(pub.fqrn, config_dir=pub.config.config_dir)
    with reopened.transaction(tag="v2") as txn:
        txn.add_file("/f", b"two\n")
    reopened.tag("named")
    reopened.rollback("v1", keep_undo=False)
    with reader(reopened, cache) as r, r.open_revision() as view:
        assert r.manifest.revision == 4 and view.read_bytes("f") == b"one\n"


def test_resign_p_mends_a_head_signed_by_a_wrong_key(released, make_publisher, tmp_path):
    pub, cache = released
    sign_head_with(pub, make_publisher("other.example.org"))
    with reader(pub, tmp_path / "c1") as r, pytest.raises(IntegrityError):
        r.refresh()  # what every client now says
    with pytest.raises(IntegrityError, match=f"pycvmfs resign -p {pub.fqrn}"), \
            pub.transaction() as txn:
        txn.add_file("/g", b"x")
    problems = check_repository(pub).problems
    assert any(f"pycvmfs resign -p {pub.fqrn}" in p.message for p in problems), problems
    old_whitelist = (pub.config.storage / WHITELIST).read_bytes()
    r = pycvmfs("resign", pub.fqrn, "-p", "--config-dir", pub.config.config_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == f"{pub.fqrn}: revision 2 re-signed\n"
    assert (pub.config.storage / WHITELIST).read_bytes() == old_whitelist
    assert check_repository(pub).problems == []
    assert_recovered(pub, cache, tmp_path)


def test_resign_p_refuses_a_key_that_would_sign_wrongly_again(released, make_publisher):
    pub, _cache = released
    other = make_publisher("other.example.org")
    sign_head_with(pub, other)
    replace_key_file(pub.config.key_path("key"), other.config.key_path("key").read_bytes())
    before = repository_files(pub)
    r = pycvmfs("resign", pub.fqrn, "-p", "--config-dir", pub.config.config_dir)
    assert r.returncode == 1 and "does not belong to the certificate" in r.stderr, r.stderr
    assert repository_files(pub) == before


def test_rotation_mends_a_wrong_key_and_keeps_the_old_fingerprint_until_the_next_resign(
        released, make_publisher, tmp_path):
    pub, cache = released
    other = make_publisher("other.example.org")
    old_cert = pub.keys.certificate
    old_manifest = (pub.config.storage / MANIFEST).read_bytes()
    sign_head_with(pub, other)  # and the wrong key file stays in place
    replace_key_file(pub.config.key_path("key"), other.config.key_path("key").read_bytes())
    r = pycvmfs("resign", pub.fqrn, "--rotate-certificate", "--config-dir",
                pub.config.config_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    new_cert = Certificate.from_pem(pub.config.key_path("crt").read_bytes())
    assert new_cert != old_cert
    assert new_cert.subject_cn == old_cert.subject_cn
    assert stat.S_IMODE(os.stat(pub.config.key_path("key")).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(pub.config.key_path("crt")).st_mode) == 0o444
    assert not list(pub.config.keys_dir.glob("*.new"))
    wl = whitelist_of(pub)
    assert wl.fingerprints == [new_cert.fingerprint(), old_cert.fingerprint()]
    # a client that still gets the old manifest (a proxy's copy) accepts it with the new
    # whitelist during the transition
    master = load_public_keys(pub.config.key_path("pub"))
    verify_whitelist((pub.config.storage / WHITELIST).read_bytes(), master, fqrn=pub.fqrn,
                     certificate=old_cert)
    assert old_manifest != (pub.config.storage / MANIFEST).read_bytes()
    assert_recovered(pub, cache, tmp_path)
    r = pycvmfs("resign", pub.fqrn, "--config-dir", pub.config.config_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert whitelist_of(pub).fingerprints == [new_cert.fingerprint()]


def test_rotation_mends_an_expired_certificate(released, tmp_path):
    pub, cache = released
    expire_certificate(pub)
    expired = pub.keys.certificate
    reopened = Publisher.open(pub.fqrn, config_dir=pub.config.config_dir)
    with pytest.raises(ConfigError, match="expired"), reopened.transaction() as txn:
        txn.add_file("/g", b"x")
    m = reopened.resign(rotate_certificate=True, certificate_days=30)
    assert m is not None and m.revision == 2
    assert reopened.keys.certificate != expired
    days = (reopened.keys.certificate.x509.not_valid_after_utc
            - reopened.keys.certificate.x509.not_valid_before_utc).days
    assert days == 30
    assert whitelist_of(pub).fingerprints == [reopened.keys.certificate.fingerprint(),
                                              expired.fingerprint()]
    assert_recovered(pub, cache, tmp_path)


def test_rotation_needs_the_master_key_and_changes_nothing_without_it(released):
    pub, _cache = released
    expire_certificate(pub)
    master = pub.config.key_path("masterkey")
    kept = master.read_bytes()
    master.unlink()
    before = repository_files(pub)
    r = pycvmfs("resign", pub.fqrn, "--rotate-certificate", "--config-dir",
                pub.config.config_dir)
    assert r.returncode == 1 and f"the master key {master} is not here" in r.stderr, r.stderr
    assert repository_files(pub) == before
    master.write_bytes(kept)


def test_rotation_mends_a_lost_repository_key(released, tmp_path):
    pub, cache = released
    pub.config.key_path("key").unlink()
    r = pycvmfs("tag", pub.fqrn, "-a", "x", "--config-dir", pub.config.config_dir)
    assert r.returncode == 1 and "--rotate-certificate" in r.stderr, r.stderr
    r = pycvmfs("resign", pub.fqrn, "--rotate-certificate", "--config-dir",
                pub.config.config_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_recovered(pub, cache, tmp_path)


def test_a_rotation_run_again_after_an_interruption_keeps_the_published_manifest_valid(
        released, tmp_path):
    pub, cache = released
    old_cert = pub.keys.certificate
    first = pub.keys.with_new_certificate(pub.fqrn)
    # interrupted after the whitelist of a first rotation: nothing else changed
    pub.store.put_bytes(WHITELIST, create_whitelist(
        pub.fqrn, first.certificate, pub.keys.master,
        also=[old_cert.fingerprint().fingerprint().encode()]))
    pub.resign(rotate_certificate=True)
    assert whitelist_of(pub).fingerprints == [pub.keys.certificate.fingerprint(),
                                              first.certificate.fingerprint(),
                                              old_cert.fingerprint()]
    master = load_public_keys(pub.config.key_path("pub"))
    verify_whitelist((pub.config.storage / WHITELIST).read_bytes(), master, fqrn=pub.fqrn,
                     certificate=old_cert)  # what signs the manifest proxies may still hold
    assert_recovered(pub, cache, tmp_path)
