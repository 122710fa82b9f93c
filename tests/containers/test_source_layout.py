"""OciLayoutSource: selecting images in an OCI layout, skopeo as oracle, hostile layouts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading

import pytest

from containers.conftest import require_tool
from containers.ocifixture import ImageSpec, Layer, Layout, base_members, section6_image
from pycvmfs.containers.blobcache import BlobCache
from pycvmfs.containers.manifest import MAX_DOCUMENT
from pycvmfs.containers.model import DEFAULT_PLATFORM, Platform
from pycvmfs.containers.source import open_source
from pycvmfs.containers.source_layout import OciLayoutSource, local_name, split_location
from pycvmfs.errors import ContainerError


def skopeo_raw(ref: str, *extra: str) -> bytes:
    return subprocess.run([require_tool("skopeo"), "inspect", "--raw", *extra, ref], check=True,
                          capture_output=True, timeout=60).stdout


@pytest.fixture
def layout(tmp_path):
    lay = Layout(tmp_path / "img")
    one = lay.add(ImageSpec([Layer(base_members(), "gzip")]), "1.0")
    three = lay.add(section6_image(("gzip", "none", "zstd")), "s6")
    return lay, one, three


def blob_digest(src, desc) -> str:
    with src.open_blob(desc) as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def test_tagged_images_agree_with_skopeo(layout, tmp_path):
    lay, one, three = layout
    for tag, written in (("1.0", one), ("s6", three)):
        src = OciLayoutSource(lay.root, tag)
        [img] = src.images([DEFAULT_PLATFORM])
        assert img.name is None
        assert img.manifest_bytes == skopeo_raw(f"oci:{lay.root}:{tag}")
        assert img.config_bytes == skopeo_raw(f"oci:{lay.root}:{tag}", "--config")
        assert img.manifest_digest == written.manifest_digest
        assert img.config.digest == written.config_digest
        assert [d.digest for d in img.layers] == written.layer_digests
        assert img.diff_ids == written.diff_ids
        assert img.platform == DEFAULT_PLATFORM
        for desc in img.layers:
            assert blob_digest(src, desc) == desc.digest
    assert [d.media_type.rsplit(".", 1)[-1] for d in img.layers] == [
        "tar+gzip", "tar", "tar+zstd"]


def test_selection_rules(layout):
    lay, _one, three = layout
    with pytest.raises(ContainerError, match=r"holds 2 images \('1.0', 's6'\); name one"):
        OciLayoutSource(lay.root).images([DEFAULT_PLATFORM])
    with pytest.raises(ContainerError, match=r"no image named '2.0' in index.json \(it has "
                       r"'1.0', 's6'\)"):
        OciLayoutSource(lay.root, "2.0").images([DEFAULT_PLATFORM])
    [img] = OciLayoutSource(lay.root, "@1").images([DEFAULT_PLATFORM])
    assert img.manifest_digest == three.manifest_digest
    with pytest.raises(ContainerError, match=r"no entry @2 \(the layout holds 2\)"):
        OciLayoutSource(lay.root, "@2").images([DEFAULT_PLATFORM])
    single = Layout(lay.root.parent / "single")
    w = single.add(ImageSpec([Layer(base_members(), "none")]))  # no ref.name at all
    src = OciLayoutSource(single.root)
    assert src.images([DEFAULT_PLATFORM])[0].manifest_digest == w.manifest_digest
    assert src.suggested_name() == "localhost/single:latest"
    assert OciLayoutSource(lay.root, "s6").suggested_name() == "localhost/img:s6"
    assert OciLayoutSource(lay.root, "@0").suggested_name() == "localhost/img:1.0"


def test_multi_platform_index(tmp_path):
    lay = Layout(tmp_path / "multi")
    _, written = lay.add_multi([
        ImageSpec([Layer(base_members())]),
        ImageSpec([Layer([{"name": "arm", "data": b"arm64"}])], architecture="arm64",
                  variant="v8")], "m")
    src = OciLayoutSource(lay.root, "m")
    imgs = src.images([Platform.parse("linux/arm64"), DEFAULT_PLATFORM])
    assert [i.manifest_digest for i in imgs] == [written[1].manifest_digest,
                                                written[0].manifest_digest]
    assert imgs[0].platform == Platform("linux", "arm64", "v8")
    with pytest.raises(ContainerError, match="no image for platform linux/s390x"):
        src.images([Platform.parse("linux/s390x")])


def test_split_location_rule(tmp_path):
    weird = tmp_path / "a:b"
    lay = Layout(weird)
    w = lay.add(ImageSpec([Layer(base_members())]), "example.com:5000/x:1")
    is_layout = lambda p: os.path.isfile(os.path.join(p, "oci-layout"))  # noqa: E731
    assert split_location(f"{weird}", is_layout) == (str(weird), None)
    assert split_location(f"{weird}:v1", is_layout) == (str(weird), "v1")
    # a ref.name with colons stays whole (the leftmost split whose left side is a layout)
    assert split_location(f"{weird}:example.com:5000/x:1", is_layout) == (
        str(weird), "example.com:5000/x:1")
    src = open_source(f"oci:{weird}:example.com:5000/x:1", cache=BlobCache(tmp_path / "c"))
    assert src.images([DEFAULT_PLATFORM])[0].manifest_digest == w.manifest_digest
    # a layout at the shorter prefix wins, as skopeo's first-colon split would
    Layout(tmp_path / "a")
    assert split_location(f"{tmp_path}/a:b:v1", is_layout) == (f"{tmp_path}/a", "b:v1")
    # nothing exists: split at the first colon, so the error names that path
    assert split_location("/nowhere/x:y:z", is_layout) == ("/nowhere/x", "y:z")
    with pytest.raises(ContainerError, match="/nowhere/x is not a directory"):
        open_source("oci:/nowhere/x:y", cache=BlobCache(tmp_path / "c"))


def test_local_name():
    assert local_name("My Image_2", "v1.0") == "localhost/my-image-2:v1.0"
    assert local_name("x", "example.com:5000/x:1") == "localhost/x:latest"
    assert local_name("...", None) == "localhost/image:latest"


def test_bad_layout_files(tmp_path):
    lay = Layout(tmp_path / "l")
    lay.add(ImageSpec([Layer(base_members())]), "t")
    (lay.root / "oci-layout").write_text('{"imageLayoutVersion":"2.0.0"}')
    with pytest.raises(ContainerError, match=r"imageLayoutVersion '2\.0\.0', expected '1\.0\.0'"):
        OciLayoutSource(lay.root, "t")
    (lay.root / "oci-layout").unlink()
    with pytest.raises(ContainerError, match="oci-layout is missing"):
        OciLayoutSource(lay.root, "t")
    (lay.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (lay.root / "index.json").write_bytes(b" " * (MAX_DOCUMENT + 1))
    with pytest.raises(ContainerError, match=r"index.json \(.*\) is larger than"):
        OciLayoutSource(lay.root, "t").images([DEFAULT_PLATFORM])
    (lay.root / "index.json").write_text('["not an index"]')
    with pytest.raises(ContainerError, match=r"index\.json: not a JSON object"):
        OciLayoutSource(lay.root, "t").images([DEFAULT_PLATFORM])


def test_tampered_and_missing_blobs(layout):
    lay, one, _three = layout
    cfg_path = lay.root / "blobs" / "sha256" / one.config_digest[7:]
    cfg_path.write_bytes(cfg_path.read_bytes().replace(b"amd64", b"arm64"))
    with pytest.raises(ContainerError, match=f"config {one.config_digest}: digest mismatch"):
        OciLayoutSource(lay.root, "1.0").images([DEFAULT_PLATFORM])
    src = OciLayoutSource(lay.root, "s6")
    [img] = src.images([DEFAULT_PLATFORM])
    (lay.root / "blobs" / "sha256" / img.layers[1].digest[7:]).unlink()
    with pytest.raises(ContainerError, match=f"blob {img.layers[1].digest}: .* is missing"):
        src.open_blob(img.layers[1])
    (lay.root / "blobs" / "sha256" / one.manifest_digest[7:]).unlink()
    with pytest.raises(ContainerError, match=f"manifest {one.manifest_digest}: .* is missing"):
        OciLayoutSource(lay.root, "1.0").images([DEFAULT_PLATFORM])


def test_symlinks_and_special_files(layout, tmp_path):
    lay, one, _three = layout
    blobs = lay.root / "blobs" / "sha256"
    layer = blobs / one.layer_digests[0][7:]
    # a symlink staying inside the layout's blobs is followed
    moved = blobs / "kept-elsewhere"
    layer.rename(moved)
    layer.symlink_to("kept-elsewhere")
    src = OciLayoutSource(lay.root, "1.0")
    [img] = src.images([DEFAULT_PLATFORM])
    assert blob_digest(src, img.layers[0]) == one.layer_digests[0]
    # one leading outside is refused by name
    outside = tmp_path / "outside"
    outside.write_bytes(moved.read_bytes())
    layer.unlink()
    layer.symlink_to(outside)
    with pytest.raises(ContainerError, match=f"{layer} is a symlink pointing outside"):
        src.open_blob(img.layers[0])
    # a FIFO where the manifest should be: refused, no hang
    man = blobs / one.manifest_digest[7:]
    man.unlink()
    os.mkfifo(man)
    done = threading.Event()
    errors = []

    def read() -> None:
        try:
            OciLayoutSource(lay.root, "1.0").images([DEFAULT_PLATFORM])
        except ContainerError as e:
            errors.append(str(e))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "reading a FIFO blob hung"
    assert errors and "is not a regular file" in errors[0]


def test_blobs_directory_leading_outside_is_refused(layout, tmp_path):
    lay, _one, _three = layout
    elsewhere = tmp_path / "elsewhere"
    shutil.move(lay.root / "blobs" / "sha256", elsewhere)
    (lay.root / "blobs" / "sha256").symlink_to(elsewhere)
    with pytest.raises(ContainerError, match="blobs/sha256 leads outside the layout"):
        OciLayoutSource(lay.root, "1.0")


def test_manifest_size_mismatch_in_index(layout):
    lay, _one, _three = layout
    index = json.loads((lay.root / "index.json").read_text())
    index["manifests"][0]["size"] += 1
    (lay.root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ContainerError, match=r"index\.json says"):
        OciLayoutSource(lay.root, "1.0").images([DEFAULT_PLATFORM])


def test_open_source_refuses_transports_it_does_not_read(tmp_path):
    cache = BlobCache(tmp_path / "c")
    for text in ("dir:/tmp/x", "oci-archive:/tmp/x.tar:1", "containers-storage:alpine"):
        transport = text.split(":")[0]
        with pytest.raises(ContainerError, match=f"the {transport}: transport is not "
                           "supported"):
            open_source(text, cache=cache)
