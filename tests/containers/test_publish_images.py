"""Images published into a repository end to end: the flat tree read back through the client
and through the FUSE mount equals umoci's unpack, layers stack in kernel overlayfs to the same
tree, a second run publishes nothing, and every source gives the same flat."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest

from containers.conftest import listing_from_view, require_tool, umoci_rootfs, without
from containers.ocifixture import ImageSpec, Layer, Layout, base_members, section6_image
from containers.treecompare import compare, listing_from_disk
from pycvmfs.containers import layout
from pycvmfs.containers.apptainer import apptainer_files
from pycvmfs.containers.service import ContainerSettings, ingest_images, list_images

from helpers.fuse import needs_fuse

GENERATED_ONLY = {b".cvmfscatalog"}


def _ingest(pub, texts, tmp_path, **kw):
    return ingest_images(pub, texts, ContainerSettings(cache_dir=str(tmp_path / "blobs")), **kw)


def _generated(config_json: dict, oracle: dict) -> set[bytes]:
    """What we add to a flat that the image itself does not have (Apptainer files)."""
    return {g.path.encode() for g in apptainer_files(config_json)
            if g.path.encode() not in oracle} | GENERATED_ONLY


def _flat_listing(pub, tmp_path, name: str):
    reader = pub.open_reader(tmp_path / "rc")
    view = reader.open_revision()
    target = view.readlink("/" + name)
    flat = os.path.normpath(os.path.join(os.path.dirname("/" + name), target))
    return view, reader, flat


@pytest.fixture
def section6(tmp_path):
    lay = Layout(tmp_path / "img")
    lay.add(section6_image(), "1.0")
    return tmp_path / "img"


def test_the_flat_tree_read_through_the_client_equals_umoci_unpack(cpub, section6, tmp_path):
    report = _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    assert report.revision is not None and report.added == ["localhost/img:1.0"]
    oracle = listing_from_disk(umoci_rootfs(section6, "1.0", tmp_path / "bundle"))
    view, reader, flat = _flat_listing(cpub, tmp_path, "localhost/img:1.0")
    try:
        cfg = json.loads(view.read_bytes("/.metadata/localhost/img:1.0/config.json"))
        got = without(listing_from_view(view, flat), _generated(cfg, oracle))
    finally:
        view.close()
        reader.close()
    assert compare(oracle, got, same_directory_links_only=True) == []
    assert got[b"usr/bin/tool2"].mode == 0o4755  # survived the whiteout of its link partner
    assert b"opt/app/a.txt" not in got and b"etc/old.conf" not in got


@needs_fuse
def test_the_flat_tree_through_the_fuse_mount_equals_umoci_unpack(cpub, section6, tmp_path,
                                                                  mount_repo):
    _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    oracle = listing_from_disk(umoci_rootfs(section6, "1.0", tmp_path / "bundle"))
    m = mount_repo(cpub)
    flat_dir = m.mp / "localhost" / "img:1.0"
    got = listing_from_disk(os.path.realpath(flat_dir))
    cfg = json.loads((m.mp / ".metadata/localhost/img:1.0/config.json").read_bytes())
    assert compare(oracle, without(got, _generated(cfg, oracle)),
                   same_directory_links_only=True) == []


@needs_fuse
def test_the_layers_stacked_by_kernel_overlayfs_give_the_flat_tree(cpub, section6, tmp_path,
                                                                   mount_repo):
    """What the containerd snapshotter does: each .layers/<hh>/<hex>/layerfs a lowerdir."""
    _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    m = mount_repo(cpub)
    manifest = json.loads((m.mp / ".metadata/localhost/img:1.0/manifest.json").read_bytes())
    lowers = [str(m.mp / layout.layer_root(d["digest"])) for d in manifest["layers"]]
    merged = tmp_path / "merged"
    merged.mkdir()
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                          "lowerdir=" + ":".join(reversed(lowers)), str(merged)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    try:
        stacked = listing_from_disk(merged, skip_vanished=True)
    finally:
        subprocess.run(["umount", str(merged)], check=False)
    oracle = listing_from_disk(umoci_rootfs(section6, "1.0", tmp_path / "bundle"))
    # the opaque marker for rootless (userxattr) overlay mounts is an ordinary user xattr to a
    # root mount, which interprets trusted.overlay.opaque instead; everything else must match
    assert stacked[b"opt/app"].xattrs == ((b"user.overlay.opaque", b"y"),)
    stacked[b"opt/app"] = dataclasses.replace(stacked[b"opt/app"], xattrs=())
    assert compare(without(oracle, {b""}), without(stacked, {b""}),
                   same_directory_links_only=True) == []


def test_a_second_run_with_the_same_inputs_publishes_nothing(cpub, section6, tmp_path):
    first = _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    head = cpub.head().revision
    second = _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    assert first.revision == head
    assert second.revision is None and cpub.head().revision == head
    assert second.unchanged == ["localhost/img:1.0"] and second.layers_new == []


def test_images_sharing_base_layers_store_them_once_and_reuse_them_later(cpub, tmp_path):
    lay = Layout(tmp_path / "img")
    base = Layer(base_members())
    lay.add(ImageSpec([base, Layer([{"name": "etc/a", "data": b"a\n"}])]), "a")
    lay.add(ImageSpec([base, Layer([{"name": "etc/b", "data": b"b\n"}])]), "b")
    lay.add(ImageSpec([base, Layer([{"name": "etc/c", "data": b"c\n"}])]), "c")
    one = _ingest(cpub, [f"oci:{tmp_path}/img:a", f"oci:{tmp_path}/img:b"], tmp_path)
    assert len(one.layers_new) == 3 and one.revision is not None
    assert len(one.flats_new) == 2
    later = _ingest(cpub, [f"oci:{tmp_path}/img:c"], tmp_path)
    assert len(later.layers_new) == 1 and len(later.layers_reused) == 1
    view, reader, flat = _flat_listing(cpub, tmp_path, "localhost/img:c")
    try:  # the flat built from a layer read back from its catalog is complete
        assert view.read_bytes(flat + "/etc/c") == b"c\n"
        assert view.read_bytes(flat + "/etc/passwd").startswith(b"root:")
    finally:
        view.close()
        reader.close()
    names = [r["name"] for r in list_images(cpub)]
    assert names == ["localhost/img:a", "localhost/img:b", "localhost/img:c"]


def test_an_image_flattened_from_published_layers_equals_one_read_fresh(make_cpub, section6,
                                                                        tmp_path):
    """Layers loaded back from their catalogs (whiteouts, opaque dirs, hard links) flatten
    exactly like layers read from the tarballs."""
    fresh, reused = make_cpub(), make_cpub()
    _ingest(fresh, [f"oci:{section6}:1.0"], tmp_path)
    lay = Layout(tmp_path / "other")
    spec = section6_image()
    lay.add(ImageSpec(spec.layers[:2]), "two")
    lay.add(spec, "three")
    _ingest(reused, [f"oci:{tmp_path}/other:two"], tmp_path)
    report = _ingest(reused, [f"oci:{tmp_path}/other:three"], tmp_path)
    assert len(report.layers_reused) == 2 and len(report.layers_new) == 1
    listings = []
    for pub, name in ((fresh, "localhost/img:1.0"), (reused, "localhost/other:three")):
        view, reader, flat = _flat_listing(pub, tmp_path / name.replace("/", "_"), name)
        try:
            listings.append(listing_from_view(view, flat))
        finally:
            view.close()
            reader.close()
    assert compare(listings[0], listings[1], mtimes=True) == []


def test_a_public_name_that_is_not_a_symlink_is_refused_and_nothing_published(cpub, section6,
                                                                              tmp_path):
    with cpub.transaction() as txn:
        txn.add_file("localhost/img:1.0", b"a file where the name would go")
    head = cpub.head().revision
    from pycvmfs.errors import ContainerError

    with pytest.raises(ContainerError, match="not a symbolic link"):
        _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    assert cpub.head().revision == head


def test_the_podman_store_and_aliases_point_at_the_flat(cpub, section6, tmp_path):
    _ingest(cpub, [f"oci:{section6}:1.0"], tmp_path)
    view, reader, flat = _flat_listing(cpub, tmp_path, "localhost/img:1.0")
    try:
        images = json.loads(view.read_bytes("/podmanStore/overlay-images/images.json"))
        state = json.loads(view.read_bytes("/.metadata/images.json"))
        alias = state["images"]["localhost/img:1.0"]["alias"]
        assert [i["names"] for i in images] == [["localhost/img:1.0", alias]]
        layer_id = images[0]["layer"]
        diff = f"/podmanStore/overlay/{layer_id}/diff"
        target = os.path.normpath(os.path.join(os.path.dirname(diff), view.readlink(diff)))
        assert target == flat
        assert alias.startswith("localhost/img@sha256:")
        assert os.path.normpath(os.path.join("/localhost", view.readlink("/" + alias))) == flat
    finally:
        view.close()
        reader.close()


def test_require_tool_names_the_missing_tool():
    with pytest.raises(pytest.fail.Exception,
                       match=r"surely-not-a-real-tool-pycvmfs.*tools/test\.sh"):
        require_tool("surely-not-a-real-tool-pycvmfs")


def test_a_multi_architecture_image_gets_one_flat_and_one_name_per_platform(cpub, tmp_path):
    lay = Layout(tmp_path / "multi")
    specs = [ImageSpec([Layer([{"name": "etc/arch", "data": arch.encode()}])], architecture=arch,
                       variant=variant)
             for arch, variant in (("amd64", ""), ("arm64", "v8"), ("ppc64le", ""))]
    lay.add_multi(specs, "1.0")
    from pycvmfs.containers.model import Platform

    settings = ContainerSettings(cache_dir=str(tmp_path / "blobs"),
                                 platforms=[Platform.parse("linux/amd64"),
                                            Platform.parse("linux/arm64")])
    report = ingest_images(cpub, [f"oci:{tmp_path}/multi:1.0"], settings)
    assert report.added == ["localhost/multi:1.0", "localhost/multi:1.0-linux-arm64-v8"]
    assert len(report.flats_new) == 2
    view, reader, flat = _flat_listing(cpub, tmp_path, "localhost/multi:1.0-linux-arm64-v8")
    try:
        assert view.read_bytes(flat + "/etc/arch") == b"arm64"
        assert view.read_bytes("/localhost/multi:1.0/etc/arch") == b"amd64"
    finally:
        view.close()
        reader.close()
    rows = {r["name"]: r["platform"] for r in list_images(cpub)}
    assert rows == {"localhost/multi:1.0": "linux/amd64",
                    "localhost/multi:1.0-linux-arm64-v8": "linux/arm64/v8"}
    from pycvmfs.errors import ContainerError

    with pytest.raises(ContainerError, match="s390x"):
        ingest_images(cpub, [f"oci:{tmp_path}/multi:1.0"],
                      ContainerSettings(cache_dir=str(tmp_path / "blobs"),
                                        platforms=[Platform.parse("linux/s390x")]))


def test_a_layer_that_sets_the_root_attributes_keeps_them_when_read_back(cpub, tmp_path):
    lay = Layout(tmp_path / "img")
    base = Layer([{"name": "./", "type": "dir", "mode": 0o711, "uid": 7, "gid": 8,
                   "mtime": 1_600_000_000}, *base_members()])
    lay.add(ImageSpec([base]), "base")
    lay.add(ImageSpec([base, Layer([{"name": "etc/x", "data": b"x"}])]), "top")
    _ingest(cpub, [f"oci:{tmp_path}/img:base"], tmp_path)
    report = _ingest(cpub, [f"oci:{tmp_path}/img:top"], tmp_path)
    assert len(report.layers_reused) == 1
    for name in ("localhost/img:base", "localhost/img:top"):
        view, reader, flat = _flat_listing(cpub, tmp_path / name[-3:], name)
        try:
            root = view.lstat(flat).entry
            assert (root.mode & 0o7777, root.uid, root.gid, root.mtime) == (
                0o711, 7, 8, 1_600_000_000), name
        finally:
            view.close()
            reader.close()


def test_a_layer_ducc_ingested_with_wh_files_is_rewritten_with_overlay_whiteouts(cpub,
                                                                                 tmp_path):
    lay = Layout(tmp_path / "img")
    w = lay.add(ImageSpec([Layer(base_members()),
                           Layer([{"name": "etc/.wh.group"}, {"name": "etc/new", "data": b"n"}])]),
                "1.0")
    top = layout.layer_root(w.layer_digests[1])
    with cpub.transaction() as txn:  # what DUCC's tarball ingestion left there
        txn.add_file(f"{top}/etc/.wh.group", b"")
        txn.add_file(f"{top}/etc/new", b"n")
        txn.add_file(layout.layer_dir(w.layer_digests[1]) + "/.metadata/origin.json", b"{}")
    report = _ingest(cpub, [f"oci:{tmp_path}/img:1.0"], tmp_path)
    assert w.layer_digests[1] in report.layers_new
    reader = cpub.open_reader(tmp_path / "rc")
    view = reader.open_revision()
    try:
        assert not view.exists(f"/{top}/etc/.wh.group")
        assert view.lstat(f"/{top}/etc/group").entry.file_type == "chardev"
        assert not view.exists("/localhost/img:1.0/etc/group")
    finally:
        view.close()
        reader.close()


def test_an_image_whose_created_is_not_a_date_is_still_published(cpub, tmp_path):
    Layout(tmp_path / "img").add(ImageSpec([Layer(base_members())], created="last tuesday"),
                                 "1.0")
    report = _ingest(cpub, [f"oci:{tmp_path}/img:1.0"], tmp_path)
    assert report.added == ["localhost/img:1.0"]
    reader = cpub.open_reader(tmp_path / "rc")
    view = reader.open_revision()
    try:
        images = json.loads(view.read_bytes("/podmanStore/overlay-images/images.json"))
        assert images[0]["created"].endswith("Z")
    finally:
        view.close()
        reader.close()
