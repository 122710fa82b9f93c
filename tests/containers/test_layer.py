"""The layer reader: digests, compressions, tar dialects, whiteouts, hostile and broken input."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest

from containers.ocifixture import compress, layer_blob, layer_tar, sha
from containers.treecompare import content_store, stored_sha256
from pycvmfs.containers.layer import Kind, LayerChanges, normalise_path, read_layer
from pycvmfs.containers.model import Descriptor
from pycvmfs.errors import ContainerError
from pycvmfs.publish.tarball import STREAM_OVER

CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def read(sink, members, compression="gzip", *, fmt="pax", **options) -> LayerChanges:
    blob, desc, diff_id = layer_blob(members, compression, fmt=fmt)
    return read_blob(sink, blob, desc, diff_id, **options)


def read_blob(sink, blob, desc, diff_id, **options) -> LayerChanges:
    return read_layer(io.BytesIO(blob), Descriptor.from_json(desc, "test"), diff_id, sink[0],
                      what="test image", **options)


def by_path(changes: LayerChanges) -> dict:
    return {e.path: e for e in changes.entries}


def data_sha(sink, entry) -> str:
    sink[0].flush()
    return stored_sha256(sink[1])(entry.content.result(timeout=30))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_attributes_of_every_kind(sink):
    members = [
        {"name": "etc", "type": "dir", "mode": 0o750, "uid": 3, "gid": 4, "mtime": 1234},
        {"name": "etc/f", "data": b"hello\n", "mode": 0o4755, "uid": 1000, "gid": 100,
         "mtime": "1700000000.123456789"},
        {"name": "tmp", "type": "dir", "mode": 0o1777},
        {"name": "bin/sg", "data": b"x", "mode": 0o2711},
        {"name": "etc/l", "type": "symlink", "target": "../abs/../x"},
        {"name": "etc/abs", "type": "symlink", "target": "/usr/bin/env"},
        {"name": "dev/null", "type": "char", "major": 1, "minor": 3, "mode": 0o666},
        {"name": "dev/sda", "type": "block", "major": 8, "minor": 0, "mode": 0o660, "gid": 6},
        {"name": "run/fifo", "type": "fifo", "mode": 0o600},
        {"name": "empty", "data": b""},
    ]
    changes = read(sink, members)
    e = by_path(changes)
    assert [x.path for x in changes.entries] == [
        b"etc", b"etc/f", b"tmp", b"bin/sg", b"etc/l", b"etc/abs", b"dev/null", b"dev/sda",
        b"run/fifo", b"empty"]
    assert (e[b"etc"].kind, e[b"etc"].mode, e[b"etc"].uid, e[b"etc"].gid) == (Kind.DIR, 0o750,
                                                                             3, 4)
    assert (e[b"etc"].mtime, e[b"etc"].mtimens) == (1234, None)
    f = e[b"etc/f"]
    assert (f.kind, f.mode, f.uid, f.gid, f.size) == (Kind.FILE, 0o4755, 1000, 100, 6)
    assert (f.mtime, f.mtimens) == (1700000000, 123456789)
    assert data_sha(sink, f) == digest(b"hello\n")
    assert data_sha(sink, e[b"empty"]) == digest(b"")
    assert e[b"tmp"].mode == 0o1777 and e[b"bin/sg"].mode == 0o2711
    assert e[b"etc/l"].target == b"../abs/../x" and e[b"etc/abs"].target == b"/usr/bin/env"
    assert (e[b"dev/null"].kind, e[b"dev/null"].rdev) == (Kind.CHAR, os.makedev(1, 3))
    assert (e[b"dev/sda"].kind, e[b"dev/sda"].rdev, e[b"dev/sda"].gid) == (
        Kind.BLOCK, os.makedev(8, 0), 6)
    assert (e[b"run/fifo"].kind, e[b"run/fifo"].mode) == (Kind.FIFO, 0o600)
    assert changes.whiteouts == changes.opaque == [] and changes.warnings == []
    raw = layer_tar(members)
    assert changes.diff_id == sha(raw) and changes.uncompressed_size == len(raw)


def test_xattrs_kept_dropped_and_turned_off(sink):
    xattrs = {"user.a": "1", "trusted.b": "2", "trusted.overlay.opaque": "y",
              "security.capability": CAP, "security.selinux": "system_u:object_r:bin_t",
              "system.posix_acl_access": "x"}
    members = [{"name": "f", "data": b"x", "xattrs": xattrs}]
    e = read(sink, members).entries[0]
    assert e.xattrs == {b"user.a": b"1", b"trusted.b": b"2", b"security.capability": CAP}
    assert read(sink, members, keep_xattrs=False).entries[0].xattrs is None


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_long_and_non_utf8_names(sink, fmt):
    long_dir = "d" * 150
    component = "n" * 255
    raw_name = b"caf\xe9/\xff\xfe"
    members = [{"name": f"{long_dir}/{component}", "data": b"long"},
               {"name": raw_name, "data": b"latin1"},
               {"name": f"{long_dir}/link", "type": "symlink", "target": "t" * 300},
               {"name": f"{long_dir}/hard", "type": "hardlink",
                "target": f"{long_dir}/{component}"}]
    e = by_path(read(sink, members, fmt=fmt))
    long_path = f"{long_dir}/{component}".encode()
    assert data_sha(sink, e[long_path]) == digest(b"long")
    assert data_sha(sink, e[raw_name]) == digest(b"latin1")
    assert e[f"{long_dir}/link".encode()].target == b"t" * 300
    hard = e[f"{long_dir}/hard".encode()]
    assert hard.kind is Kind.FILE and hard.link == e[long_path].link is not None


@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar"])
def test_tar_dialects_agree(sink, fmt):
    big_id = 3_000_000 if fmt != "ustar" else 2_000_000  # over ustar's 7 octal digits
    members = [{"name": "p" * 150 + "/" + "n" * 90, "data": b"split name"},
               {"name": "owner", "data": b"o", "uid": big_id, "gid": big_id + 1,
                "mtime": 1_650_000_000}]
    e = by_path(read(sink, members, fmt=fmt))
    assert data_sha(sink, e[("p" * 150 + "/" + "n" * 90).encode()]) == digest(b"split name")
    assert (e[b"owner"].uid, e[b"owner"].gid, e[b"owner"].mtime) == (big_id, big_id + 1,
                                                                     1_650_000_000)


class _FailingSource(io.RawIOBase):
    def __init__(self, data: bytes, fail_after: int) -> None:
        self.data, self.pos, self.fail_after = data, 0, fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.pos >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        n = min(len(b), self.fail_after - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_a_source_that_fails_midway(sink):
    blob, desc, diff_id = layer_blob([{"name": "f", "data": os.urandom(100_000)}], "none")
    raw = io.BufferedReader(_FailingSource(blob, 50_000))
    with pytest.raises(ContainerError, match=r"test image: layer sha256:[0-9a-f]{64}: reading "
                                             r"the blob failed \(connection reset by peer\)"):
        read_layer(raw, Descriptor.from_json(desc, "t"), diff_id, sink[0], what="test image")


def test_compressions_give_the_same_changes(sink):
    members = [{"name": "a/b", "data": b"x" * 5000, "xattrs": {"user.k": "v"}},
               {"name": "a/.wh.c"}, {"name": "d/.wh..wh..opq"}, {"name": "h", "type": "hardlink",
                                                                 "target": "a/b"}]
    results = []
    for how in ("gzip", "zstd", "none"):
        changes = read(sink, members, how)
        assert changes.warnings == []
        results.append((changes.whiteouts, changes.opaque, changes.diff_id,
                        changes.uncompressed_size,
                        [(e.path, e.kind, e.mode, e.size, e.xattrs, e.link, data_sha(sink, e))
                         for e in changes.entries]))
    assert results[0] == results[1] == results[2]


def test_media_type_contradicted_by_the_magic_bytes(sink):
    raw = layer_tar([{"name": "f", "data": b"gz"}])
    blob = compress(raw, "gzip")
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(blob),
            "size": len(blob)}
    changes = read_blob(sink, blob, desc, sha(raw))
    assert data_sha(sink, changes.entries[0]) == digest(b"gz")
    assert len(changes.warnings) == 1 and "says none but the data is gzip" in changes.warnings[0]
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    blob2 = raw
    desc.update(digest=sha(blob2), size=len(blob2))
    changes = read_blob(sink, blob2, desc, sha(raw))
    assert "says zstd but the data is none" in changes.warnings[0]
    desc["mediaType"] = "application/vnd.example.tar"
    with pytest.raises(ContainerError, match="unsupported layer media type"):
        read_blob(sink, blob2, desc, sha(raw))


def test_whiteout_markers(sink):
    changes = read(sink, [
        {"name": "etc/.wh.passwd"},
        {"name": ".wh.top"},
        {"name": "opt/.wh..wh..opq"},
        {"name": ".wh..wh..opq"},
        {"name": "x/.wh..wh..opqX"},
        {"name": "x/.wh..wh.y"},
        {"name": "x/.wh."},
        {"name": "x/new", "data": b"n"},
    ])
    assert changes.whiteouts == [b"etc/passwd", b"top", b"x/.wh..opqX", b"x/.wh.y"]
    assert changes.opaque == [b"", b"opt"]
    assert [e.path for e in changes.entries] == [b"x/new"]
    assert len(changes.warnings) == 1 and "bare whiteout marker b'x/.wh.'" in changes.warnings[0]


def test_duplicates_and_type_changes_within_a_layer(sink):
    changes = read(sink, [
        {"name": "f", "data": b"first"},
        {"name": "f", "data": b"second", "mode": 0o600},
        {"name": "d", "type": "dir", "mode": 0o700},
        {"name": "d/child", "data": b"c"},
        {"name": "d", "type": "dir", "mode": 0o750},  # dir on dir: attributes, children kept
        {"name": "g", "data": b"g"},
        {"name": "g", "type": "dir"},  # file -> dir: the lower g is gone too -> opaque
        {"name": "g/in", "data": b"i"},
        {"name": "h", "type": "dir"},
        {"name": "h/lost", "data": b"l"},
        {"name": "h", "data": b"now a file"},  # dir -> file: its children go
        {"name": "k", "data": b"1"},
        {"name": "k", "type": "dir"},
        {"name": "k", "data": b"2"},  # file -> dir -> file: a file, not opaque
    ])
    e = by_path(changes)
    assert [x.path for x in changes.entries] == [b"f", b"d", b"d/child", b"g", b"g/in", b"h",
                                                b"k"]
    assert data_sha(sink, e[b"f"]) == digest(b"second") and e[b"f"].mode == 0o600
    assert e[b"d"].mode == 0o750 and e[b"g"].kind is Kind.DIR
    assert data_sha(sink, e[b"h"]) == digest(b"now a file")
    assert data_sha(sink, e[b"k"]) == digest(b"2")
    assert changes.opaque == [b"g"]
    assert len(changes.warnings) == 6
    assert all("appears more than once; the last one wins" in w for w in changes.warnings)


def test_a_file_in_the_way_of_a_parent_becomes_a_made_up_directory(sink):
    changes = read(sink, [{"name": "p", "data": b"file"}, {"name": "p/q", "data": b"q"}])
    e = by_path(changes)
    assert (e[b"p"].kind, e[b"p"].mode, e[b"p"].uid, e[b"p"].mtime) == (Kind.DIR, 0o755, 0, 0)
    assert changes.opaque == [b"p"] and "replaced by one to hold" in changes.warnings[0]
    changes = read(sink, [{"name": "a/b/c", "data": b"c"}, {"name": "a", "data": b"file"},
                          {"name": "a/b/d", "data": b"d"}])
    assert [(e.path, e.kind) for e in changes.entries] == [
        (b"a", Kind.DIR), (b"a/b/d", Kind.FILE)]
    assert changes.opaque == [b"a"]
    changes = read(sink, [{"name": "d", "data": b"file"}, {"name": "d/.wh..wh..opq"},
                          {"name": "e/.wh..wh..opq"}])
    assert changes.opaque == [b"e"] and [e.path for e in changes.entries] == [b"d"]


def test_parents_come_before_children(sink):
    changes = read(sink, [{"name": "a/b/c", "data": b"c"}, {"name": "a/b", "type": "dir"},
                          {"name": "z", "data": b"z"}, {"name": "a", "type": "dir"}])
    assert [e.path for e in changes.entries] == [b"a", b"a/b", b"a/b/c", b"z"]
    deep = ["/".join(["d"] * n) for n in range(3000, 0, -1)]  # deepest first
    changes = read(sink, [{"name": deep[0] + "/f", "data": b"f"},
                          *({"name": d, "type": "dir"} for d in deep)], "none")
    assert [e.path for e in changes.entries] == [d.encode() for d in reversed(deep)] + [
        deep[0].encode() + b"/f"]


def test_hard_links(sink):
    changes = read(sink, [
        {"name": "bin/tool", "data": b"tool", "mode": 0o4755, "uid": 7,
         "xattrs": {"user.x": "1"}},
        {"name": "sbin/tool2", "type": "hardlink", "target": "bin/tool", "mode": 0o644},
        {"name": "bin/tool3", "type": "hardlink", "target": "./bin//tool"},
        {"name": "s", "type": "symlink", "target": "bin"},
        {"name": "s2", "type": "hardlink", "target": "s"},
        {"name": "lower", "type": "hardlink", "target": "/usr/lib/libc.so"},
        {"name": "lower2", "type": "hardlink", "target": "lower"},
        {"name": "self", "data": b"s"},
        {"name": "self", "type": "hardlink", "target": "self"},
        {"name": "bin/tool", "data": b"replaced later"},
    ])
    e = by_path(changes)
    tool2, tool3 = e[b"sbin/tool2"], e[b"bin/tool3"]
    assert tool2.kind is tool3.kind is Kind.FILE
    assert tool2.link == tool3.link is not None and e[b"bin/tool"].link != tool2.link
    assert (tool2.mode, tool2.uid, tool2.xattrs) == (0o4755, 7, {b"user.x": b"1"})
    assert data_sha(sink, tool2) == data_sha(sink, tool3) == digest(b"tool")
    assert data_sha(sink, e[b"bin/tool"]) == digest(b"replaced later")
    assert (e[b"s2"].kind, e[b"s2"].target) == (Kind.SYMLINK, b"bin")
    assert (e[b"lower"].kind, e[b"lower"].target) == (Kind.HARDLINK, b"usr/lib/libc.so")
    assert (e[b"lower2"].kind, e[b"lower2"].target) == (Kind.HARDLINK, b"usr/lib/libc.so")
    assert data_sha(sink, e[b"self"]) == digest(b"s")
    assert any("to itself skipped" in w for w in changes.warnings)
    with pytest.raises(ContainerError, match=r"hard link b'l' points at the directory b'd'"):
        read(sink, [{"name": "d", "type": "dir"}, {"name": "l", "type": "hardlink",
                                                   "target": "d"}])


def test_a_dot_member_sets_the_root(sink):
    changes = read(sink, [{"name": "./", "type": "dir", "mode": 0o700, "uid": 5},
                          {"name": "./a", "data": b"a"}, {"name": "/abs/b", "data": b"b"}])
    assert changes.root is not None and (changes.root.mode, changes.root.uid) == (0o700, 5)
    assert [e.path for e in changes.entries] == [b"a", b"abs/b"]
    with pytest.raises(ContainerError, match="names the root but is not a directory"):
        read(sink, [{"name": ".", "data": b"x"}])


@pytest.mark.parametrize("name, message", [
    ("../etc/passwd", r"member name b'../etc/passwd' escapes the root"),
    ("a/../../x", r"escapes the root"),
    ("a/.wh.b/c", r"whiteout name used as a directory"),
    ("a/.wh...", r"whiteout marker b'a/.wh...' names '..'"),
])
def test_hostile_names_are_refused(sink, name, message):
    with pytest.raises(ContainerError, match=f"test image: layer sha256:[0-9a-f]{{64}}: "
                                             f"member .*{message}"):
        read(sink, [{"name": "ok", "data": b"fine"}, {"name": name, "data": b"x"}])


def test_hostile_link_targets_and_nul_are_refused(sink):
    with pytest.raises(ContainerError, match=r"hard link b'l': target b'../../x' escapes"):
        read(sink, [{"name": "l", "type": "hardlink", "target": "../../x"}])
    with pytest.raises(ContainerError, match=r"hard link b'l' points at the root"):
        read(sink, [{"name": "l", "type": "hardlink", "target": "a/.."}])
    ti = tarfile.TarInfo("x")
    ti.pax_headers = {"path": "a\0b"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(b""))
    raw = buf.getvalue()
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(raw),
            "size": len(raw)}
    with pytest.raises(ContainerError, match="contains a NUL byte"):
        read_blob(sink, raw, desc, sha(raw))
    assert normalise_path("/./a/./b/../c/", "x") == b"a/c"


def test_digest_size_and_diff_id_mismatches(sink):
    blob, desc, diff_id = layer_blob([{"name": "f", "data": b"content"}])
    label = f"test image: layer {desc['digest']}"
    with pytest.raises(ContainerError, match=f"{label}: the blob's sha256 is sha256:"):
        read_blob(sink, blob[:-1] + bytes([blob[-1] ^ 1]), desc, diff_id)
    with pytest.raises(ContainerError, match=f"{label}: more than the {len(blob) - 1} bytes"):
        read_blob(sink, blob, dict(desc, size=len(blob) - 1), diff_id)
    with pytest.raises(ContainerError, match=f"{label}: {len(blob)} bytes, the manifest says "
                                             f"{len(blob) + 1}"):
        read_blob(sink, blob, dict(desc, size=len(blob) + 1), diff_id)
    with pytest.raises(ContainerError, match=f"{label}: {len(blob) - 5} bytes, the manifest"):
        read_blob(sink, blob[:-5], desc, diff_id)  # truncated: the size says so
    other = sha(b"other")
    with pytest.raises(ContainerError, match=f"{label}: the uncompressed layer's sha256 is "
                                             f"{diff_id}, the image config's DiffID says {other}"):
        read_blob(sink, blob, desc, other)
    with pytest.raises(ContainerError, match="DiffID: 'md5:x' is not a sha256 digest"):
        read_blob(sink, blob, desc, "md5:x")


def test_corrupt_and_truncated_archives_with_matching_digests(sink):
    raw = layer_tar([{"name": "f", "data": os.urandom(3000)}])
    for how in ("gzip", "zstd", "none"):
        end = raw.rstrip(b"\0")  # no end-of-archive marker
        end += b"\0" * (-len(end) % 512)
        blob = compress(end, how)
        desc = {"mediaType": f"application/vnd.oci.image.layer.v1.tar+{how}", "digest": sha(blob),
                "size": len(blob)}
        if how == "none":
            desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        with pytest.raises(ContainerError, match=r"corrupt or truncated layer \(after member "
                                                 r"'f': the data ends without an end-of-archive"):
            read_blob(sink, blob, desc, sha(end))
    gz = bytearray(compress(raw, "gzip"))
    gz[len(gz) // 2] ^= 0xFF
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(gz),
            "size": len(gz)}
    with pytest.raises(ContainerError, match="corrupt or truncated layer"):
        read_blob(sink, bytes(gz), desc, sha(raw))
    cut = compress(raw, "gzip")[:-12]  # the gzip trailer missing
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(cut),
            "size": len(cut)}
    with pytest.raises(ContainerError, match="corrupt or truncated layer"):
        read_blob(sink, cut, desc, sha(raw))


def test_bytes_after_the_end_of_the_archive_are_accepted(sink):
    raw = layer_tar([{"name": "f", "data": b"f"}]) + b"trailing junk"
    blob = compress(raw, "gzip")
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(blob),
            "size": len(blob)}
    changes = read_blob(sink, blob, desc, sha(raw))
    assert changes.uncompressed_size == len(raw) and [e.path for e in changes.entries] == [b"f"]


def test_large_files_are_streamed_and_the_size_cap_holds(tmp_path):
    big = os.urandom(1 << 16) * ((STREAM_OVER >> 16) + 2)
    ing, store = content_store(tmp_path / "store", max_file_size=len(big) + 1)
    with ing:
        e = read((ing, store), [{"name": "big", "data": big}, {"name": "small", "data": b"s"}],
                 "none").entries
        assert data_sha((ing, store), e[0]) == digest(big) and e[0].size == len(big)
        assert data_sha((ing, store), e[1]) == digest(b"s")
    ing, store = content_store(tmp_path / "store2", max_file_size=len(big) - 1)
    with ing, pytest.raises(ContainerError, match=r"member 'big': file b'big': \d+ bytes is "
                                                  r"over the file size limit"):
        read((ing, store), [{"name": "big", "data": big}], "none")


def test_sparse_members_are_read_dense(sink, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(1 << 20)
        f.write(b"middle")
        f.seek(3 << 20)
        f.write(b"tail")
    dense = (src / "sparse").read_bytes()
    for fmt in ("gnu", "posix"):
        archive = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", src, "-cf", archive,
                        "sparse"], check=True)
        raw = archive.read_bytes()
        assert b"GNU.sparse" in raw if fmt == "posix" else raw[156:157] == b"S"
        desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(raw),
                "size": len(raw)}
        e = read_blob(sink, raw, desc, sha(raw)).entries
        assert [x.path for x in e] == [b"sparse"] and e[0].size == len(dense)
        assert data_sha(sink, e[0]) == digest(dense)
