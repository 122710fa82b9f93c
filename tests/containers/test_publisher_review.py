"""A review of the container publisher's orchestration: idempotency in odd sequences, dry runs
that plan what the real run does, GC of pruned names, hostile ``images.json`` and public
names refused by name with nothing published, the command line's one-line errors, and the
state read under the publish lock."""

from __future__ import annotations

import json
import sys

import pytest

from containers.ocifixture import ImageSpec, Layer, Layout, base_members
from pycvmfs.containers import layout
from pycvmfs.containers.publisher import Wanted
from pycvmfs.containers.service import (
    ContainerSettings,
    container_publisher,
    ingest_images,
    list_images,
    resolve_images,
)
from pycvmfs.containers.thin import thin_path
from pycvmfs.errors import ContainerError

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]
DAY = 86400


def _settings(tmp_path) -> ContainerSettings:
    return ContainerSettings(cache_dir=str(tmp_path / "blobs"))


def _spec(note: str, compression: str = "gzip") -> ImageSpec:
    return ImageSpec([Layer(base_members(), compression),
                      Layer([{"name": "etc/note", "data": note.encode()}], compression)])


@pytest.fixture
def images(tmp_path):
    """``oci:`` texts of a layout with tags a, b (a shared base layer) and a-plain (a's
    layers uncompressed: other digests, the same DiffIDs and config)."""
    lay = Layout(tmp_path / "img")
    lay.add(_spec("a"), "a")
    lay.add(_spec("b"), "b")
    lay.add(_spec("a", "none"), "a-plain")
    return {t: f"oci:{tmp_path}/img:{t}" for t in ("a", "b", "a-plain")}


def _ingest(pub, texts, tmp_path, **kw):
    return ingest_images(pub, texts, _settings(tmp_path), **kw)


def _wanted(pub, texts, names, tmp_path, outputs=None) -> list[Wanted]:
    from pycvmfs.containers.blobcache import BlobCache
    from pycvmfs.containers.publisher import DEFAULT_OUTPUTS

    return resolve_images(texts, _settings(tmp_path), names=names,
                          outputs=outputs or DEFAULT_OUTPUTS,
                          cache=BlobCache(str(tmp_path / "blobs")))


def _state(pub, tmp_path) -> dict:
    view = pub.open_reader(tmp_path / "rstate").open_revision()
    try:
        return json.loads(view.read_bytes("/" + layout.images_index()))
    finally:
        view.close()


def _exists(pub, tmp_path, path: str) -> bool:
    view = pub.open_reader(tmp_path / "rexists").open_revision()
    try:
        return view.exists("/" + path)
    finally:
        view.close()


def _put_index(pub, doc) -> None:
    """Publish ``doc`` (bytes or JSON-able) as ``.metadata/images.json``."""
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pub.transaction() as txn:
        txn.remove(layout.images_index(), missing_ok=True)
        txn.add_file(layout.images_index(), data)


# -- idempotency -----------------------------------------------------------------------------

def test_two_names_for_one_config_both_record_the_flat_size(cpub, images, tmp_path):
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/one:1"])
    _ingest(cpub, [images["a"], images["a"]], tmp_path, names=["x.org/two:1", "x.org/three:1"])
    sizes = {r["name"]: r["flat_size"] for r in list_images(cpub)}
    assert len(set(sizes.values())) == 1 and sizes["x.org/one:1"] > 0, sizes
    again = _ingest(cpub, [images["a"], images["a"]], tmp_path,
                    names=["x.org/two:1", "x.org/three:1"])
    assert again.revision is None


def test_an_aliased_layer_is_unchanged_on_the_second_run(cpub, images, tmp_path):
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:gz"])
    first = _ingest(cpub, [images["a-plain"]], tmp_path, names=["x.org/a:plain"])
    assert first.layers_new == [] and len(first.layers_reused) == 2
    second = _ingest(cpub, [images["a-plain"]], tmp_path, names=["x.org/a:plain"])
    assert second.revision is None and second.unchanged == ["x.org/a:plain"]
    assert second.layers_reused == [] and second.layers_new == []


def test_outputs_changed_between_runs_then_a_second_run_publishes_nothing(cpub, images,
                                                                          tmp_path):
    flat_only = frozenset({"flat", "podman"})
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"], outputs=flat_only)
    with_thin = frozenset({"flat", "layers", "podman", "thin"})
    more = _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"], outputs=with_thin)
    assert more.updated == ["x.org/a:1"] and len(more.layers_new) == 2
    assert _exists(cpub, tmp_path, thin_path("x.org/a:1"))
    again = _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"], outputs=with_thin)
    assert again.revision is None
    fewer = _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"], outputs=flat_only)
    assert fewer.revision is not None and not _exists(cpub, tmp_path, thin_path("x.org/a:1"))
    assert _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"],
                   outputs=flat_only).revision is None


# -- GC of pruned names ----------------------------------------------------------------------

def test_a_pruned_name_loses_its_link_alias_metadata_and_thin_descriptor(cpub, images,
                                                                         tmp_path):
    outputs = frozenset({"flat", "layers", "podman", "thin"})
    cp = container_publisher(cpub)
    cp.run(_wanted(cpub, [images["a"], images["b"]], ["x.org/a:1", "x.org/b:1"], tmp_path,
                   outputs))
    alias = _state(cpub, tmp_path)["images"]["x.org/b:1"]["alias"]
    report = cp.run(_wanted(cpub, [images["a"]], ["x.org/a:1"], tmp_path, outputs), prune=True)
    assert report.removed == ["x.org/b:1"]
    for gone in ("x.org/b:1", alias, layout.metadata_dir("x.org/b:1"), thin_path("x.org/b:1")):
        assert not _exists(cpub, tmp_path, gone), gone
    assert _exists(cpub, tmp_path, thin_path("x.org/a:1"))


def test_nothing_is_pruned_or_collected_when_the_state_is_incomplete(cpub, images, tmp_path):
    cp = container_publisher(cpub, now=lambda: 1_000_000_000)
    cp.run(_wanted(cpub, [images["a"], images["b"]], ["x.org/a:1", "x.org/b:1"], tmp_path))
    later = container_publisher(cpub, now=lambda: 1_000_000_000 + 30 * DAY)
    report = later.run(_wanted(cpub, [images["a"]], ["x.org/a:1"], tmp_path), prune=True,
                       complete=False, grace_days=0)
    assert report.removed == [] and report.retired == [] and report.deleted == []
    assert report.revision is None and _exists(cpub, tmp_path, "x.org/b:1")


# -- dry runs --------------------------------------------------------------------------------

def test_a_dry_run_plans_what_the_real_run_does_and_writes_nothing(make_cpub, images,
                                                                  tmp_path):
    dry_pub, real_pub = make_cpub(), make_cpub()
    texts = [images["a"], images["b"], images["a"]]
    names = ["x.org/a:1", "x.org/b:1", "x.org/a-again:1"]
    head = dry_pub.head().revision
    dry = _ingest(dry_pub, texts, tmp_path, names=names, dry_run=True)
    assert dry_pub.head().revision == head
    real = _ingest(real_pub, texts, tmp_path, names=names)
    fields = ("added", "updated", "unchanged", "flats_new", "layers_new", "layers_reused")
    for field in fields:
        assert sorted(getattr(dry, field)) == sorted(getattr(real, field)), field
    assert len(real.layers_new) == 3 and len(real.flats_new) == 2
    # the plain twin of a (layers aliased, nothing new) and b moved onto a's config
    _ingest(dry_pub, texts, tmp_path, names=names)
    texts, names = [images["a-plain"], images["a"]], ["x.org/plain:1", "x.org/b:1"]
    dry = _ingest(dry_pub, texts, tmp_path, names=names, dry_run=True)
    real = _ingest(real_pub, texts, tmp_path, names=names)
    for field in fields:
        assert sorted(getattr(dry, field)) == sorted(getattr(real, field)), field
    assert real.layers_new == [] and len(real.layers_reused) == 2


# -- hostile or odd state --------------------------------------------------------------------

BAD_NAMES = ["podmanStore/x:1", ".flat/x:1", ".metadata/images.json", ".cvmfs/x:1",
             ".layers/x:1", "/x.org/abs:1", "x.org/../up:1", "x.org//y:1", "x.org/./y:1",
             "x.org/y:1/", "noslash:1", "x.org/notag", "x.org/a:1/b:2", "x.org/" + "l" * 256 + ":1",
             "x.org/" + "l" * 200 + ":1"]  # the last: its @sha256 alias is 272 bytes


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_public_name_that_cannot_be_a_repository_path_is_refused_by_name(cpub, images,
                                                                          tmp_path, name):
    head = cpub.head().revision
    for dry_run in (True, False):
        with pytest.raises(ContainerError, match=r"public name|alias") as err:
            _ingest(cpub, [images["a"]], tmp_path, names=[name], dry_run=dry_run)
        assert repr(name)[:30] in str(err.value)
    assert cpub.head().revision == head


def test_a_name_below_a_symlink_or_a_file_is_refused_and_nothing_written_through(cpub, images,
                                                                                tmp_path):
    with cpub.transaction() as txn:
        txn.symlink("x.org", ".flat")
        txn.add_file("y.org", b"a file")
        txn.symlink(".metadata/z.org", "../elsewhere")
    head = cpub.head().revision
    for name, parent in (("x.org/a:1", "/x.org is a symbolic link"),
                         ("y.org/a:1", "/y.org is not a directory"),
                         ("z.org/a:1", "/.metadata/z.org is a symbolic link")):
        for dry_run in (True, False):
            with pytest.raises(ContainerError, match=f"{name}: {parent}"):
                _ingest(cpub, [images["a"]], tmp_path, names=[name], dry_run=dry_run)
        assert cpub.head().revision == head
    assert not _exists(cpub, tmp_path, layout.FLAT + "/a:1")


def _valid_index(cpub, images, tmp_path) -> dict:
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"])
    return _state(cpub, tmp_path)


def _tampered(doc: dict, case: str) -> dict | bytes:
    rec = doc["images"]["x.org/a:1"]
    if case == "not json":
        return b"{not json"
    if case == "a list":
        return b"[]"
    if case == "retired /etc":
        doc["retired"] = {"etc": 0}
    elif case == "retired .cvmfs":
        doc["retired"] = {".flat/../.cvmfs": 0}
    elif case == "name ..":
        doc["images"] = {"../../x:1": dict(rec, name="../../x:1")}
    elif case == "name podmanStore":
        doc["images"] = {"podmanStore/x:1": dict(rec, name="podmanStore/x:1")}
    elif case == "alias absolute":
        rec["alias"] = "/etc@sha256:" + "0" * 64
    elif case == "layers not a list":
        rec["layers"] = 5
    elif case == "published a string":
        rec["published"] = "yesterday"
    elif case == "outputs a string":
        rec["outputs"] = "flat"
    elif case == "config not a digest":
        rec["config_digest"] = "sha256:../../etc"
    elif case == "alias target":
        doc["aliases"] = {rec["layers"][0]: "etc"}
    elif case == "record for another name":
        rec["name"] = "x.org/other:1"
    return doc


TAMPERED = ["not json", "a list", "retired /etc", "retired .cvmfs", "name ..",
            "name podmanStore", "alias absolute", "layers not a list", "published a string",
            "outputs a string", "config not a digest", "alias target",
            "record for another name"]


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_images_json_is_refused_by_name_and_nothing_published(cpub, images,
                                                                        tmp_path, case):
    doc = _valid_index(cpub, images, tmp_path)
    with cpub.transaction() as txn:
        txn.add_file("etc/keep", b"not the publisher's")
    _put_index(cpub, _tampered(doc, case))
    head = cpub.head().revision
    later = container_publisher(cpub, now=lambda: 2_000_000_000)
    with pytest.raises(ContainerError, match=r"\.metadata/images\.json"):
        later.collect(grace_days=0, include_unknown=True)
    with pytest.raises(ContainerError, match=r"\.metadata/images\.json"):
        later.run(_wanted(cpub, [images["b"]], ["x.org/b:1"], tmp_path), prune=True,
                  grace_days=0)
    assert cpub.head().revision == head and _exists(cpub, tmp_path, "etc/keep")
