"""export_oci: a published tree written back as an OCI layout, checked with umoci and skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from containers.conftest import require_tool, umoci_rootfs
from containers.ocifixture import layer_tar
from containers.registry_server import Registry
from containers.treecompare import content_store, exact_description
from pycvmfs.containers.blobcache import BlobCache
from pycvmfs.containers.export import GENERATED_ENTRIES, REF_NAME, export_oci
from pycvmfs.containers.layer import read_layer
from pycvmfs.containers.model import DEFAULT_PLATFORM
from pycvmfs.containers.reference import parse_reference
from pycvmfs.containers.source_registry import RegistrySource
from pycvmfs.errors import ContainerError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher

from helpers.publishing import reader

TOP = "/.flat/ab/ab12"
NON_UTF8 = b"caf\xe9-latin1"
LONG = "d" * 120 + "/" + "f" * 200
BIG = hashlib.sha256(b"seed").digest() * 20_000  # 640 KB: chunked in the test repository
MEMBERS = [
    {"name": "etc", "type": "dir"},
    {"name": "etc/passwd", "data": b"root:x:0:0:root:/root:/bin/sh\n"},
    {"name": "etc/group", "data": b"root:x:0:\n"},
    {"name": "bin", "type": "dir", "mode": 0o755},
    {"name": "bin/tool", "mode": 0o4755, "uid": 0, "gid": 0, "data": b"#!/bin/sh\necho t\n"},
    {"name": "bin/tool2", "type": "hardlink", "target": "bin/tool"},
    {"name": "bin/sgid", "mode": 0o2711, "uid": 7, "gid": 8, "data": b"sgid\n"},
    {"name": "bin/sh-link", "type": "symlink", "target": "../usr/bin/hello"},
    {"name": "usr/bin/hello", "mode": 0o755, "uid": 1000, "gid": 1001,
     "data": b"#!/bin/sh\necho hello\n", "mtime": "1700000000.123456789",
     "xattrs": {"user.note": "kept", "user.bin": b"\x00\xff\x01"}},
    {"name": "usr/share/big.bin", "data": BIG},
    {"name": "usr/share/empty", "data": b""},
    {"name": "tmp", "type": "dir", "mode": 0o1777},
    {"name": "home/user", "type": "dir", "mode": 0o700, "uid": 1000, "gid": 1000},
    {"name": "dev/null", "type": "char", "major": 1, "minor": 3, "mode": 0o666},
    {"name": "dev/loop0", "type": "block", "major": 7, "minor": 0, "mode": 0o660},
    {"name": "run/fifo", "type": "fifo", "mode": 0o600},
    {"name": NON_UTF8, "data": b"latin1 name\n"},
    {"name": LONG, "data": b"long\n"},
    {"name": "abs-link", "type": "symlink", "target": "/etc/passwd"},
    # nested catalogs at the top (as a published flat tree has) and below it: not exported
    {"name": ".cvmfscatalog", "data": b""},
    {"name": "usr/.cvmfscatalog", "data": b""},
    # what the publisher adds for Apptainer; left out with exclude=GENERATED_ENTRIES
    {"name": ".singularity.d/runscript", "mode": 0o755, "data": b"#!/bin/sh\n"},
    {"name": "singularity", "type": "symlink", "target": ".singularity.d/runscript"},
]
CONFIG = {"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
          "config": {"Env": ["PATH=/usr/bin:/bin", "A=b c"], "Entrypoint": ["/usr/bin/hello"],
                     "Cmd": ["x"], "WorkingDir": "/tmp"},
          "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64, "sha256:" + "2" * 64]},
          "history": [{"created_by": "a"}, {"created_by": "b"}]}
CONFIG_BYTES = json.dumps(CONFIG).encode()


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    """A repository with MEMBERS published at TOP (owners kept, xattrs recorded)."""
    base = tmp_path_factory.mktemp("export-repo")
    settings = ServerSettings(chunking=ChunkingParams(65536, 131072, 262144),
                              include_xattrs=True, mtime_ns=True)
    pub = Publisher.mkfs("export.example.org", base / "srv", config_dir=base / "etc",
                         settings=settings)
    (base / "layer.tar").write_bytes(layer_tar(MEMBERS))
    with pub.transaction() as t:
        t.add_tarball(base / "layer.tar", TOP)
        t.mkdir("/registry.example")
        t.symlink("/registry.example/app:1", "../.flat/ab/ab12")  # a public name
    repo = reader(pub, base / "cache")
    v = repo.open_revision()
    yield v
    v.close()
    repo.close()


def _unpack_source(tmp: Path) -> Path:
    """The source tar extracted by GNU tar, the reference tree."""
    src = tmp / "source"
    src.mkdir()
    (tmp / "source.tar").write_bytes(layer_tar(MEMBERS))
    subprocess.run([require_tool("tar"), "--xattrs", "--xattrs-include=user.*", "--same-owner",
                    "--numeric-owner", "-xpf", str(tmp / "source.tar"), "-C", str(src)],
                   check=True)
    return src


def test_umoci_unpacks_the_export_as_the_source_tree(view, tmp_path):
    dest = tmp_path / "oci"
    result = export_oci(view, TOP, dest, "v1", config_bytes=CONFIG_BYTES,
                        exclude=GENERATED_ENTRIES)
    assert result.excluded == 2
    bundle = tmp_path / "bundle"
    umoci_rootfs(dest, "v1", bundle)
    # (symbolic links: umoci sets no mtimes of links; directories: the source has implicit
    # parents, made at unpack/publish time)
    got = exact_description(bundle / "rootfs", symlink_mtimes=False)
    want = exact_description(_unpack_source(tmp_path), symlink_mtimes=False)
    for generated in (b".singularity.d", b".singularity.d/runscript", b"singularity",
                      b".cvmfscatalog", b"usr/.cvmfscatalog"):
        assert want.pop(generated)
    assert view.nested_hash(TOP.encode()) is not None  # the tree is a nested catalog
    assert got == want
    assert os.lstat(bundle / "rootfs/usr/bin/hello").st_mtime_ns == 1_700_000_000_123456789
    # umoci's runtime config comes from the image config we carried over
    runtime = json.loads((bundle / "config.json").read_text())
    assert runtime["process"]["args"] == ["/usr/bin/hello", "x"]
    assert "A=b c" in runtime["process"]["env"]
    assert runtime["process"]["cwd"] == "/tmp"


def test_layout_blobs_config_and_determinism(view, tmp_path):
    a = export_oci(view, TOP, tmp_path / "a", "v1", config_bytes=CONFIG_BYTES)
    b = export_oci(view, TOP, tmp_path / "b", "v1", config_bytes=CONFIG_BYTES)
    assert (a.manifest_digest, a.layer_digest, a.diff_id) == \
        (b.manifest_digest, b.layer_digest, b.diff_id)
    root = tmp_path / "a"
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["annotations"] == {REF_NAME: "v1"}
    assert entry["platform"] == {"os": "linux", "architecture": "amd64"}
    blob = root / "blobs/sha256"
    for digest in (a.manifest_digest, a.config_digest, a.layer_digest):
        assert "sha256:" + hashlib.sha256((blob / digest[7:]).read_bytes()).hexdigest() == digest
    assert sorted(os.listdir(blob)) == sorted(
        d[7:] for d in (a.manifest_digest, a.config_digest, a.layer_digest))
    layer = (blob / a.layer_digest[7:]).read_bytes()
    assert layer[4:8] == b"\0\0\0\0"  # gzip mtime 0
    tar_bytes = gzip.decompress(layer)
    assert "sha256:" + hashlib.sha256(tar_bytes).hexdigest() == a.diff_id
    assert len(tar_bytes) == a.tar_size and len(layer) == a.layer_size
    config = json.loads((blob / a.config_digest[7:]).read_bytes())
    assert config["rootfs"] == {"type": "layers", "diff_ids": [a.diff_id]}
    assert config["config"] == CONFIG["config"]
    assert [h.get("empty_layer", False) for h in config["history"]] == [True, True, False]
    assert config["history"][-1]["created"] == CONFIG["created"]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert ".singularity.d/runscript" in names  # no exclude this time
    by_name = {m.name: m for m in members}
    assert by_name["bin/tool2"].islnk() and by_name["bin/tool2"].linkname == "bin/tool"
    assert by_name["bin/tool"].mode == 0o4755
    assert by_name["dev/null"].ischr() and by_name["dev/null"].devmajor == 1
    assert by_name["usr/bin/hello"].pax_headers["SCHILY.xattr.user.note"] == "kept"
    assert all(m.uname == "" and m.gname == "" for m in members)
    # parents come before their children, each directory's entries sorted by name
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/hello")


def test_skopeo_reads_and_converts_the_export(view, tmp_path):
    dest = tmp_path / "oci"
    result = export_oci(view, TOP, dest, "v1", config_bytes=CONFIG_BYTES)
    inspect = subprocess.run([require_tool("skopeo"), "inspect", f"oci:{dest}:v1"], check=True,
                             capture_output=True, text=True)
    info = json.loads(inspect.stdout)
    assert info["Digest"] == result.manifest_digest
    assert info["Layers"] == [result.layer_digest]
    archive = tmp_path / "image.tar"
    subprocess.run([require_tool("skopeo"), "copy", f"oci:{dest}:v1",
                    f"docker-archive:{archive}:example.org/exported:v1"],
                   check=True, capture_output=True)
    with tarfile.open(archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["example.org/exported:v1"]
        layer_tar_bytes = tf.extractfile(manifest[0]["Layers"][0]).read()
    assert "sha256:" + hashlib.sha256(layer_tar_bytes).hexdigest() == result.diff_id


def test_dest_must_be_absent_or_empty(view, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    with pytest.raises(ContainerError, match="full: exists and is not empty"):
        export_oci(view, TOP, full, "v1", config_bytes=CONFIG_BYTES)
    assert os.listdir(full) == ["keep"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ContainerError, match="afile: exists and is not a directory"):
        export_oci(view, TOP, afile, "v1", config_bytes=CONFIG_BYTES)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_oci(view, TOP, empty, "v1", config_bytes=CONFIG_BYTES)
    assert sorted(os.listdir(empty)) == ["blobs", "index.json", "oci-layout"]


def test_bad_input_is_refused_and_leaves_nothing(view, tmp_path):
    with pytest.raises(ContainerError, match="no/such/dir"):
        export_oci(view, "/no/such/dir", tmp_path / "a", "v1", config_bytes=CONFIG_BYTES)
    with pytest.raises(ContainerError, match="not a directory"):
        export_oci(view, TOP + "/etc/passwd", tmp_path / "b", "v1", config_bytes=CONFIG_BYTES)
    with pytest.raises(ContainerError, match="not a tag"):
        export_oci(view, TOP, tmp_path / "c", "../evil", config_bytes=CONFIG_BYTES)
    with pytest.raises(ContainerError, match=r"image config .*not valid JSON"):
        export_oci(view, TOP, tmp_path / "d", "v1", config_bytes=b"{nope")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_a_failure_while_writing_removes_the_partial_layout(view, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()

    def broken(self, *a, **kw):
        raise OSError("disk on fire")

    monkeypatch.setattr(tarfile.TarFile, "addfile", broken)
    with pytest.raises((OSError, ContainerError), match="disk on fire"):
        export_oci(view, TOP, empty, "v1", config_bytes=CONFIG_BYTES)
    assert os.listdir(empty) == []


def test_export_by_public_name_follows_its_symlink(view, tmp_path):
    by_dir = export_oci(view, TOP, tmp_path / "a", "v1", config_bytes=CONFIG_BYTES)
    by_name = export_oci(view, "registry.example/app:1", tmp_path / "b", "v1",
                         config_bytes=CONFIG_BYTES)
    assert by_name.manifest_digest == by_dir.manifest_digest
    assert by_name.entries == by_dir.entries > 20


def test_the_export_pushed_to_a_registry_reads_back_through_pycvmfs(view, tmp_path):
    """Round trip: export, skopeo push to a real docker-registry, then pycvmfs's own registry
    source and layer reader take it (digests, DiffID and the tree's paths all check)."""
    dest = tmp_path / "oci"
    result = export_oci(view, TOP, dest, "v1", config_bytes=CONFIG_BYTES,
                        exclude=GENERATED_ENTRIES)
    registry = Registry(tmp_path / "registry")
    try:
        ref = registry.push(dest, "v1", "exported/app")
        with RegistrySource(parse_reference(ref), cache=BlobCache(tmp_path / "cache"),
                            insecure=True) as source:
            [image] = source.images([DEFAULT_PLATFORM])
            assert image.manifest_digest == result.manifest_digest
            assert image.diff_ids == [result.diff_id]
            assert image.runtime_config()["Entrypoint"] == ["/usr/bin/hello"]
            ingester, _store = content_store(tmp_path / "objects")
            with ingester, source.open_blob(image.layers[0]) as blob:
                layer = read_layer(blob, image.layers[0], image.diff_ids[0], ingester,
                                   what=ref)
    finally:
        registry.stop()
    published = {os.fsencode(s.path)[len(TOP) + 1:] for _d, dirs, files in view.walk(TOP)
                 for s in dirs + files}
    published -= {b".cvmfscatalog", b"usr/.cvmfscatalog", b"singularity",
                  b".singularity.d", b".singularity.d/runscript"}
    assert {e.path for e in layer.entries} == published
