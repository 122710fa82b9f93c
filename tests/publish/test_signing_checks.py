"""Write commands refuse keys no client would accept before they store anything (issue 12)."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError, CvmfsError, WhitelistError
from pycvmfs.format.whitelist import create_whitelist
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.gc import collect_garbage
from pycvmfs.publish.repository import Publisher
from pycvmfs.publish.signing import WHITELIST, switch_manifest

from helpers.signing import expire_certificate, pycvmfs, replace_key_file, repository_files


def every_write(pub: Publisher, src: Path) -> None:
    """Each write command in turn; the test expects every one of them to be refused."""
    actions = {
        "publish": lambda: _publish(pub, src),
        "rm": lambda: _remove(pub),
        "tag": lambda: pub.tag("t1"),
        "untag": lambda: pub.tag("v1", remove=True),
        "rollback": lambda: pub.rollback("trunk-previous"),
        "resign -p": lambda: pub.resign(published=True),
    }
    for name, action in actions.items():
        with pytest.raises(CvmfsError) as info:
            action()
        assert str(pub.config.keys_dir) in str(info.value) or WHITELIST in str(info.value), name


def _publish(pub: Publisher, src: Path) -> None:
    with pub.transaction() as txn:
        txn.add_tree(src, "/tree")


def _remove(pub: Publisher) -> None:
    with pub.transaction() as txn:
        txn.remove("/new_repository")


@pytest.fixture
def two_revisions(publisher, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    with publisher.transaction(tag="v1") as txn:
        txn.add_file("/f", b"one\n")
    return publisher, src


def test_a_key_of_another_repository_is_refused_and_nothing_changes(two_revisions,
                                                                    make_publisher):
    pub, src = two_revisions
    other = make_publisher("other.example.org")
    key = pub.config.key_path("key")
    replace_key_file(key, other.config.key_path("key").read_bytes())
    before = repository_files(pub)
    reopened = Publisher.open(pub.fqrn, config_dir=pub.config.config_dir)
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        _publish(reopened, src)
    every_write(reopened, src)
    assert repository_files(pub) == before
    r = pycvmfs("publish", pub.fqrn, "--from", src, "--config-dir", pub.config.config_dir)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"pycvmfs: error: {key} does not belong to the certificate" in r.stderr
    assert "--rotate-certificate" in r.stderr
    assert repository_files(pub) == before


def test_a_corrupt_key_is_refused_and_nothing_changes(two_revisions):
    pub, src = two_revisions
    key = pub.config.key_path("key")
    replace_key_file(key, key.read_bytes()[:200])
    before = repository_files(pub)
    with pytest.raises(ConfigError, match=f"{key}: cannot parse the private key"):
        Publisher.open(pub.fqrn, config_dir=pub.config.config_dir)
    r = pycvmfs("publish", pub.fqrn, "--from", src, "--config-dir", pub.config.config_dir)
    assert r.returncode == 1 and f"{key}: cannot parse the private key" in r.stderr, r.stderr
    assert "--rotate-certificate" in r.stderr
    assert "Traceback" not in r.stderr
    assert repository_files(pub) == before


def test_an_unreadable_key_is_refused(two_revisions):
    pub, src = two_revisions
    key = pub.config.key_path("key")
    os.chmod(key, 0)
    before = repository_files(pub)
    r = pycvmfs("publish", pub.fqrn, "--from", src, "--config-dir", pub.config.config_dir,
                honour_modes=True)
    assert r.returncode == 1 and f"{key}: cannot read private key" in r.stderr, r.stderr
    os.chmod(key, 0o400)
    assert repository_files(pub) == before


def test_an_expired_certificate_is_refused_with_the_recovery_command(two_revisions):
    pub, src = two_revisions
    expire_certificate(pub)
    before = repository_files(pub)
    reopened = Publisher.open(pub.fqrn, config_dir=pub.config.config_dir)
    with pytest.raises(ConfigError, match=r"certificate expired on .*--rotate-certificate"):
        _publish(reopened, src)
    every_write(reopened, src)
    assert repository_files(pub) == before


def test_an_expired_whitelist_is_refused_and_resign_mends_it(two_revisions, tmp_path):
    pub, src = two_revisions
    past = datetime.now(UTC) - timedelta(days=40)
    pub.store.put_bytes(WHITELIST, create_whitelist(pub.fqrn, pub.keys.certificate,
                                                    pub.keys.master, days=30, now=past))
    before = repository_files(pub)
    with pytest.raises(WhitelistError, match=f"expired on .*pycvmfs resign {pub.fqrn}"):
        _publish(pub, src)
    every_write(pub, src)
    assert repository_files(pub) == before
    assert [(p.object, "expired on" in p.message) for p in check_repository(pub).problems] == [
        ("signing", True)]
    r = pycvmfs("resign", pub.fqrn, "--config-dir", pub.config.config_dir)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    _publish(pub, src)
    assert pub.head().revision == 3


def test_a_whitelist_without_the_certificate_is_refused(two_revisions, make_publisher):
    pub, src = two_revisions
    other = make_publisher("other.example.org")
    pub.store.put_bytes(WHITELIST, create_whitelist(pub.fqrn, other.keys.certificate,
                                                    pub.keys.master))
    before = repository_files(pub)
    with pytest.raises(WhitelistError, match=r"not in whitelist.*--rotate-certificate"):
        _publish(pub, src)
    assert repository_files(pub) == before
    # a renewal keeps the line (as stock) and says that it does not help
    r = pycvmfs("resign", pub.fqrn, "--config-dir", pub.config.config_dir)
    assert r.returncode == 0 and "pycvmfs: warning:" in r.stderr, r.stderr
    assert "not in whitelist" in r.stderr and "--rotate-certificate" in r.stderr


def test_gc_writes_no_manifest_and_still_runs_with_an_expired_whitelist(make_publisher):
    pub = make_publisher(garbage_collection=True)
    with pub.transaction() as txn:
        txn.add_file("/f", b"one\n")
    past = datetime.now(UTC) - timedelta(days=40)
    pub.store.put_bytes(WHITELIST, create_whitelist(pub.fqrn, pub.keys.certificate,
                                                    pub.keys.master, days=30, now=past))
    assert collect_garbage(pub, keep_revisions=0, dry_run=True).objects >= 1


def test_the_signing_step_itself_refuses_a_mismatched_key(publisher, make_publisher):
    """The last guard, for any future caller that skips the checks above."""
    wrong = dataclasses.replace(publisher.keys,
                                repo_key=make_publisher("other.example.org").keys.repo_key)
    head = publisher.head()
    before = repository_files(publisher)
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        switch_manifest(publisher.store, publisher.config, wrong, head, previous=head)
    assert repository_files(publisher) == before
