"""Writing OCI image layouts for tests: layers from member lists, any compression, indexes.

A member is a dict: ``name`` (str or bytes, may be non-UTF-8), ``type`` one of
file/dir/symlink/hardlink/char/block/fifo, ``data`` (bytes, files), ``target`` (links),
``mode``, ``uid``, ``gid``, ``mtime`` (int or "sec.nsec" string for PAX), ``xattrs``
(dict str -> bytes/str, written as PAX ``SCHILY.xattr.*``), ``major``/``minor`` (devices),
``format`` ("pax" default, "gnu", "ustar") is per layer.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}


def _name(n: str | bytes) -> str:
    return n if isinstance(n, str) else n.decode("utf-8", "surrogateescape")


def layer_tar(members: list[dict], *, fmt: str = "pax") -> bytes:
    """The uncompressed tar of ``members`` (deterministic: same members, same bytes)."""
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format={"pax": tarfile.PAX_FORMAT,  # noqa: SIM115
                                                     "gnu": tarfile.GNU_FORMAT,
                                                     "ustar": tarfile.USTAR_FORMAT}[fmt],
                      encoding="utf-8", errors="surrogateescape")
    for m in members:
        kind = m.get("type", "file")
        ti = tarfile.TarInfo(_name(m["name"]))
        ti.type = _TYPES[kind]
        ti.mode = m.get("mode", 0o755 if kind == "dir" else 0o644)
        ti.uid = m.get("uid", 0)
        ti.gid = m.get("gid", 0)
        ti.uname = m.get("uname", "")
        ti.gname = m.get("gname", "")
        mt = m.get("mtime", 1_700_000_000)
        pax = {}
        if isinstance(mt, str):
            pax["mtime"] = mt
            ti.mtime = int(mt.split(".")[0])
        else:
            ti.mtime = mt
        for k, v in (m.get("xattrs") or {}).items():
            pax["SCHILY.xattr." + k] = v if isinstance(v, str) else v.decode(
                "utf-8", "surrogateescape")
        if pax:
            ti.pax_headers = pax
        if kind in ("symlink", "hardlink"):
            ti.linkname = _name(m["target"])
        if kind in ("char", "block"):
            ti.devmajor = m.get("major", 0)
            ti.devminor = m.get("minor", 0)
        data = m.get("data", b"") if kind == "file" else b""
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data) if kind == "file" else None)
    tf.close()
    return buf.getvalue()


def compress(raw: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(raw, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    members: list[dict]
    compression: str = "gzip"
    fmt: str = "pax"


@dataclass
class ImageSpec:
    layers: list[Layer]
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    created: str = "2026-01-01T00:00:00Z"
    docker_types: bool = False  # Docker schema 2 media types instead of OCI


@dataclass
class Written:
    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    layer_digests: list[str]
    diff_ids: list[str]


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.index: list[dict] = []

    def blob(self, data: bytes) -> str:
        d = sha(data)
        (self.root / "blobs" / "sha256" / d[7:]).write_bytes(data)
        return d

    def image(self, spec: ImageSpec) -> Written:
        """Write the blobs of one image (not yet named in index.json)."""
        layer_descs, diff_ids, digests = [], [], []
        for lay in spec.layers:
            raw = layer_tar(lay.members, fmt=lay.fmt)
            comp = compress(raw, lay.compression)
            d = self.blob(comp)
            digests.append(d)
            diff_ids.append(sha(raw))
            mt = LAYER_TYPES[lay.compression]
            if spec.docker_types:
                mt = {"gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                      "none": "application/vnd.docker.image.rootfs.diff.tar",
                      "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd"}[
                          lay.compression]
            layer_descs.append({"mediaType": mt, "digest": d, "size": len(comp)})
        cfg = {"created": spec.created, "architecture": spec.architecture, "os": spec.os,
               "config": {"Env": spec.env},
               "rootfs": {"type": "layers", "diff_ids": diff_ids},
               "history": [{"created": spec.created, "created_by": "ocifixture"}
                           for _ in spec.layers]}
        if spec.variant:
            cfg["variant"] = spec.variant
        if spec.entrypoint is not None:
            cfg["config"]["Entrypoint"] = spec.entrypoint
        if spec.cmd is not None:
            cfg["config"]["Cmd"] = spec.cmd
        cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        cd = self.blob(cfg_bytes)
        manifest = {"schemaVersion": 2,
                    "mediaType": ("application/vnd.docker.distribution.manifest.v2+json"
                                  if spec.docker_types
                                  else "application/vnd.oci.image.manifest.v1+json"),
                    "config": {"mediaType": ("application/vnd.docker.container.image.v1+json"
                                             if spec.docker_types else
                                             "application/vnd.oci.image.config.v1+json"),
                               "digest": cd, "size": len(cfg_bytes)},
                    "layers": layer_descs}
        mb = json.dumps(manifest, sort_keys=True).encode()
        md = self.blob(mb)
        return Written(md, mb, cd, cfg_bytes, digests, diff_ids)

    def add(self, spec: ImageSpec, tag: str | None = None) -> Written:
        """Write an image and name it ``tag`` in index.json."""
        w = self.image(spec)
        entry = {"mediaType": json.loads(w.manifest)["mediaType"], "digest": w.manifest_digest,
                 "size": len(w.manifest)}
        if tag:
            entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.index.append(entry)
        self._write_index()
        return w

    def add_multi(self, specs: list[ImageSpec], tag: str) -> tuple[str, list[Written]]:
        """An image index over several platforms, named ``tag``."""
        written, entries = [], []
        for spec in specs:
            w = self.image(spec)
            written.append(w)
            plat = {"os": spec.os, "architecture": spec.architecture}
            if spec.variant:
                plat["variant"] = spec.variant
            entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": w.manifest_digest, "size": len(w.manifest),
                            "platform": plat})
        idx = json.dumps({"schemaVersion": 2,
                          "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": entries}, sort_keys=True).encode()
        d = self.blob(idx)
        self.index.append({"mediaType": "application/vnd.oci.image.index.v1+json",
                           "digest": d, "size": len(idx),
                           "annotations": {"org.opencontainers.image.ref.name": tag}})
        self._write_index()
        return d, written

    def _write_index(self) -> None:
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": self.index}, sort_keys=True))


def base_members() -> list[dict]:
    """A small realistic root file system (an /etc/passwd umoci accepts, a shell script)."""
    return [
        {"name": "bin", "type": "dir"},
        {"name": "etc", "type": "dir"},
        {"name": "etc/passwd", "data": b"root:x:0:0:root:/root:/bin/sh\n"},
        {"name": "etc/group", "data": b"root:x:0:\n"},
        {"name": "usr", "type": "dir"},
        {"name": "usr/bin", "type": "dir"},
        {"name": "usr/bin/hello", "mode": 0o755,
         "data": b"#!/bin/sh\necho hello from the image \"$@\"\n"},
    ]


def section6_image(compressions: tuple[str, str, str] = ("gzip", "none", "gzip")) -> ImageSpec:
    """The 3-layer fixture of docs §6.3: whiteouts, opaque dirs, type changes, hard links.
    (umoci 0.4.7, the oracle, reads gzip and plain layers, not zstd.)"""
    l0 = [
        {"name": "etc", "type": "dir"},
        {"name": "etc/passwd", "data": b"root:x:0:0:root:/root:/bin/sh\n"},
        {"name": "etc/old.conf", "data": b"old\n"},
        {"name": "etc/hosts", "data": b"127.0.0.1 localhost\n"},
        {"name": "opt/app", "type": "dir"},
        {"name": "opt/app/a.txt", "data": b"a\n"},
        {"name": "opt/app/sub", "type": "dir"},
        {"name": "opt/app/sub/deep", "data": b"deep\n"},
        {"name": "usr/bin", "type": "dir"},
        {"name": "usr/bin/tool", "mode": 0o4755, "data": b"#!/bin/sh\necho tool\n"},
        {"name": "usr/bin/tool2", "type": "hardlink", "target": "usr/bin/tool", "mode": 0o4755},
        {"name": "lib", "type": "symlink", "target": "usr/lib"},
        {"name": "usr/lib", "type": "dir"},
        {"name": "usr/lib/libx.so", "data": b"\x7fELF fake\n"},
        {"name": "var/data", "type": "dir"},
        {"name": "var/data/f", "data": b"f\n"},
        {"name": "home", "type": "dir", "mode": 0o700, "uid": 1000, "gid": 1000},
        {"name": "usr/bin/ping", "mode": 0o755, "data": b"ping\n",
         "xattrs": {"user.test": "hello"}},
    ]
    l1 = [
        {"name": "etc/.wh.old.conf"},
        {"name": "opt/app/new.txt", "data": b"new\n"},
        {"name": "opt/app/.wh..wh..opq"},
        {"name": "var/.wh.data"},
        {"name": "etc/hosts", "type": "dir"},
        {"name": "etc/hosts/x", "data": b"x\n"},
        {"name": "usr/lib", "data": b"now a file\n"},
    ]
    l2 = [
        {"name": "var/data", "type": "dir"},
        {"name": "var/data/g", "data": b"g\n"},
        {"name": "tmp", "type": "dir", "mode": 0o1777},
        {"name": "tmp/.wh.ghost"},
        {"name": "usr/bin/.wh.tool"},
    ]
    c0, c1, c2 = compressions
    return ImageSpec([Layer(l0, c0), Layer(l1, c1), Layer(l2, c2)])


def layer_blob(members: list[dict], compression: str = "gzip", *, fmt: str = "pax"
               ) -> tuple[bytes, dict, str]:
    """One layer as its blob, its descriptor (JSON) and its DiffID, without a layout."""
    raw = layer_tar(members, fmt=fmt)
    blob = compress(raw, compression)
    return blob, {"mediaType": LAYER_TYPES[compression], "digest": sha(blob),
                  "size": len(blob)}, sha(raw)


def runnable_members() -> list[dict]:
    """A root file system that runs: this machine's dash as /bin/sh with the libraries it
    needs (found with ldd), /etc/passwd, and /usr/bin/hello, a shell script entrypoint."""
    import shutil
    import subprocess

    sh = shutil.which("dash") or "/bin/sh"
    libs = []
    for line in subprocess.run(["ldd", sh], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(path)
    members: list[dict] = [{"name": "bin", "type": "dir"}, {"name": "etc", "type": "dir"},
                           {"name": "usr", "type": "dir"}, {"name": "usr/bin", "type": "dir"}]
    dirs = {"bin", "etc", "usr", "usr/bin"}
    for lib in libs:
        rel = lib.lstrip("/")
        parent = os.path.dirname(rel)
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                members.append({"name": d, "type": "dir"})
        with open(os.path.realpath(lib), "rb") as f:
            members.append({"name": rel, "mode": 0o755, "data": f.read()})
    with open(os.path.realpath(sh), "rb") as f:
        members.append({"name": "bin/sh", "mode": 0o755, "data": f.read()})
    members += [
        {"name": "etc/passwd", "data": b"root:x:0:0:root:/root:/bin/sh\n"},
        {"name": "etc/group", "data": b"root:x:0:\n"},
        {"name": "usr/bin/hello", "mode": 0o755,
         "data": b"#!/bin/sh\necho \"hello from the image: $GREETING $*\"\n"},
    ]
    return members


def runnable_image() -> ImageSpec:
    """Two layers: the runnable base, then a layer that deletes a file and adds one."""
    base = [*runnable_members(), {"name": "etc/motd", "data": b"to be deleted\n"}]
    top = [{"name": "etc/.wh.motd"}, {"name": "etc/release", "data": b"pycvmfs test 1\n"}]
    return ImageSpec([Layer(base), Layer(top)],
                     env=["PATH=/usr/bin:/bin", "GREETING=world"],
                     entrypoint=["/usr/bin/hello"], cmd=["from", "cvmfs"])


def rich_image(compressions: tuple[str, ...] = ("gzip", "none", "gzip", "gzip")) -> ImageSpec:
    """Four layers for the umoci oracle beyond §6.3: long (GNU and PAX) and non-UTF-8 names,
    devices and FIFOs, user xattrs, setuid/setgid/sticky, PAX mtimes with nanoseconds, hard
    links within a directory, across directories and to lower layers (one name whited out
    later), a GNU-format layer, same-layer duplicates and type changes, opaque directories,
    a ``./`` member."""
    long_dir = "long-" + "d" * 120
    name255 = "n" * 255
    l0 = [
        *base_members(),
        {"name": "./", "type": "dir", "mode": 0o755, "mtime": 1_600_000_000},
        {"name": f"{long_dir}/{name255}", "data": b"a 255-byte name\n"},
        {"name": b"latin1-caf\xe9", "type": "dir", "mode": 0o750, "uid": 5, "gid": 6},
        {"name": b"latin1-caf\xe9/\xff\xfe-file", "data": b"not utf-8\n", "mode": 0o640},
        {"name": "dev", "type": "dir"},
        {"name": "dev/null", "type": "char", "major": 1, "minor": 3, "mode": 0o666},
        {"name": "dev/loop9", "type": "block", "major": 7, "minor": 9, "mode": 0o660, "gid": 6},
        {"name": "dev/fifo", "type": "fifo", "mode": 0o620, "uid": 2},
        {"name": "tmp", "type": "dir", "mode": 0o1777},
        {"name": "usr/bin/sgid", "data": b"sgid\n", "mode": 0o2755, "gid": 50},
        {"name": "usr/bin/suid", "data": b"suid\n", "mode": 0o4711},
        {"name": "usr/bin/suid-link", "type": "hardlink", "target": "usr/bin/suid"},
        {"name": "etc/xattr", "data": b"x\n", "mtime": "1700000001.5",
         "xattrs": {"user.one": "1", "user.bin": b"\x00\x01\xfe"}},
        {"name": "lib64/libz.so.1", "data": b"\x7fELF libz\n"},
        {"name": "lib64/libz.so", "type": "symlink", "target": "libz.so.1"},
        {"name": "opt/keep/old", "data": b"old\n"},
        {"name": "opt/keep/sub/deep", "data": b"deep\n"},
        {"name": "swap", "type": "dir"},
        {"name": "swap/child", "data": b"child\n"},
        {"name": "flip/lower-child", "data": b"lower\n"},
        {"name": "opq-file/child", "data": b"child\n"},
    ]
    l1 = [
        {"name": f"{long_dir}/hard", "type": "hardlink", "target": f"{long_dir}/{name255}"},
        {"name": "usr/lib/libz-copy", "type": "hardlink", "target": "lib64/libz.so.1"},
        {"name": "lib64/libz-same-dir", "type": "hardlink", "target": "lib64/libz.so.1"},
        {"name": "usr/bin/.wh.suid"},
        {"name": "opt/keep/new", "data": b"new\n"},
        {"name": "opt/keep/.wh..wh..opq"},
        {"name": "swap", "data": b"swap is a file now\n"},
        {"name": "twice", "data": b"first\n"},
        {"name": "twice", "type": "dir", "mode": 0o700},
        {"name": "twice", "data": b"second\n", "mode": 0o600},
        {"name": "flip", "data": b"a file for a moment\n"},
        {"name": "flip", "type": "dir", "mode": 0o750},
        {"name": "flip/new", "data": b"new\n"},
    ]
    l2 = [
        {"name": "swap", "type": "dir", "mode": 0o711},
        {"name": "swap/again", "data": b"again\n"},
        {"name": "lib64/.wh.libz.so.1"},
        {"name": "dev/.wh.fifo"},
        {"name": "dev/fifo", "type": "fifo", "mode": 0o600},
        {"name": "var/log/app", "type": "dir", "mode": 0o2770, "gid": 4},
        {"name": "opq-file", "data": b"a file, then an opaque marker below it\n"},
        {"name": "opq-file/.wh..wh..opq"},
        {"name": "opq-missing/.wh..wh..opq"},
        {"name": "etc/xattr", "data": b"x2\n", "mtime": "1700000002.25",
         "xattrs": {"user.two": "2", "user.bin": b"\x00\x01\xfe"}},
    ]
    l3 = [
        {"name": "deep/" + "/".join(["p" * 60] * 5) + "/file", "data": b"deep path\n"},
        {"name": "usr/bin/hello2", "type": "hardlink", "target": "usr/bin/hello"},
    ]
    c0, c1, c2, c3 = compressions
    return ImageSpec([Layer(l0, c0), Layer(l1, c1, fmt="gnu"), Layer(l2, c2), Layer(l3, c3)])
