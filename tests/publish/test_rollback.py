"""Rollback and tags follow the stock rules (format doc §10.3)."""

from __future__ import annotations

import sqlite3
import zlib

import pytest

from pycvmfs.errors import TagNotFoundError
from pycvmfs.format.hashes import ObjectKind

from helpers.publishing import reader


def _catalog(pub, h, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(zlib.decompress((pub.config.storage / h.object_path(ObjectKind.CATALOG))
                                     .read_bytes()))
    db = sqlite3.connect(path)
    props = dict(db.execute("SELECT key, value FROM properties"))
    rows = db.execute("SELECT rowid, * FROM catalog ORDER BY rowid").fetchall()
    db.close()
    return props, rows


def test_rollback_republishes_the_target_as_a_new_revision(publisher, tmp_path):
    with publisher.transaction(tag="v1") as txn:
        txn.add_file("/f", b"one\n")
    v1 = publisher.head()
    with publisher.transaction(tag="v2") as txn:
        txn.add_file("/f", b"two\n")
    v2 = publisher.head()
    publisher.settings.ttl = 120  # a rollback must not rewrite the target's TTL property
    m = publisher.rollback("v1")
    assert m.revision == v2.revision + 1 and m.root_catalog != v1.root_catalog
    # the new root catalog differs from the target only in revision/last_modified/previous
    old_props, old_rows = _catalog(publisher, v1.root_catalog, tmp_path, "old.db")
    new_props, new_rows = _catalog(publisher, m.root_catalog, tmp_path, "new.db")
    assert new_rows == old_rows
    changed = {k for k in old_props.keys() | new_props.keys()
               if old_props.get(k) != new_props.get(k)}
    # (last_modified is "now": equal to the target's when both fall in the same second)
    assert {"revision", "previous_revision"} <= changed <= {"revision", "last_modified",
                                                            "previous_revision"}
    assert int(new_props["last_modified"]) >= int(old_props["last_modified"])
    assert new_props["previous_revision"] == str(v2.root_catalog)
    tags = {t.name: t for t in publisher.tags()}
    assert "v2" not in tags and "trunk-previous" not in tags  # tags past the target go
    assert tags["v1"].root_hash == m.root_catalog and tags["trunk"].root_hash == m.root_catalog
    with reader(publisher, tmp_path / "c") as r, r.open_revision() as view:
        assert view.read_bytes("f") == b"one\n"
    with pytest.raises(TagNotFoundError):  # only one anonymous undo
        publisher.rollback()
    with publisher.transaction() as txn:  # the next publish restores trunk-previous
        txn.add_file("/g", b"x")
    assert {t.name for t in publisher.tags()} >= {"trunk", "trunk-previous", "v1"}


def test_tag_changes_re_sign_without_a_new_revision(publisher):
    head = publisher.head()
    publisher.tag("named", message="a tag")
    after = publisher.head()
    assert after.revision == head.revision and after.history != head.history
    assert after.publish_timestamp >= head.publish_timestamp
    assert {t.name: t.description for t in publisher.tags()}["named"] == "a tag"
    publisher.tag("named", remove=True)
    assert "named" not in {t.name for t in publisher.tags()}
    with pytest.raises(TagNotFoundError):
        publisher.tag("named", remove=True)
