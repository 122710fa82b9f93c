"""DockerArchiveSource: archives written by real skopeo, a Docker >= 25 style archive, and
hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from containers.conftest import require_tool
from containers.ocifixture import (
    ImageSpec,
    Layer,
    Layout,
    Written,
    base_members,
    section6_image,
    sha,
)
from pycvmfs.containers.blobcache import BlobCache
from pycvmfs.containers.model import DEFAULT_PLATFORM
from pycvmfs.containers.source import open_source
from pycvmfs.containers.source_archive import DockerArchiveSource
from pycvmfs.errors import ContainerError

PLAIN = "application/vnd.docker.image.rootfs.diff.tar"


def skopeo_copy(src: str, dest: str) -> None:
    subprocess.run([require_tool("skopeo"), "copy", "-q", src, dest], check=True,
                   capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict:
    """Layouts and the docker-archives skopeo makes of them."""
    root = tmp_path_factory.mktemp("archives")
    lay = Layout(root / "layout")
    one = lay.add(ImageSpec([Layer(base_members(), "gzip")]), "one")
    s6 = lay.add(section6_image(("gzip", "none", "gzip")), "s6")
    skopeo_copy(f"oci:{lay.root}:one", f"docker-archive:{root}/one.tar:alpine:3.19")
    skopeo_copy(f"oci:{lay.root}:s6", f"docker-archive:{root}/s6.tar")
    skopeo_copy(f"oci:{lay.root}:s6", f"docker-archive:{root}/s6-again.tar")
    return {"root": root, "layout": lay, "one": one, "s6": s6}


def uncompressed_digest(lay: Layout, digest: str) -> str:
    data = (lay.root / "blobs" / "sha256" / digest[7:]).read_bytes()
    return sha(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def check_image(src: DockerArchiveSource, written: Written, lay: Layout) -> None:
    [img] = src.images([DEFAULT_PLATFORM])
    assert img.name is None
    assert img.config.digest == written.config_digest
    assert img.config_bytes == written.config
    assert img.diff_ids == written.diff_ids
    # skopeo stores the layers uncompressed: each digest is the DiffID
    assert [d.digest for d in img.layers] == written.diff_ids
    assert [d.digest for d in img.layers] == [uncompressed_digest(lay, d)
                                              for d in written.layer_digests]
    assert {d.media_type for d in img.layers} == {PLAIN}
    assert img.manifest_digest == sha(img.manifest_bytes)
    for desc in img.layers:
        with src.open_blob(desc) as f:
            data = f.read()
        assert len(data) == desc.size and sha(data) == desc.digest


def test_skopeo_archives(archives):
    root, lay = archives["root"], archives["layout"]
    check_image(DockerArchiveSource(root / "one.tar"), archives["one"], lay)
    check_image(DockerArchiveSource(root / "s6.tar"), archives["s6"], lay)
    first = DockerArchiveSource(root / "s6.tar").images([DEFAULT_PLATFORM])[0]
    again = DockerArchiveSource(root / "s6-again.tar").images([DEFAULT_PLATFORM])[0]
    assert first.manifest_bytes == again.manifest_bytes  # deterministic synthesis
    doc = json.loads(first.manifest_bytes)
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert first.manifest_bytes == json.dumps(doc, sort_keys=True,
                                              separators=(",", ":")).encode()


def test_names(archives, tmp_path):
    root = archives["root"]
    cache = BlobCache(tmp_path / "cache")
    for name in ("alpine:3.19", "docker.io/library/alpine:3.19", "@0"):
        src = open_source(f"docker-archive:{root}/one.tar:{name}", cache=cache)
        assert isinstance(src, DockerArchiveSource)
        assert src.images([DEFAULT_PLATFORM])[0].config.digest == archives["one"].config_digest
        assert src.suggested_name() == "docker.io/library/alpine:3.19"
    with pytest.raises(ContainerError, match="no image tagged docker.io/library/alpine:3.20 "
                       r"in the archive \(it has docker.io/library/alpine:3.19\)"):
        DockerArchiveSource(root / "one.tar", "alpine:3.20")
    with pytest.raises(ContainerError, match=r"no image @1 \(the archive holds 1, from @0\)"):
        DockerArchiveSource(root / "one.tar", "@1")
    with pytest.raises(ContainerError, match="a docker-archive name is a tag or @N, not a "
                       "digest"):
        DockerArchiveSource(root / "one.tar", "alpine:3.19@" + archives["one"].manifest_digest)
    assert DockerArchiveSource(root / "s6.tar").suggested_name() == "localhost/s6:latest"


def rewrite(src: Path, dest: Path, *, replace: dict[str, bytes | None] | None = None,
            add: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = ()) -> Path:
    """A copy of archive ``src`` with members replaced (None drops them) and added."""
    replace = replace or {}
    with tarfile.open(src) as tin, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin.getmembers():
            if info.name in replace:
                data = replace[info.name]
                if data is not None:
                    info.size = len(data)
                    tout.addfile(info, io.BytesIO(data))
                continue
            tout.addfile(info, tin.extractfile(info) if info.isreg() else None)
        for item in add:
            info, data = item if isinstance(item, tuple) else (item, b"")
            info.size = len(data) if info.isreg() else 0
            tout.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dest


def manifest_json(path: Path) -> list[dict]:
    with tarfile.open(path) as tf:
        return json.load(tf.extractfile("manifest.json"))


def test_legacy_layer_tar_symlinks(archives, tmp_path):
    """Docker 1.10-24 names layers ``<id>/layer.tar``; skopeo writes those as symlinks."""
    src = archives["root"] / "s6.tar"
    entries = manifest_json(src)
    with tarfile.open(src) as tf:
        legacy = {tf.getmember(n).linkname.split("/")[-1]: n for n in tf.getnames()
                  if n.endswith("/layer.tar")}
    entries[0]["Layers"] = [legacy[n] for n in entries[0]["Layers"]]
    entries[0]["RepoTags"] = ["example.com:5000/group/app:2"]
    dest = rewrite(src, tmp_path / "legacy.tar",
                   replace={"manifest.json": json.dumps(entries).encode()})
    new = DockerArchiveSource(dest)
    assert (new.images([DEFAULT_PLATFORM])[0].manifest_bytes
            == DockerArchiveSource(src).images([DEFAULT_PLATFORM])[0].manifest_bytes)
    check_image(new, archives["s6"], archives["layout"])
    assert new.suggested_name() == "example.com:5000/group/app:2"


def docker25_archive(lay: Layout, written: Written, dest: Path, *, index: bool = True) -> Path:
    """A Docker >= 25 style archive: an OCI layout (gzip layers kept) plus manifest.json."""
    with tarfile.open(dest, "w") as tf:
        for path in sorted(lay.root.rglob("*")):
            name = str(path.relative_to(lay.root))
            if name == "index.json" and not index:
                continue
            tf.add(path, name, recursive=False)
        entry = [{"Config": f"blobs/sha256/{written.config_digest[7:]}",
                  "RepoTags": ["alpine:3.19"],
                  "Layers": [f"blobs/sha256/{d[7:]}" for d in written.layer_digests]}]
        data = json.dumps(entry).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return dest


def test_docker25_archive_uses_its_own_manifest(tmp_path):
    lay = Layout(tmp_path / "l")
    w = lay.add(section6_image(("gzip", "none", "zstd")), "3.19")
    src = DockerArchiveSource(docker25_archive(lay, w, tmp_path / "d25.tar"))
    [img] = src.images([DEFAULT_PLATFORM])
    assert img.manifest_digest == w.manifest_digest
    assert img.manifest_bytes == w.manifest
    assert [d.digest for d in img.layers] == w.layer_digests
    for desc in img.layers:
        with src.open_blob(desc) as f:
            assert sha(f.read()) == desc.digest
    assert src.suggested_name() == "docker.io/library/alpine:3.19"


def test_docker25_archive_without_index_is_synthesised_by_sniffing(tmp_path):
    lay = Layout(tmp_path / "l")
    w = lay.add(section6_image(("gzip", "none", "zstd")), "3.19")
    src = DockerArchiveSource(docker25_archive(lay, w, tmp_path / "d25.tar", index=False))
    [img] = src.images([DEFAULT_PLATFORM])
    assert [d.digest for d in img.layers] == w.layer_digests
    assert [d.media_type for d in img.layers] == [PLAIN + ".gzip", PLAIN, PLAIN + ".zstd"]
    assert img.config.digest == w.config_digest
    assert img.diff_ids == w.diff_ids


def test_docker25_blob_not_matching_its_name(tmp_path):
    lay = Layout(tmp_path / "l")
    w = lay.add(ImageSpec([Layer(base_members(), "gzip")]), "t")
    blob = lay.root / "blobs" / "sha256" / w.layer_digests[0][7:]
    blob.write_bytes(gzip.compress(b"not the layer"))
    src = DockerArchiveSource(docker25_archive(lay, w, tmp_path / "d.tar", index=False))
    with pytest.raises(ContainerError, match=r"layer 0 .* hashes to sha256:[0-9a-f]+, not the "
                       "digest its name says"):
        src.images([DEFAULT_PLATFORM])


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_hostile_archives(archives, tmp_path):
    src = archives["root"] / "one.tar"
    entries = manifest_json(src)
    cfg_name = entries[0]["Config"]

    bad = rewrite(src, tmp_path / "dotdot.tar", add=[(member("../x"), b"x")])
    with pytest.raises(ContainerError, match=r"member '\.\./x' points outside the archive"):
        DockerArchiveSource(bad)

    escaping = dict(entries[0], Layers=["evil/layer.tar"])
    bad = rewrite(src, tmp_path / "symlink.tar",
                  replace={"manifest.json": json.dumps([escaping]).encode()},
                  add=[member("evil", tarfile.DIRTYPE),
                       member("evil/layer.tar", tarfile.SYMTYPE, "../../etc/passwd")])
    with pytest.raises(ContainerError, match=r"symlink 'evil/layer.tar' -> '\.\./\.\./etc/"
                       r"passwd'.* points outside the archive"):
        DockerArchiveSource(bad).images([DEFAULT_PLATFORM])
    bad = rewrite(src, tmp_path / "abs.tar",
                  replace={"manifest.json": json.dumps([escaping]).encode()},
                  add=[member("evil/layer.tar", tarfile.SYMTYPE, "/etc/passwd")])
    with pytest.raises(ContainerError, match="points outside the archive"):
        DockerArchiveSource(bad).images([DEFAULT_PLATFORM])

    with tarfile.open(src) as tf:
        cfg = tf.extractfile(cfg_name).read()
    bad = rewrite(src, tmp_path / "cfg.tar",
                  replace={cfg_name: cfg.replace(b"amd64", b"arm64")})
    with pytest.raises(ContainerError, match=f"config {cfg_name}: digest mismatch"):
        DockerArchiveSource(bad).images([DEFAULT_PLATFORM])

    bad = rewrite(src, tmp_path / "notlist.tar",
                  replace={"manifest.json": json.dumps(entries[0]).encode()})
    with pytest.raises(ContainerError, match=r"manifest.json must be a non-empty list"):
        DockerArchiveSource(bad)
    bad = rewrite(src, tmp_path / "noconfig.tar",
                  replace={"manifest.json": b'[{"Layers": []}]'})
    with pytest.raises(ContainerError, match=r"manifest.json entry 0 is not"):
        DockerArchiveSource(bad)
    bad = rewrite(src, tmp_path / "nomanifest.tar", replace={"manifest.json": None})
    with pytest.raises(ContainerError, match=r"no manifest.json"):
        DockerArchiveSource(bad)

    layer = entries[0]["Layers"][0]
    with tarfile.open(src) as tf:
        raw = tf.extractfile(layer).read()
    bad = rewrite(src, tmp_path / "layer.tar", replace={layer: raw[:-1024] + b"\1" * 1024})
    with pytest.raises(ContainerError, match=f"layer 0 \\({layer}\\) hashes to .* but the "
                       "config's DiffID is"):
        DockerArchiveSource(bad).images([DEFAULT_PLATFORM])

    missing = dict(entries[0], Layers=["nothere.tar"])
    bad = rewrite(src, tmp_path / "missing.tar",
                  replace={"manifest.json": json.dumps([missing]).encode()})
    with pytest.raises(ContainerError, match=r"'nothere.tar' is not in the archive"):
        DockerArchiveSource(bad).images([DEFAULT_PLATFORM])


def test_several_images_and_unreadable_files(archives, tmp_path):
    root = archives["root"]
    one, s6 = manifest_json(root / "one.tar"), manifest_json(root / "s6.tar")
    with tarfile.open(root / "s6.tar") as tf:
        extra = [(m, tf.extractfile(m).read() if m.isreg() else b"") for m in tf.getmembers()
                 if m.name not in {"manifest.json", "repositories"}]
    both = rewrite(root / "one.tar", tmp_path / "both.tar",
                   replace={"manifest.json": json.dumps(one + s6).encode()}, add=extra)
    with pytest.raises(ContainerError, match=r"holds 2 images \(docker.io/library/alpine:3.19"
                       r"\); name one"):
        DockerArchiveSource(both)
    [img] = DockerArchiveSource(both, "@1").images([DEFAULT_PLATFORM])
    assert img.config.digest == archives["s6"].config_digest

    gz = tmp_path / "one.tar.gz"
    gz.write_bytes(gzip.compress((root / "one.tar").read_bytes()))
    with pytest.raises(ContainerError, match=r"the archive is compressed \(gzip\)"):
        DockerArchiveSource(gz)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0\1" * 4000)
    with pytest.raises(ContainerError, match="not a readable tar archive"):
        DockerArchiveSource(junk)
    with pytest.raises(ContainerError, match="does not exist"):
        open_source(f"docker-archive:{tmp_path}/none.tar:x:1", cache=BlobCache(tmp_path / "c"))
    cut = tmp_path / "cut.tar"
    data = (root / "s6.tar").read_bytes()
    layer_name = s6[0]["Layers"][-1]
    with tarfile.open(root / "s6.tar") as tf:
        end = tf.getmember(layer_name).offset_data + 100
    cut.write_bytes(data[:end])
    with pytest.raises(ContainerError, match="not a readable tar archive"):
        DockerArchiveSource(cut).images([DEFAULT_PLATFORM])


def test_open_blob_unknown_digest(archives):
    src = DockerArchiveSource(archives["root"] / "one.tar")
    [img] = src.images([DEFAULT_PLATFORM])
    desc = img.layers[0]
    other = type(desc)(desc.media_type, "sha256:" + hashlib.sha256(b"?").hexdigest(), 1)
    with pytest.raises(ContainerError, match=f"blob {other.digest} is not in the archive"):
        src.open_blob(other)


def test_docker_save_form_with_regular_and_hard_linked_layer_files(archives, tmp_path):
    """``docker save`` (1.10-24): ``<id>/layer.tar`` regular files, a familiar RepoTag; a
    layer file may also be a hard link to another member."""
    src = archives["root"] / "s6.tar"
    entries = manifest_json(src)
    with tarfile.open(src) as tf:
        links = {n: tf.getmember(n).linkname.split("/")[-1] for n in tf.getnames()
                 if n.endswith("/layer.tar")}
        blobs = {n: tf.extractfile(n).read() for n in entries[0]["Layers"]}
    by_blob = {v: k for k, v in links.items()}
    ids = [by_blob[n] for n in entries[0]["Layers"]]
    entries[0]["Layers"] = ids
    entries[0]["RepoTags"] = ["alpine:3.19"]
    replace: dict[str, bytes | None] = {n: None for n in blobs}
    replace.update({ids[0]: None, ids[1]: None, ids[2]: None,
                    "manifest.json": json.dumps(entries).encode()})
    add: list = [(member(ids[0]), blobs[links[ids[0]]]), (member(ids[1]), blobs[links[ids[1]]]),
                 (member("shared.tar"), blobs[links[ids[2]]]),
                 member(ids[2], tarfile.LNKTYPE, "shared.tar")]
    dest = rewrite(src, tmp_path / "saved.tar", replace=replace, add=add)
    with tarfile.open(dest) as tf:
        assert tf.getmember(ids[0]).isreg() and tf.getmember(ids[2]).islnk()
    saved = DockerArchiveSource(dest, "docker.io/library/alpine:3.19")
    check_image(saved, archives["s6"], archives["layout"])
    assert (saved.images([DEFAULT_PLATFORM])[0].manifest_bytes
            == DockerArchiveSource(src).images([DEFAULT_PLATFORM])[0].manifest_bytes)
    assert DockerArchiveSource(dest).suggested_name() == "docker.io/library/alpine:3.19"
