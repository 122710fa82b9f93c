"""Rollback and tags follow the stock rules (format doc §10.3)."""

from __future__ import annotations

import json
import sqlite3
import zlib

import pytest

from pycvmfs.errors import TagNotFoundError
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.gc import collect_garbage

from helpers.publishing import describe_view, reader, write_files
from helpers.signing import pycvmfs, repository_files


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


def _three_releases(pub, tmp_path):
    """v1, v2, v3 of a small tree (changed, added and removed files, a symlink)."""
    trees = {}
    for n, files in enumerate([{"a": b"1\n", "d/b": b"b1\n"},
                               {"a": b"2\n", "d/c": b"c2\n", "big": bytes(300_000)},
                               {"a": b"3\n", "d/c": b"c3\n"}], start=1):
        with pub.transaction(tag=f"v{n}") as txn:
            txn.add_tree(write_files(tmp_path / f"src{n}", files), "/", delete=True)
            txn.symlink("/latest", f"v{n}")
        with reader(pub, tmp_path / f"c{n}") as r, r.open_revision() as view:
            trees[f"v{n}"] = describe_view(view)
    return trees


def _current_tree(pub, cache):
    with reader(pub, cache) as r, r.open_revision() as view:
        return describe_view(view)


def test_rollback_plan_names_the_tags_to_delete_and_changes_nothing(publisher, tmp_path):
    _three_releases(publisher, tmp_path)
    before = repository_files(publisher)
    plan = publisher.rollback_plan("v1")
    assert plan.target.name == "v1" and plan.new_revision == plan.head_revision + 1
    names = [t.name for t in plan.deleted_tags]
    assert {"v2", "v3", "trunk-previous"} <= set(names) and "v1" not in names
    assert "trunk" not in names and plan.undo_tag == f"pre-rollback-r{plan.head_revision}"
    assert repository_files(publisher) == before
    with pytest.raises(TagNotFoundError, match="'v9' not found"):
        publisher.rollback_plan("v9")


def test_a_rollback_is_undone_byte_for_byte_even_after_gc(make_publisher, tmp_path):
    pub = make_publisher(garbage_collection=True)
    trees = _three_releases(pub, tmp_path)
    m = pub.rollback("v1")
    assert _current_tree(pub, tmp_path / "r1") == trees["v1"]
    undo = {t.name: t for t in pub.tags()}["pre-rollback-r4"]
    assert undo.revision == m.revision - 1
    # gc that keeps no previous revision still keeps the tagged rolled-over head
    collect_garbage(pub, keep_revisions=0, keep_seconds=0)
    pub.rollback("pre-rollback-r4")
    assert _current_tree(pub, tmp_path / "r2") == trees["v3"]
    assert pub.head().revision == m.revision + 1  # revisions never go back
    assert not check_repository(pub).problems


def test_rollback_cli_lists_the_tags_asks_and_refusing_changes_nothing(publisher, tmp_path):
    trees = _three_releases(publisher, tmp_path)
    cfg = ("--config-dir", publisher.config.config_dir)
    before = repository_files(publisher)
    r = pycvmfs("rollback", publisher.fqrn, "v2", *cfg, stdin="n\n")
    assert r.returncode == 1, r.stderr
    assert "tags deleted: v3" in r.stderr and "trunk-previous" in r.stderr
    head = publisher.head()
    assert f"leaving behind revision 4 ({head.root_catalog}), kept by tag pre-rollback-r4" \
        in r.stderr and "roll back?" in r.stderr
    assert repository_files(publisher) == before
    r = pycvmfs("rollback", publisher.fqrn, "v2", *cfg, stdin="y\n")
    assert r.returncode == 0, r.stderr
    assert f"undo with: pycvmfs rollback {publisher.fqrn} pre-rollback-r4" in r.stdout
    assert _current_tree(publisher, tmp_path / "r1") == trees["v2"]
    r = pycvmfs("rollback", publisher.fqrn, "pre-rollback-r4", "-f", "--json", *cfg)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout)["undo_tag"] == "pre-rollback-r5"
    assert _current_tree(publisher, tmp_path / "r2") == trees["v3"]
