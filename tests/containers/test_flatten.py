"""Flattening layers (§6.2): whiteouts, opaque directories, type changes, hard links, copies."""

from __future__ import annotations

import hashlib
import io

import pytest

from containers.ocifixture import layer_blob, section6_image
from containers.treecompare import listing_from_tree, stored_sha256
from pycvmfs.containers.flatten import Tree, chain_ids
from pycvmfs.containers.layer import Kind, read_layer
from pycvmfs.containers.model import Descriptor
from pycvmfs.errors import ContainerError


def flatten(sink, *layers: list[dict], tree: Tree | None = None, compression: str = "gzip"
            ) -> Tree:
    tree = tree or Tree()
    for members in layers:
        blob, desc, diff_id = layer_blob(members, compression)
        changes = read_layer(io.BytesIO(blob), Descriptor.from_json(desc, "t"), diff_id,
                             sink[0], what="test image")
        tree.apply(changes)
    return tree


def listing(sink, tree: Tree) -> dict:
    sink[0].flush()
    return listing_from_tree(tree, stored_sha256(sink[1]))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def paths(tree: Tree) -> list[bytes]:
    return [p for p, _ in tree.walk()]


def test_section6_fixture(sink):
    tree = flatten(sink, *(lay.members for lay in section6_image().layers))
    got = listing(sink, tree)
    assert list(got) == [
        b"", b"etc", b"etc/hosts", b"etc/hosts/x", b"etc/passwd", b"home", b"lib", b"opt",
        b"opt/app", b"opt/app/new.txt", b"tmp", b"usr", b"usr/bin", b"usr/bin/ping",
        b"usr/bin/tool2", b"usr/lib", b"var", b"var/data", b"var/data/g"]
    assert got[b"usr/lib"].kind == "file" and got[b"usr/lib"].sha256 == sha(b"now a file\n")
    assert got[b"etc/hosts"].kind == "dir"
    tool2 = got[b"usr/bin/tool2"]
    assert (tool2.mode, tool2.sha256) == (0o4755, sha(b"#!/bin/sh\necho tool\n"))
    assert (got[b"home"].mode, got[b"home"].uid, got[b"home"].gid) == (0o700, 1000, 1000)
    assert got[b"tmp"].mode == 0o1777
    assert got[b"usr/bin/ping"].xattrs == ((b"user.test", b"hello"),)
    assert got[b"lib"].target == b"usr/lib"
    made_up = [got[p] for p in (b"", b"opt", b"usr", b"var")]
    assert all((r.mode, r.uid, r.gid, r.mtime) == (0o755, 0, 0, 0) for r in made_up)


def test_opaque_keeps_entries_of_its_own_layer_listed_before_the_marker(sink):
    tree = flatten(sink,
                   [{"name": "d/old", "data": b"o"}, {"name": "d/sub/deep", "data": b"x"},
                    {"name": "keep", "data": b"k"}],
                   [{"name": "d/new", "data": b"n"}, {"name": "d/.wh..wh..opq"},
                    {"name": "d/after", "data": b"a"}])
    assert paths(tree) == [b"", b"d", b"d/after", b"d/new", b"keep"]
    tree = flatten(sink, [{"name": ".wh..wh..opq"}, {"name": "only", "data": b"1"}], tree=tree)
    assert paths(tree) == [b"", b"only"]


def test_whiteouts_delete_lower_names_only(sink):
    tree = flatten(sink,
                   [{"name": "a/x", "data": b"x"}, {"name": "a/y", "data": b"y"},
                    {"name": "b/keep", "data": b"b"}, {"name": "c", "data": b"c"}],
                   [{"name": "a/.wh.x"}, {"name": "b/.wh..wh..opqX"}, {"name": ".wh.c"},
                    {"name": "c", "type": "dir"},  # deleted below, recreated here
                    {"name": "a/.wh.y"}, {"name": "a/y", "data": b"new y"},
                    {"name": "ghost/.wh.none"}, {"name": "a/.wh.absent"}])
    got = listing(sink, tree)
    assert list(got) == [b"", b"a", b"a/y", b"b", b"b/keep", b"c"]
    assert got[b"a/y"].sha256 == sha(b"new y") and got[b"c"].kind == "dir"


def test_a_whited_out_directory_comes_back_empty(sink):
    tree = flatten(sink, [{"name": "var/data/f", "data": b"f"}],
                   [{"name": "var/.wh.data"}],
                   [{"name": "var/data/g", "data": b"g"}])
    assert paths(tree) == [b"", b"var", b"var/data", b"var/data/g"]


def test_type_changes_across_layers(sink):
    tree = flatten(sink, [{"name": "p", "data": b"file"}])
    assert tree.lookup(b"p").kind is Kind.FILE
    flatten(sink, [{"name": "p", "type": "dir", "mode": 0o711}, {"name": "p/c", "data": b"c"}],
            tree=tree)
    assert tree.lookup(b"p").kind is Kind.DIR and tree.lookup(b"p").mode == 0o711
    flatten(sink, [{"name": "p", "data": b"file again"}], tree=tree)
    assert tree.lookup(b"p").kind is Kind.FILE and tree.lookup(b"p/c") is None
    flatten(sink, [{"name": "p", "type": "symlink", "target": "/x"}], tree=tree)
    assert tree.lookup(b"p").kind is Kind.SYMLINK and tree.lookup(b"p").target == b"/x"


def test_same_layer_file_dir_file_and_file_dir_replace_lower_children(sink):
    lower = [{"name": "k/child", "data": b"lower"}, {"name": "m/child", "data": b"lower"}]
    tree = flatten(sink, lower,
                   [{"name": "k", "data": b"1"}, {"name": "k", "type": "dir"},
                    {"name": "k", "data": b"2"},
                    {"name": "m", "data": b"1"}, {"name": "m", "type": "dir", "mode": 0o700}])
    got = listing(sink, tree)
    assert got[b"k"].kind == "file" and got[b"k"].sha256 == sha(b"2")
    assert got[b"m"].kind == "dir" and got[b"m"].mode == 0o700 and b"m/child" not in got


def test_directory_on_directory_changes_attributes_and_keeps_children(sink):
    tree = flatten(sink, [{"name": "d", "type": "dir", "mode": 0o755, "uid": 1,
                           "xattrs": {"user.a": "1"}}, {"name": "d/f", "data": b"f"}],
                   [{"name": "d", "type": "dir", "mode": 0o700, "uid": 2, "mtime": 5}])
    d = tree.lookup(b"d")
    assert (d.mode, d.uid, d.mtime, d.xattrs) == (0o700, 2, 5, None)
    assert tree.lookup(b"d/f") is not None


def test_hard_links_within_and_across_layers(sink):
    tree = flatten(sink,
                   [{"name": "bin/a", "data": b"A", "mode": 0o4755, "uid": 3,
                     "xattrs": {"user.x": "y"}},
                    {"name": "bin/b", "type": "hardlink", "target": "bin/a"},
                    {"name": "lib/c", "data": b"C"}],
                   [{"name": "bin/c2", "type": "hardlink", "target": "lib/c"},
                    {"name": "lib/c3", "type": "hardlink", "target": "lib/c"},
                    {"name": "bin/a3", "type": "hardlink", "target": "bin/b"}],
                   [{"name": "bin/.wh.a"}])
    got = listing(sink, tree)
    a3, b = got[b"bin/a3"], got[b"bin/b"]
    assert (a3.mode, a3.uid, a3.xattrs, a3.sha256) == (0o4755, 3, ((b"user.x", b"y"),), sha(b"A"))
    assert a3.link == b.link is not None  # the group survives the whiteout of bin/a
    assert got[b"bin/c2"].link == got[b"lib/c"].link == got[b"lib/c3"].link is not None
    assert got[b"bin/c2"].link != b.link and got[b"bin/c2"].sha256 == sha(b"C")


def test_a_hard_link_to_a_missing_target_names_layer_and_path(sink):
    with pytest.raises(ContainerError, match=r"layer sha256:[0-9a-f]{64}: hard link b'x' points "
                                             r"at b'gone', which is not there"):
        flatten(sink, [{"name": "gone", "data": b"g"}],
                [{"name": ".wh.gone"}, {"name": "x", "type": "hardlink", "target": "gone"}])
    with pytest.raises(ContainerError, match=r"points at b'd', which is a directory"):
        flatten(sink, [{"name": "d", "type": "dir"}],
                [{"name": "x", "type": "hardlink", "target": "d"}])


def test_a_hard_link_sees_the_lower_file_before_its_own_layer_replaces_it(sink):
    tree = flatten(sink, [{"name": "f", "data": b"old"}],
                   [{"name": "l", "type": "hardlink", "target": "f"},
                    {"name": "f", "data": b"new"}])
    got = listing(sink, tree)
    assert got[b"l"].sha256 == sha(b"old") and got[b"f"].sha256 == sha(b"new")
    assert got[b"l"].link != got[b"f"].link


def test_made_up_parents_and_files_in_the_way(sink):
    tree = flatten(sink, [{"name": "p", "data": b"file"}], [{"name": "p/q/r", "data": b"r"}])
    p = tree.lookup(b"p")
    assert (p.kind, p.mode, p.uid, p.gid, p.mtime) == (Kind.DIR, 0o755, 0, 0, 0)


def test_copies_are_independent(sink):
    base = flatten(sink, [{"name": "d/f", "data": b"f"}, {"name": "d/g", "data": b"g"},
                          {"name": "h", "data": b"h"}])
    before = listing(sink, base)
    a = base.copy()
    flatten(sink, [{"name": "d/.wh.f"}, {"name": "d", "type": "dir", "mode": 0o700},
                   {"name": "h2", "type": "hardlink", "target": "h"}], tree=a)
    b = base.copy()
    flatten(sink, [{"name": "d/.wh..wh..opq"}, {"name": "d/new", "data": b"n"}], tree=b)
    flatten(sink, [{"name": "x", "data": b"x"}, {"name": "h", "data": b"H"}], tree=base)
    assert paths(a) == [b"", b"d", b"d/g", b"h", b"h2"] and a.lookup(b"d").mode == 0o700
    assert a.lookup(b"h").link == a.lookup(b"h2").link is not None
    assert paths(b) == [b"", b"d", b"d/new", b"h"] and b.lookup(b"h").link is None
    after = listing(sink, base)
    assert after[b"h"].sha256 == sha(b"H") and b"x" in after
    del after[b"x"], after[b"h"], before[b"h"]
    assert after == before


def test_walk_order_is_bytewise(sink):
    tree = flatten(sink, [{"name": n, "data": b""} for n in ("b", "a/z", "a-", "\xe9", "B")])
    assert paths(tree) == [b"", b"B", b"a", b"a/z", b"a-", b"b", "\xe9".encode()]


def test_the_root_takes_a_dot_members_attributes(sink):
    tree = flatten(sink, [{"name": "./", "type": "dir", "mode": 0o700, "uid": 4}])
    assert (tree.root.mode, tree.root.uid) == (0o700, 4)


def test_chain_ids():
    d = ["sha256:" + c * 64 for c in "abc"]
    first = d[0]
    second = "sha256:" + hashlib.sha256(f"{first} {d[1]}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {d[2]}".encode()).hexdigest()
    assert chain_ids(d) == [first, second, third]
    assert chain_ids([]) == []
    with pytest.raises(ContainerError, match="DiffID of layer 1"):
        chain_ids([d[0], "sha256:XYZ"])
