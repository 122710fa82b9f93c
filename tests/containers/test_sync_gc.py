"""Wish-list sync as one transaction: idempotent, tag moves retarget names, the grace period
holds flats and layers, a registry that cannot be listed deletes nothing, kill -9 at any
point leaves the previous revision; the same image from three sources gives one flat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from containers.conftest import listing_from_view
from containers.ocifixture import ImageSpec, Layer, Layout, base_members
from containers.registry_server import Registry
from containers.treecompare import compare
from pycvmfs.containers import layout
from pycvmfs.containers.service import ContainerSettings, ingest_images, sync_wishlist
from pycvmfs.containers.wishlist import parse_wishlist
from pycvmfs.errors import ContainerError

DAY = 86400
CLI = [sys.executable, "-m", "pycvmfs.cli.main"]


def _spec(note: str, extra: int = 0) -> ImageSpec:
    top = [{"name": "etc/note", "data": note.encode()}]
    top += [{"name": f"data/f{i}", "data": os.urandom(200_000)} for i in range(extra)]
    return ImageSpec([Layer(base_members()), Layer(top)], entrypoint=["/usr/bin/hello"])


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.stop()


def _settings(tmp_path) -> ContainerSettings:
    return ContainerSettings(cache_dir=str(tmp_path / "blobs"), insecure=True)


def _wishlist(pub, registry, *inputs: str):
    lines = "\n".join(f"  - 'https://{registry.host}/{i}'" for i in inputs)
    return parse_wishlist(f"version: 1\nuser: cvmfsunpacker\ncvmfs_repo: '{pub.fqrn}'\n"
                          f"output_format: '$(scheme)://{registry.host}/thin/$(image)'\n"
                          f"input:\n{lines}\n", "test wish list")


def test_sync_publishes_globbed_tags_once_and_a_second_run_nothing(cpub, registry, tmp_path):
    lay = Layout(tmp_path / "img")
    for tag in ("1.0", "1.1", "2.0"):
        lay.add(_spec(tag), tag)
        registry.push(tmp_path / "img", tag, "hep/app")
    wl = _wishlist(cpub, registry, "hep/app:1.*")
    first = sync_wishlist(cpub, wl, _settings(tmp_path))
    host = registry.host
    assert first.added == [f"{host}/hep/app:1.0", f"{host}/hep/app:1.1"]
    assert first.revision == cpub.head().revision
    assert len(first.layers_new) == 3  # the base layer once, one top layer per tag
    second = sync_wishlist(cpub, wl, _settings(tmp_path))
    assert second.revision is None and second.layers_new == []
    assert sorted(second.unchanged) == first.added


def test_a_moved_tag_retires_the_old_flat_until_the_grace_period_ends(cpub, registry,
                                                                      tmp_path):
    lay = Layout(tmp_path / "img")
    lay.add(_spec("old"), "old")
    lay.add(_spec("new"), "new")
    registry.push(tmp_path / "img", "old", "hep/app", "prod")
    wl = _wishlist(cpub, registry, "hep/app:prod")
    t0 = time.time()
    sync_wishlist(cpub, wl, _settings(tmp_path), now=lambda: t0)
    old_flat = cpub.open_reader(tmp_path / "r0").open_revision().readlink(
        f"/{registry.host}/hep/app:prod")
    registry.push(tmp_path / "img", "new", "hep/app", "prod")  # the tag moves
    moved = sync_wishlist(cpub, wl, _settings(tmp_path), now=lambda: t0 + DAY)
    assert moved.updated == [f"{registry.host}/hep/app:prod"] and moved.deleted == []
    flat_path = os.path.normpath(os.path.join(registry.host + "/hep", old_flat))
    assert flat_path in moved.retired
    view = cpub.open_reader(tmp_path / "r1").open_revision()
    assert view.readlink(f"/{registry.host}/hep/app:prod") != old_flat
    assert view.exists("/" + flat_path)  # still there for jobs that resolved it before
    early = sync_wishlist(cpub, wl, _settings(tmp_path), now=lambda: t0 + 7 * DAY)
    assert early.deleted == [] and early.revision is None
    late = sync_wishlist(cpub, wl, _settings(tmp_path), now=lambda: t0 + 8.5 * DAY)
    assert flat_path in late.deleted and late.revision is not None
    view = cpub.open_reader(tmp_path / "r2").open_revision()
    assert not view.exists("/" + flat_path)
    assert view.read_bytes(f"/{registry.host}/hep/app:prod/etc/note") == b"new"


def test_a_registry_that_cannot_be_reached_deletes_nothing(cpub, registry, tmp_path):
    lay = Layout(tmp_path / "img")
    lay.add(_spec("a"), "a")
    lay.add(_spec("b"), "b")
    registry.push(tmp_path / "img", "a", "hep/one")
    registry.push(tmp_path / "img", "b", "hep/two")
    settings = _settings(tmp_path)
    sync_wishlist(cpub, _wishlist(cpub, registry, "hep/one:a", "hep/two:*"), settings)
    head = cpub.head().revision
    registry.stop()  # the registry goes down; the wish list no longer names hep/one
    settings.credentials = None
    report = sync_wishlist(cpub, _wishlist(cpub, registry, "hep/two:*"),
                           ContainerSettings(cache_dir=settings.cache_dir, insecure=True),
                           grace_days=0)
    assert report.removed == [] and report.deleted == []
    assert any("hep/two" in w for w in report.warnings)
    assert any("not removing" in w for w in report.warnings)
    assert cpub.head().revision == head
    view = cpub.open_reader(tmp_path / "r").open_revision()
    assert view.exists(f"/{registry.host}/hep/one:a") and view.exists(
        f"/{registry.host}/hep/two:b")


def test_a_corrupt_blob_in_the_registry_is_refused_and_nothing_published(cpub, registry,
                                                                         tmp_path):
    lay = Layout(tmp_path / "img")
    w = lay.add(_spec("x"), "x")
    ref = registry.push(tmp_path / "img", "x", "hep/bad")
    blob = registry.blob_path(w.layer_digests[1])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    head = cpub.head().revision
    with pytest.raises(ContainerError, match=w.layer_digests[1][7:19]):
        ingest_images(cpub, [f"docker://{ref}"], _settings(tmp_path))
    assert cpub.head().revision == head
    assert not list((tmp_path / "blobs").rglob(w.layer_digests[1][7:]))


def _flat_rows(pub, tmp_path, name):
    reader = pub.open_reader(tmp_path / f"r-{pub.config.storage.name}-{len(name)}")
    view = reader.open_revision()
    link = view.readlink("/" + name)
    flat = os.path.normpath(os.path.join(os.path.dirname("/" + name), link))
    try:
        return flat, listing_from_view(view, flat)
    finally:
        view.close()
        reader.close()


def test_the_same_image_from_a_layout_an_archive_and_a_registry_gives_one_flat(
        make_cpub, registry, tmp_path):
    lay = Layout(tmp_path / "img")
    lay.add(_spec("same"), "1.0")
    archive = tmp_path / "img.tar"
    res = subprocess.run(["skopeo", "--insecure-policy", "copy", f"oci:{tmp_path}/img:1.0",
                          f"docker-archive:{archive}:example.org/hep/same:1.0"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    ref = registry.push(tmp_path / "img", "1.0", "hep/same")
    sources = [(f"oci:{tmp_path}/img:1.0", "example.org/hep/same:1.0"),
               (f"docker-archive:{archive}", "example.org/hep/same:1.0"),
               (f"docker://{ref}", "example.org/hep/same:1.0")]
    listings = []
    for text, name in sources:
        pub = make_cpub()
        ingest_images(pub, [text], _settings(tmp_path), names=[name])
        listings.append(_flat_rows(pub, tmp_path, name))
    assert len({flat for flat, _ in listings}) == 1
    for _flat, rows in listings[1:]:
        assert compare(listings[0][1], rows, mtimes=True) == []
    # into one repository: the second and third sources add no flat
    one = make_cpub()
    reports = [ingest_images(one, [text], _settings(tmp_path), names=[f"x.org/s:{i}"])
               for i, (text, _n) in enumerate(sources)]
    assert [len(r.flats_new) for r in reports] == [1, 0, 0]
    # the archive's plain layers have other digests but the same DiffIDs: not read again,
    # each a symlink to the tree of its gzip twin (§7.4), which GC keeps while it is used
    assert reports[1].layers_new == [] and len(reports[1].layers_reused) == 2
    assert reports[2].layers_new == []
    view = one.open_reader(tmp_path / "r-one").open_revision()
    for d in reports[1].layers_reused:
        link = "/" + layout.layer_dir(d)
        assert view.lstat(link).is_symlink
        assert view.exists(link + "/layerfs/etc/note") or view.exists(link + "/layerfs/etc")
    state = json.loads(view.read_bytes("/.metadata/images.json"))
    assert sorted(state["aliases"]) == sorted(reports[1].layers_reused)
    view.close()
    again = ingest_images(one, [sources[1][0]], _settings(tmp_path), names=["x.org/s:1"])
    assert again.revision is None


def test_kill_9_during_an_ingest_leaves_the_previous_revision(cpub, tmp_path):
    lay = Layout(tmp_path / "img")
    lay.add(_spec("big", extra=150), "1.0")  # ~30 MB of incompressible files
    head = cpub.head().revision
    cmd = [*CLI, "container", "ingest", cpub.fqrn, f"oci:{tmp_path}/img:1.0",
           "--config-dir", str(cpub.config.config_dir),
           "--cache-dir", str(tmp_path / "blobs")]
    for delay in (0.3, 0.8, 1.5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if cpub.head().revision != head:  # it finished before the kill: a complete publish
            break
        assert cpub.head().revision == head
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] is not None or cpub.head().revision != head
    check = subprocess.run([*CLI, "check", cpub.fqrn, "--config-dir",
                            str(cpub.config.config_dir)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_gc_removes_ducc_leftovers_on_request(cpub, tmp_path):
    with cpub.transaction() as txn:
        txn.add_file(".chains/ab/abcd/etc/x", b"x")
        txn.add_file(".dirty-chains/abcd", b"")
        txn.add_file(".metadata/remove-schedule.json", b"[]")
    res = subprocess.run([*CLI, "container", "gc", cpub.fqrn, "--ducc-leftovers", "--json",
                          "--config-dir", str(cpub.config.config_dir)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(res.stdout)["deleted"]) == sorted(
        [layout.CHAINS, layout.DIRTY_CHAINS, ".metadata/remove-schedule.json"])
    view = cpub.open_reader(tmp_path / "r").open_revision()
    assert not view.exists("/.chains") and not view.exists("/.dirty-chains")
