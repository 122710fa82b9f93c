"""The flattened tree equals ``umoci unpack``'s rootfs (as root) for the §6.3 and rich fixtures."""

from __future__ import annotations

import json

import pytest

from containers.conftest import umoci_rootfs
from containers.ocifixture import Layout, rich_image, section6_image
from containers.treecompare import (
    compare,
    content_store,
    link_groups,
    listing_from_disk,
    listing_from_tree,
    stored_sha256,
)
from pycvmfs.containers.flatten import Tree
from pycvmfs.containers.layer import read_layer
from pycvmfs.containers.model import Descriptor

FIXTURES = {"section6": section6_image, "rich": rich_image}
#: mtimes umoci does not keep: the root's (a ``./`` member's mtime is lost), and a directory's
#: whose new child is a directory umoci makes up for a deeper entry (it restores the mtime
#: of an entry's direct parent only)
UMOCI_MTIME_LOST = {"section6": set(), "rich": {b"", b"usr"}}


@pytest.fixture(params=sorted(FIXTURES))
def unpacked(request, tmp_path):
    """(the fixture's name, umoci's rootfs listing, our Tree's listing)."""
    layout = Layout(tmp_path / "layout")
    written = layout.add(FIXTURES[request.param](), "t")
    theirs = listing_from_disk(umoci_rootfs(tmp_path / "layout", "t", tmp_path / "bundle"))
    ing, store = content_store(tmp_path / "store")
    with ing:
        tree = Tree()
        manifest = json.loads(written.manifest)
        for i, (d, diff_id) in enumerate(zip(manifest["layers"], written.diff_ids, strict=True)):
            desc = Descriptor.from_json(d, f"layer {i}")
            with open(tmp_path / "layout" / "blobs" / "sha256" / desc.digest[7:], "rb") as blob:
                tree.apply(read_layer(blob, desc, diff_id, ing, what=request.param))
        ing.flush()
        yield request.param, theirs, listing_from_tree(tree, stored_sha256(store))


def test_the_tree_equals_umocis_rootfs(unpacked):
    _name, theirs, ours = unpacked
    assert compare(theirs, ours) == []
    assert compare(theirs, ours, same_directory_links_only=True) == []
    assert any(r.xattrs for r in ours.values()), "the fixture has user xattrs"


def test_mtimes_the_layers_define_equal_umocis(unpacked):
    """umoci gives the directories it makes up the time of unpacking; §6.2 gives them 0.
    Every mtime a layer defines is the same in both."""
    name, theirs, ours = unpacked
    defined = {p for p, r in ours.items() if r.mtime != 0 and r.kind != "symlink"}
    assert len(defined) > 10
    differ = {p for p in defined if theirs[p].mtime != ours[p].mtime}
    assert differ == UMOCI_MTIME_LOST[name]
    assert all(theirs[p].mtime > 1_700_000_100 for p in differ)
    made_up = {p for p, r in ours.items() if r.mtime == 0}
    assert made_up and all(theirs[p].mtime > 1_700_000_000 for p in made_up)


def test_rich_fixture_details(tmp_path):
    """What the rich fixture is meant to exercise is really in umoci's result."""
    Layout(tmp_path / "layout").add(rich_image(), "t")
    theirs = listing_from_disk(umoci_rootfs(tmp_path / "layout", "t", tmp_path / "bundle"))
    assert theirs[b"dev/null"].kind == "char" and theirs[b"dev/loop9"].kind == "block"
    assert theirs[b"dev/fifo"].kind == "fifo" and theirs[b"dev/fifo"].mode == 0o600
    assert theirs[b"etc/xattr"].xattrs == ((b"user.bin", b"\x00\x01\xfe"), (b"user.two", b"2"))
    assert theirs[b"latin1-caf\xe9/\xff\xfe-file"].mode == 0o640
    assert theirs[b"swap"].kind == "dir" and b"swap/child" not in theirs
    assert theirs[b"twice"].kind == "file" and theirs[b"usr/bin/suid-link"].mode == 0o4711
    assert b"usr/bin/suid" not in theirs and b"lib64/libz.so.1" not in theirs
    assert {frozenset({b"usr/lib/libz-copy", b"lib64/libz-same-dir"}),
            frozenset({b"usr/bin/hello", b"usr/bin/hello2"})} <= link_groups(theirs)
    assert link_groups(theirs, same_directory_links_only=True) >= {
        frozenset({b"usr/bin/hello", b"usr/bin/hello2"})}
    assert sorted(p for p in theirs if p.startswith(b"opt/keep/")) == [b"opt/keep/new"]
    assert sorted(p for p in theirs if p.startswith(b"flip")) == [b"flip", b"flip/new"]
    assert theirs[b"opq-file"].kind == "file" and b"opq-missing" not in theirs
