"""scan_rootfs and synthesize_image: a real directory tree as a one-layer image (umoci oracle)."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from containers.conftest import require_tool, umoci_rootfs
from containers.treecompare import (
    compare,
    content_store,
    exact_description,
    listing_from_disk,
    listing_from_tree,
    stored_sha256,
)
from pycvmfs.containers.flatten import Tree
from pycvmfs.containers.layer import Kind
from pycvmfs.containers.model import Platform, parse_json, sha256_digest
from pycvmfs.containers.rootfs import (
    ROOTFS_LAYER_TYPE,
    host_platform,
    scan_rootfs,
    synthesize_image,
)
from pycvmfs.errors import ContainerError
from pycvmfs.publish.ingest import Ingester
from pycvmfs.storage.local import LocalStorage

NON_UTF8 = b"caf\xe9"
TOOL = b"#!/bin/sh\necho tool\n"
MTIME_NS = 1_700_000_000_123_456_789


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_tree(root: Path) -> Path:
    """A small root file system with every kind of entry a scan must keep (run as root)."""
    if os.geteuid() != 0:
        pytest.fail("these tests make devices and chown files: run them as root (tools/test.sh)")
    _write(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc/group", b"root:x:0:\n")
    tool = _write(root / "bin/tool", TOOL, 0o755)
    os.chmod(tool, 0o4755)  # chmod after write: the setuid bit survives
    os.link(tool, root / "bin/tool-hl")
    (root / "usr/bin").mkdir(parents=True)
    os.link(tool, root / "usr/bin/tool-x")  # a hard link across directories
    sgid = _write(root / "sbin/sgid", b"sgid\n", 0o755)
    os.chown(sgid, 7, 8)
    os.chmod(sgid, 0o2711)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "home/user").mkdir(parents=True)
    os.chown(root / "home/user", 1000, 1000)
    os.chmod(root / "home/user", 0o700)
    (root / "usr/lib").mkdir()
    _write(root / "usr/lib/libx.so", b"\x7fELF fake\n")
    _write(root / "usr/lib/same-as-passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    os.symlink("usr/lib", root / "lib")
    os.symlink("/etc/passwd", root / "abs")
    os.symlink("nowhere", root / "dangling")
    os.symlink("/etc", root / "outside")  # never followed: /etc of the host is not read
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "dev/loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    (root / "run").mkdir()
    os.mkfifo(root / "run/fifo", 0o600)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fsdecode(root / "run/sock"))
    noted = _write(root / "usr/bin/hello", b"#!/bin/sh\necho hello\n", 0o755)
    os.setxattr(noted, "user.note", b"kept")
    os.setxattr(noted, "trusted.pycvmfs", b"kept too")
    os.setxattr(root / "usr", "trusted.overlay.opaque", b"y")  # the overlay's own: dropped
    os.utime(noted, ns=(MTIME_NS, MTIME_NS))
    _write(Path(os.fsdecode(os.fsencode(root) + b"/" + NON_UTF8)), b"latin1 name\n")
    return root


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "rootfs")


@pytest.fixture
def ingester(tmp_path):
    with Ingester(LocalStorage(tmp_path / "store"), workers=2) as ing:
        yield ing


def test_entries_of_a_real_tree(tree, ingester):
    layer = scan_rootfs(tree, ingester)
    by = {e.path: e for e in layer.entries}
    assert layer.whiteouts == [] and layer.opaque == []
    assert b"run/sock" not in by and any("run/sock" in w and "socket" in w
                                          for w in layer.warnings)
    assert not any(p.startswith(b"outside/") for p in by)
    assert by[b"outside"].kind == Kind.SYMLINK and by[b"outside"].target == b"/etc"
    assert by[b"dangling"].target == b"nowhere" and by[b"lib"].target == b"usr/lib"
    assert (by[b"bin/tool"].kind, by[b"bin/tool"].mode) == (Kind.FILE, 0o4755)
    assert (by[b"sbin/sgid"].mode, by[b"sbin/sgid"].uid, by[b"sbin/sgid"].gid) == (0o2711, 7, 8)
    assert by[b"tmp"].mode == 0o1777 and by[b"home/user"].uid == 1000
    assert (by[b"dev/null"].kind, by[b"dev/null"].rdev) == (Kind.CHAR, os.makedev(1, 3))
    assert (by[b"dev/loop0"].kind, by[b"dev/loop0"].rdev) == (Kind.BLOCK, os.makedev(7, 0))
    assert by[b"run/fifo"].kind == Kind.FIFO and by[b"run/fifo"].mode == 0o600
    hello = by[b"usr/bin/hello"]
    assert hello.xattrs == {b"user.note": b"kept", b"trusted.pycvmfs": b"kept too"}
    assert (hello.mtime, hello.mtimens) == divmod(MTIME_NS, 1_000_000_000)
    assert by[b"usr"].xattrs is None  # trusted.overlay.* is not the image's
    assert by[NON_UTF8].kind == Kind.FILE
    # one hard-link group over three names in two directories, one content
    names = [b"bin/tool", b"bin/tool-hl", b"usr/bin/tool-x"]
    assert {by[n].link for n in names} == {by[b"bin/tool"].link} != {None}
    assert len({id(by[n].content) for n in names}) == 1
    assert by[b"etc/passwd"].link is None
    # parents before children; each directory's entries in name order
    paths = [e.path for e in layer.entries]
    assert len(paths) == len(set(paths))
    for p in paths:
        if b"/" in p:
            assert paths.index(p.rsplit(b"/", 1)[0]) < paths.index(p)
    assert [p for p in paths if b"/" not in p] == sorted(p for p in paths if b"/" not in p)
    assert layer.root is not None and layer.root.kind == Kind.DIR
    # the contents stored are the files' (content addressing: same bytes, same hash)
    for path, data in ((b"bin/tool", TOOL), (b"etc/passwd", (tree / "etc/passwd").read_bytes()),
                       (NON_UTF8, b"latin1 name\n")):
        got = by[path].content.result()
        assert got.size == len(data) == by[path].size
        assert got.hash == ingester.submit_bytes(data).result().hash
    assert by[b"usr/lib/same-as-passwd"].content.result().hash == \
        by[b"etc/passwd"].content.result().hash


def test_the_diff_id_hashes_a_tar_that_gnu_tar_unpacks_to_the_tree(tree, ingester, tmp_path):
    out = io.BytesIO()
    layer = scan_rootfs(tree, ingester, tar_out=out)
    data = out.getvalue()
    assert sha256_digest(data) == layer.diff_id == layer.compressed_digest
    assert len(data) == layer.uncompressed_size
    copy = tmp_path / "copy"
    copy.mkdir()
    (tmp_path / "t.tar").write_bytes(data)
    subprocess.run([require_tool("tar"), "--xattrs", "--xattrs-include=*", "--same-owner",
                    "--numeric-owner", "-xpf", str(tmp_path / "t.tar"), "-C", str(copy)],
                   check=True, capture_output=True)
    assert scan_rootfs(tree, ingester).diff_id == layer.diff_id  # deterministic
    os.unlink(tree / "run/sock")  # (changes run/'s mtime: the DiffID after it differs)
    assert _described(copy) == _described(tree)
    os.chmod(tree / "etc/group", 0o600)
    assert scan_rootfs(tree, ingester).diff_id != layer.diff_id
    assert scan_rootfs(tree, ingester, keep_xattrs=False).entries[0].xattrs is None


def _described(root: Path) -> dict[bytes, tuple]:
    """``exact_description`` with the trusted.* xattrs too (the test runs as root)."""
    return exact_description(root, xattr_prefixes=("user.", "trusted."))


def test_a_synthesised_image_unpacks_with_umoci_as_the_tree(tree, ingester, tmp_path):
    out = io.BytesIO()
    layer = scan_rootfs(tree, ingester, tar_out=out)
    created = "2026-02-03T04:05:06Z"
    config, manifest = synthesize_image(layer, "localhost/base:1", created)
    assert synthesize_image(layer, "localhost/base:1", created) == (config, manifest)
    layout = tmp_path / "layout"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    for data in (out.getvalue(), config, manifest):
        (blobs / sha256_digest(data)[7:]).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": sha256_digest(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
    bundle = tmp_path / "bundle"
    umoci_rootfs(layout, "1", bundle)
    os.unlink(tree / "run/sock")
    assert _described(bundle / "rootfs") == _described(tree)
    runtime = json.loads((bundle / "config.json").read_text())
    assert any(e.startswith("PATH=/usr/local/sbin:") for e in runtime["process"]["env"])
    doc = parse_json(config, "config")
    assert doc["rootfs"]["diff_ids"] == [layer.diff_id]
    assert (doc["os"], doc["architecture"]) == ("linux", host_platform().architecture)
    assert doc["created"] == created
    m = parse_json(manifest, "manifest")
    assert m["layers"] == [{"mediaType": ROOTFS_LAYER_TYPE, "digest": layer.diff_id,
                            "size": layer.uncompressed_size}]
    assert m["config"]["digest"] == sha256_digest(config)
    # the name is not in the config: one tree under two names is one flat tree
    other, _ = synthesize_image(layer, "localhost/other:2", created)
    assert other == config
    arm, _ = synthesize_image(layer, "x", created, platform=Platform("linux", "arm64", "v8"),
                              runtime={"Env": ["A=1"], "Cmd": ["/bin/sh"]})
    arm_doc = parse_json(arm, "config")
    assert (arm_doc["architecture"], arm_doc["variant"]) == ("arm64", "v8")
    assert arm_doc["config"] == {"Env": ["A=1"], "Cmd": ["/bin/sh"]}


def test_bad_roots_are_refused(tmp_path, ingester):
    with pytest.raises(ContainerError, match="missing: cannot open the root file system"):
        scan_rootfs(tmp_path / "missing", ingester)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ContainerError, match="file: cannot open"):
        scan_rootfs(tmp_path / "file", ingester)


def test_a_symlinked_root_is_followed_but_nothing_below_it(tmp_path, ingester):
    real = tmp_path / "real"
    _write(real / "a", b"a")
    os.symlink(tmp_path / "elsewhere", real / "dir-link")
    _write(tmp_path / "elsewhere/secret", b"not in the image")
    os.symlink(real, tmp_path / "named")
    layer = scan_rootfs(tmp_path / "named", ingester)
    assert [e.path for e in layer.entries] == [b"a", b"dir-link"]


def test_python_tarfile_reads_the_diff_id_tar(tree, ingester):
    """The tar is well-formed for Python's reader too: one member per entry, hard links to
    the first name."""
    out = io.BytesIO()
    layer = scan_rootfs(tree, ingester, tar_out=out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        members = {m.name.encode("utf-8", "surrogateescape"): m for m in tf.getmembers()}
    assert set(members) == {e.path for e in layer.entries}
    assert members[b"bin/tool-hl"].islnk() and members[b"bin/tool-hl"].linkname == "bin/tool"
    assert members[b"usr/bin/tool-x"].linkname == "bin/tool"
    assert members[b"usr/bin/hello"].pax_headers["SCHILY.xattr.user.note"] == "kept"


def test_the_flattening_tree_takes_the_scan_as_a_layer(tree, tmp_path):
    """What the publisher does with a scan: Tree.apply, contents read back from the store."""
    ingester, store = content_store(tmp_path / "objects")
    with ingester:
        layer = scan_rootfs(tree, ingester)
        flat = Tree()
        assert flat.apply(layer) == []
        prefixes = (b"user.", b"trusted.pycvmfs")
        got = listing_from_tree(flat, stored_sha256(store), xattr_prefixes=prefixes)
    os.unlink(tree / "run/sock")
    want = listing_from_disk(tree, xattr_prefixes=prefixes)
    assert compare(want, got, mtimes=True) == []
