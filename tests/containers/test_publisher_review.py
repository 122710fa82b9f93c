"""A review of the container publisher's orchestration: idempotency in odd sequences, dry runs
that plan what the real run does, GC of pruned names, hostile ``images.json`` and public
names refused by name with nothing published, the command line's one-line errors, and the
state read under the publish lock."""

from __future__ import annotations

import json
import os
import subprocess
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
from pycvmfs.errors import ContainerError, PathError

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
    # the last name of a host: no empty directories are left behind
    cp.run(_wanted(cpub, [images["a"]], ["y.org/hep/a:1"], tmp_path, outputs), prune=True)
    for gone in ("x.org", ".metadata/x.org", ".thin/x.org"):
        assert not _exists(cpub, tmp_path, gone), gone
    assert _exists(cpub, tmp_path, ".metadata/images.json")


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
        txn.symlink(".metadata/w.org/a:1", "../../elsewhere")
    head = cpub.head().revision
    for name, parent in (("x.org/a:1", "/x.org is a symbolic link"),
                         ("y.org/a:1", "/y.org is not a directory"),
                         ("z.org/a:1", "/.metadata/z.org is a symbolic link"),
                         ("w.org/a:1", "/.metadata/w.org/a:1 is a symbolic link")):
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


# -- GC ----------------------------------------------------------------------------------------

PLAN_FIELDS = ("added", "updated", "unchanged", "removed", "flats_new", "layers_new",
               "layers_reused", "retired", "deleted")


class _Planned:
    """A container publisher whose every run is preceded by a dry run that must plan it."""

    def __init__(self, cp) -> None:
        self.cp = cp

    def run(self, wanted, **kw):
        dry = self.cp.run(wanted, dry_run=True, **kw)
        real = self.cp.run(wanted, **kw)
        for f in PLAN_FIELDS:
            assert sorted(getattr(dry, f)) == sorted(getattr(real, f)), f
        return real


def test_a_name_moved_back_within_the_grace_period_revives_its_flat(cpub, images, tmp_path):
    t0 = 1_000_000_000
    at = [t0]
    cp = _Planned(container_publisher(cpub, now=lambda: at[0]))
    cp.run(_wanted(cpub, [images["a"]], ["x.org/n:1"], tmp_path), prune=True)
    flat_a = layout.flat_path(_state(cpub, tmp_path)["images"]["x.org/n:1"]["config_digest"])
    at[0] = t0 + DAY
    moved = cp.run(_wanted(cpub, [images["b"]], ["x.org/n:1"], tmp_path), prune=True)
    assert flat_a in moved.retired and _state(cpub, tmp_path)["retired"][flat_a] == t0 + DAY
    at[0] = t0 + 3 * DAY
    back = cp.run(_wanted(cpub, [images["a"]], ["x.org/n:1"], tmp_path), prune=True,
                  grace_days=7)
    assert back.updated == ["x.org/n:1"] and back.flats_new == [] and back.layers_new == []
    state = _state(cpub, tmp_path)
    assert flat_a not in state["retired"] and _exists(cpub, tmp_path, flat_a)
    assert any(p.startswith(".flat/") for p in state["retired"])  # b's flat, now retired
    at[0] = t0 + 20 * DAY  # after the grace period: b's flat and top layer go, a stays
    gone = cp.run(_wanted(cpub, [images["a"]], ["x.org/n:1"], tmp_path), prune=True,
                  grace_days=7)
    assert len(gone.deleted) == 2 and _exists(cpub, tmp_path, flat_a)
    assert all(not _exists(cpub, tmp_path, p) for p in gone.deleted)
    assert _state(cpub, tmp_path)["retired"] == {}
    assert cp.run(_wanted(cpub, [images["a"]], ["x.org/n:1"], tmp_path), prune=True,
                  grace_days=7).revision is None


def test_the_twin_of_an_aliased_layer_is_kept_while_the_alias_is_used(cpub, images, tmp_path):
    at = [1_000_000_000]
    cp = _Planned(container_publisher(cpub, now=lambda: at[0]))
    cp.run(_wanted(cpub, [images["a"]], ["x.org/gz:1"], tmp_path))
    plain = cp.run(_wanted(cpub, [images["a-plain"]], ["x.org/plain:1"], tmp_path))
    twins = _state(cpub, tmp_path)["aliases"]
    assert sorted(twins) == sorted(plain.layers_reused)
    at[0] += 30 * DAY  # the gzip image's name goes; its layers hold the plain one's trees
    dropped = cp.run(_wanted(cpub, [images["a-plain"]], ["x.org/plain:1"], tmp_path),
                     prune=True, grace_days=1)
    assert dropped.removed == ["x.org/gz:1"] and dropped.deleted == []
    for gz in twins.values():
        assert _exists(cpub, tmp_path, layout.layer_root(gz) + "/etc")
    at[0] += 30 * DAY
    later = container_publisher(cpub, now=lambda: at[0]).collect(grace_days=1,
                                                                 include_unknown=True)
    assert later.revision is None and later.retired == []
    for d in twins:  # read through the symlink
        assert _exists(cpub, tmp_path, layout.layer_root(d) + "/etc")


def test_include_unknown_retires_only_what_no_image_uses(cpub, images, tmp_path):
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"])
    ducc_flat, ducc_layer = ".flat/ee/" + "e" * 64, ".layers/ee/" + "e" * 64
    with cpub.transaction() as txn:
        txn.add_file(ducc_flat + "/etc/x", b"DUCC's")
        txn.add_file(ducc_layer + "/layerfs/etc/x", b"DUCC's")
    at = [2_000_000_000]
    cp = container_publisher(cpub, now=lambda: at[0])
    first = cp.collect(grace_days=1, include_unknown=True)
    assert sorted(first.retired) == sorted([ducc_flat, ducc_layer]) and first.deleted == []
    at[0] += 2 * DAY
    second = cp.collect(grace_days=1, include_unknown=True)
    assert sorted(second.deleted) == sorted([ducc_flat, ducc_layer])
    assert not _exists(cpub, tmp_path, ducc_flat)
    assert _exists(cpub, tmp_path, "x.org/a:1/etc/note")
    assert cp.collect(grace_days=1, include_unknown=True).revision is None


def test_the_podman_store_follows_removed_names(cpub, images, tmp_path):
    cp = container_publisher(cpub)
    cp.run(_wanted(cpub, [images["a"], images["b"]], ["x.org/a:1", "x.org/b:1"], tmp_path))
    cp.run(_wanted(cpub, [images["a"]], ["x.org/a:1"], tmp_path), prune=True)
    view = cpub.open_reader(tmp_path / "rp").open_revision()
    try:
        listed = json.loads(view.read_bytes("/podmanStore/overlay-images/images.json"))
        assert [i["names"][0] for i in listed] == ["x.org/a:1"]
        assert listed[0]["id"] in view.listdir("/podmanStore/overlay-images")
        assert len([n for n in view.listdir("/podmanStore/overlay-images")
                    if not n.startswith("images.")]) == 1
        assert len([n for n in view.listdir("/podmanStore/overlay") if n != "l"]) == 1
        assert len(view.listdir("/podmanStore/overlay/l")) == 1
    finally:
        view.close()
    assert cp.run(_wanted(cpub, [images["a"]], ["x.org/a:1"], tmp_path),
                  prune=True).revision is None
    cp.run([], prune=True)
    assert not _exists(cpub, tmp_path, layout.PODMAN)
    assert cp.run([], prune=True).revision is None


# -- the state read under the lock -----------------------------------------------------------

def test_a_run_sees_what_another_publisher_object_published_meanwhile(cpub, images, tmp_path):
    from pycvmfs.publish.repository import Publisher

    cp = container_publisher(cpub)
    cp.run(_wanted(cpub, [images["a"]], ["x.org/a:1"], tmp_path))  # its reader cache warm
    other = Publisher.open(cpub.fqrn, config_dir=cpub.config.config_dir)
    _ingest(other, [images["b"]], tmp_path, names=["x.org/b:1"])
    cp.run(_wanted(cpub, [images["a-plain"]], ["x.org/c:1"], tmp_path))
    assert sorted(_state(cpub, tmp_path)["images"]) == ["x.org/a:1", "x.org/b:1", "x.org/c:1"]


# -- the command line: one line, exit 1 --------------------------------------------------------

def _cli(pub, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "container", *args, "--config-dir",
                           str(pub.config.config_dir)], capture_output=True, text=True,
                          timeout=300, check=False)


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and all(n in lines[0] for n in needles), res.stderr


def test_the_cli_reports_bad_input_in_one_line(cpub, images, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    wl = tmp_path / "wl.yaml"
    wl.write_text("version: 1\nuser: x\ncvmfs_repo: other.example.org\ninput:\n"
                  "  - 'https://r.example.org/a:1'\n")
    fqrn = cpub.fqrn
    _one_line_error(_cli(cpub, "ingest", fqrn, images["a"], "--name", "podmanStore/x:1"),
                    "pycvmfs: error:", "podmanStore/x:1", "reserved")
    _one_line_error(_cli(cpub, "ingest", fqrn, images["a"], "--name", "x.org/../y:1"),
                    "pycvmfs: error:", "x.org/../y:1")
    _one_line_error(_cli(cpub, "import-rootfs", fqrn, str(rootfs), "--name", "x.org/r:1",
                         "--entrypoint", "'unclosed"), "--entrypoint", "No closing quotation")
    _one_line_error(_cli(cpub, "import-rootfs", fqrn, str(rootfs), "--name", "x.org/r:1",
                         "--cmd", 'echo "'), "--cmd")
    _one_line_error(_cli(cpub, "sync", fqrn, str(wl)), "cvmfs_repo is other.example.org")
    _one_line_error(_cli(cpub, "webhook", fqrn, str(wl), "--listen", "127.0.0.1:99999"),
                    "--listen", "1-65535")
    res = _cli(cpub, "gc", fqrn, "--grace-period", "-1")
    assert res.returncode == 2 and "--grace-period" in res.stderr
    assert "Traceback" not in res.stderr
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"])
    doc = _state(cpub, tmp_path)
    doc["retired"] = {"etc": 0}
    _put_index(cpub, doc)
    head = cpub.head().revision
    for args in (("ls", fqrn), ("gc", fqrn, "--grace-period", "0"),
                 ("ingest", fqrn, images["b"], "--name", "x.org/b:1")):
        _one_line_error(_cli(cpub, *args), ".metadata/images.json", "'etc'")
    assert cpub.head().revision == head


def _ingest_cmd(pub, text: str, name: str, tmp_path, *extra: str) -> list[str]:
    return [*CLI, "container", "ingest", pub.fqrn, text, "--name", name, "--json",
            "--cache-dir", str(tmp_path / f"blobs-{name.replace('/', '_')}"), "--config-dir",
            str(pub.config.config_dir), *extra]


def test_two_concurrent_ingests_lose_nothing_and_wait_for_each_other(cpub, tmp_path):
    lay = Layout(tmp_path / "big")
    for tag in ("one", "two"):  # ~10 MB each: the runs overlap
        members = [{"name": f"data/{tag}{i}", "data": os.urandom(100_000)} for i in range(100)]
        lay.add(ImageSpec([Layer(base_members()), Layer(members)]), tag)
    names = {"one": "x.org/one:1", "two": "x.org/two:1"}
    # without --lock-wait: each run publishes, or is refused at once in one line
    procs = [subprocess.Popen(_ingest_cmd(cpub, f"oci:{tmp_path}/big:{t}", n, tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t, n in names.items()]
    done = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    ok = sorted(n for (rc, _out, _err), n in zip(done, names.values(), strict=True) if rc == 0)
    for rc, _out, err in done:
        if rc:
            _one_line_error(subprocess.CompletedProcess([], rc, "", err),
                            "being changed by another process")
    assert ok and sorted(_state(cpub, tmp_path)["images"]) == ok
    # with --lock-wait the second waits and sees the first's images.json
    with cpub.transaction() as txn:
        txn.remove(layout.images_index())
        for n in names.values():
            txn.remove(n, missing_ok=True)
    procs = [subprocess.Popen(_ingest_cmd(cpub, f"oci:{tmp_path}/big:{t}", n, tmp_path,
                                          "--lock-wait", "300"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t, n in names.items()]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    assert sorted(_state(cpub, tmp_path)["images"]) == sorted(names.values())
    view = cpub.open_reader(tmp_path / "rc").open_revision()
    try:
        for n in names.values():
            assert view.exists(f"/{n}/etc/passwd")
    finally:
        view.close()


@pytest.mark.parametrize("one_run", [False, True])
def test_a_layer_is_never_aliased_to_a_twin_that_was_not_written(cpub, images, tmp_path,
                                                                 one_run):
    flat_only = frozenset({"flat", "podman"})
    gz = _wanted(cpub, [images["a"]], ["x.org/gz:1"], tmp_path, flat_only)
    plain = _wanted(cpub, [images["a-plain"]], ["x.org/plain:1"], tmp_path)
    cp = container_publisher(cpub)
    if one_run:
        cp.run(gz + plain)
    else:
        cp.run(gz)
        cp.run(gz + plain)
    for d in plain[0].image.layers:
        assert _exists(cpub, tmp_path, layout.layer_root(d.digest) + "/etc"), d.digest
    assert cp.run(gz + plain).revision is None


def test_layers_read_for_a_flat_only_name_are_written_for_a_later_name_that_wants_them(
        cpub, images, tmp_path):
    flat_only = _wanted(cpub, [images["a"]], ["x.org/flat:1"], tmp_path,
                        frozenset({"flat", "podman"}))
    layered = _wanted(cpub, [images["a"]], ["x.org/layered:1"], tmp_path)
    cp = container_publisher(cpub)
    cp.run(flat_only + layered)
    for d in layered[0].image.layers:
        assert _exists(cpub, tmp_path, layout.layer_root(d.digest) + "/etc"), d.digest
    assert cp.run(flat_only + layered).revision is None


def _dangling(pub, tmp_path, top: str) -> list[str]:
    """Symlinks below ``top`` whose target is not in the repository."""
    view = pub.open_reader(tmp_path / "rd").open_revision()
    try:
        if not view.exists("/" + top):
            return []
        out = []
        for _d, dirs, files in view.walk("/" + top):
            for s in dirs + files:
                if s.is_symlink:
                    try:
                        view.stat(s.path)
                    except PathError:
                        out.append(s.path)
        return out
    finally:
        view.close()


def test_a_retargeted_name_leaves_no_alias_to_a_deleted_flat(cpub, images, tmp_path):
    at = [1_000_000_000]
    cp = container_publisher(cpub, now=lambda: at[0])
    cp.run(_wanted(cpub, [images["a"]], ["x.org/n:1"], tmp_path))
    old_alias = _state(cpub, tmp_path)["images"]["x.org/n:1"]["alias"]
    at[0] += DAY
    cp.run(_wanted(cpub, [images["b"]], ["x.org/n:1"], tmp_path))
    at[0] += 30 * DAY
    gone = cp.collect(grace_days=7)
    assert any(p.startswith(".flat/") for p in gone.deleted)
    assert _dangling(cpub, tmp_path, "x.org") == []
    assert not _exists(cpub, tmp_path, old_alias)


def test_a_name_without_the_flat_output_has_no_public_link(cpub, images, tmp_path):
    at = [1_000_000_000]
    cp = _Planned(container_publisher(cpub, now=lambda: at[0]))
    layers_only = frozenset({"layers"})
    name = "x.org/l:1"
    first = cp.run(_wanted(cpub, [images["a"]], [name], tmp_path, layers_only))
    assert first.flats_new == [] and len(first.layers_new) == 2
    assert _dangling(cpub, tmp_path, "x.org") == [] and not _exists(cpub, tmp_path, name)
    assert _exists(cpub, tmp_path, layout.metadata_dir(name) + "/manifest.json")
    cp.run(_wanted(cpub, [images["a"]], [name], tmp_path))  # now with the flat
    assert _exists(cpub, tmp_path, name + "/etc/note")
    at[0] += DAY
    back = cp.run(_wanted(cpub, [images["a"]], [name], tmp_path, layers_only))
    flat = layout.flat_path(_state(cpub, tmp_path)["images"][name]["config_digest"])
    assert back.retired == [flat] and not _exists(cpub, tmp_path, name)
    assert _dangling(cpub, tmp_path, "x.org") == []
    assert cp.run(_wanted(cpub, [images["a"]], [name], tmp_path, layers_only)).revision is None


@pytest.mark.parametrize("repo_tag, needle", [
    ("x.org/" + "a" * 250 + ":" + "t" * 100, "more than 255"),
    ("x.org/" + "a" * 200 + ":1", "alias"),
    ("x.org/../../etc:1", "RepoTag"),
    ("/abs/x:1", "RepoTag")])
def test_a_weird_repo_tag_in_a_docker_archive_is_refused_by_name(cpub, tmp_path, repo_tag,
                                                                 needle):
    from containers.test_source_archive import docker25_archive, manifest_json, rewrite

    lay = Layout(tmp_path / "l")
    written = lay.add(_spec("a"), "a")
    plain = docker25_archive(lay, written, tmp_path / "plain.tar")
    entries = manifest_json(plain)
    entries[0]["RepoTags"] = [repo_tag]
    archive = rewrite(plain, tmp_path / "weird.tar",
                      replace={"manifest.json": json.dumps(entries).encode()})
    head = cpub.head().revision
    with pytest.raises(ContainerError, match=needle) as err:
        _ingest(cpub, [f"docker-archive:{archive}"], tmp_path)
    assert repo_tag[:20] in str(err.value)
    assert cpub.head().revision == head


def test_an_oci_ref_name_that_is_not_a_tag_gives_a_plain_local_name(cpub, tmp_path):
    lay = Layout(tmp_path / "img")
    lay.add(_spec("a"), "../../etc/passwd")
    report = _ingest(cpub, [f"oci:{tmp_path}/img"], tmp_path)
    assert report.added == ["localhost/img:latest"]
    assert _dangling(cpub, tmp_path, "localhost") == []


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_an_images_json_that_is_not_a_file_is_not_taken_for_an_empty_state(cpub, images,
                                                                          tmp_path, kind):
    doc = _valid_index(cpub, images, tmp_path)
    with cpub.transaction() as txn:
        txn.remove(layout.images_index())
        if kind == "directory":
            txn.add_file(layout.images_index() + "/x", b"")
        else:
            txn.add_file(".metadata/other.json", json.dumps(dict(doc, images={})).encode())
            txn.symlink(layout.images_index(), "other.json")
    head = cpub.head().revision
    with pytest.raises(ContainerError, match=r"images\.json: not a regular file"):
        container_publisher(cpub).run(_wanted(cpub, [images["b"]], ["x.org/b:1"], tmp_path),
                                      prune=True)
    assert cpub.head().revision == head


def test_damaged_metadata_is_refused_for_the_podman_store_and_repaired_by_an_ingest(
        cpub, images, tmp_path):
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"])
    config = layout.metadata_dir("x.org/a:1") + "/config.json"
    with cpub.transaction() as txn:
        txn.remove(config)
        txn.add_file(config, b'{"architecture": "amd64", "os": "linux", "forged": 1}')
    head = cpub.head().revision
    with pytest.raises(ContainerError, match=f"{config}: its digest is not"):
        _ingest(cpub, [images["b"]], tmp_path, names=["x.org/b:1"])
    assert cpub.head().revision == head
    repaired = _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"])
    assert repaired.unchanged == ["x.org/a:1"] and repaired.revision is not None
    assert _ingest(cpub, [images["b"]], tmp_path, names=["x.org/b:1"]).revision is not None
    assert _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"]).revision is None


def test_a_sync_that_cannot_resolve_an_image_exits_non_zero_and_removes_nothing(cpub, images,
                                                                               tmp_path):
    from helpers.daemons import free_port

    wl = tmp_path / "wl.yaml"
    wl.write_text(f"version: 1\nuser: x\ncvmfs_repo: {cpub.fqrn}\ninput:\n"
                  f"  - 'https://127.0.0.1:{free_port()}/hep/app:1'\n")
    nothing_to_keep = _cli(cpub, "sync", cpub.fqrn, str(wl), "--insecure")
    assert nothing_to_keep.returncode == 1, nothing_to_keep.stderr
    _ingest(cpub, [images["a"]], tmp_path, names=["x.org/a:1"])
    head = cpub.head().revision
    res = _cli(cpub, "sync", cpub.fqrn, str(wl), "--insecure", "--json")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    report = json.loads(res.stdout)
    assert report["incomplete"] is True and report["removed"] == []
    assert any("hep/app:1" in w for w in report["warnings"])
    assert cpub.head().revision == head and _exists(cpub, tmp_path, "x.org/a:1")


def test_an_image_whose_flat_survived_but_whose_layers_were_collected_gets_them_back(
        cpub, images, tmp_path):
    at = [1_000_000_000]
    cp = container_publisher(cpub, now=lambda: at[0])
    flat_only = frozenset({"flat", "podman"})
    cp.run(_wanted(cpub, [images["a"]], ["x.org/n:1"], tmp_path))
    gz_layers = [layout.layer_dir(d) for d in _state(cpub, tmp_path)["images"]["x.org/n:1"]
                 ["layers"]]
    at[0] += DAY  # n moves to the plain twin without layers: the gzip layers are retired
    cp.run(_wanted(cpub, [images["a-plain"]], ["x.org/n:1"], tmp_path, flat_only),
           prune=True)
    at[0] += 30 * DAY
    gone = cp.run(_wanted(cpub, [images["a-plain"]], ["x.org/n:1"], tmp_path, flat_only),
                  prune=True, grace_days=7)
    assert sorted(gone.deleted) == sorted(gz_layers)
    wanted = _wanted(cpub, [images["a-plain"], images["a"]], ["x.org/n:1", "x.org/m:1"],
                     tmp_path)
    dry = cp.run(wanted, prune=True, dry_run=True)
    back = cp.run(wanted, prune=True)
    assert back.flats_new == [] and len(back.layers_new) == 2
    assert sorted(dry.layers_new) == sorted(back.layers_new)
    assert sorted(dry.layers_reused) == sorted(back.layers_reused)
    for d in wanted[0].image.layers + wanted[1].image.layers:
        assert _exists(cpub, tmp_path, layout.layer_root(d.digest) + "/etc"), d.digest
    assert _dangling(cpub, tmp_path, layout.LAYERS) == []
    assert cp.run(wanted, prune=True).revision is None


def test_thin_without_layers_is_refused_before_anything_is_published(cpub, images, tmp_path):
    head = cpub.head().revision
    with pytest.raises(ContainerError, match=r"x\.org/t:1: the thin output .* needs the layers"):
        _ingest(cpub, [images["a"]], tmp_path, names=["x.org/t:1"],
                outputs=frozenset({"flat", "thin"}))
    assert cpub.head().revision == head


def test_a_name_retargeted_while_the_state_is_incomplete_retires_its_old_flat(cpub, images,
                                                                              tmp_path):
    at = [1_000_000_000]
    cp = _Planned(container_publisher(cpub, now=lambda: at[0]))
    cp.run(_wanted(cpub, [images["a"], images["b"]], ["x.org/n:1", "x.org/keep:1"], tmp_path))
    flat_a = layout.flat_path(_state(cpub, tmp_path)["images"]["x.org/n:1"]["config_digest"])
    at[0] += DAY  # a registry could not be listed: x.org/keep:1 is held back, n moves to b
    moved = cp.run(_wanted(cpub, [images["b"]], ["x.org/n:1"], tmp_path), prune=True,
                   complete=False, grace_days=0)
    assert moved.removed == [] and moved.deleted == [] and flat_a in moved.retired
    assert _exists(cpub, tmp_path, flat_a) and _exists(cpub, tmp_path, "x.org/keep:1")
    at[0] += 30 * DAY
    later = cp.run(_wanted(cpub, [images["b"]], ["x.org/n:1"], tmp_path), prune=True,
                   grace_days=7)
    assert flat_a in later.deleted and not _exists(cpub, tmp_path, flat_a)


def test_a_recorded_name_of_an_older_shape_can_still_be_removed(cpub, images, tmp_path):
    doc = _valid_index(cpub, images, tmp_path)
    rec = doc["images"].pop("x.org/a:1")
    doc["images"]["legacy"] = dict(rec, name="legacy", alias="legacy-alias")
    with cpub.transaction() as txn:
        txn.remove("x.org/a:1")
        txn.symlink("legacy", rec["alias"].replace("x.org/", ""))
    _put_index(cpub, doc)
    report = container_publisher(cpub).run(
        _wanted(cpub, [images["b"]], ["x.org/b:1"], tmp_path), prune=True)
    assert report.removed == ["legacy"] and not _exists(cpub, tmp_path, "legacy")
