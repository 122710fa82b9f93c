"""Images from a docker-archive tarball (``docker-archive:FILE[:NAME]``), as ``docker save``
and ``skopeo copy`` write it (the legacy and the Docker >= 25 OCI-layout forms)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pycvmfs.containers.manifest import (
    MAX_DOCUMENT,
    check_blob,
    parse_config,
    parse_index,
    parse_manifest,
    resolve_images,
)
from pycvmfs.containers.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Compression,
    sniff_compression,
)
from pycvmfs.containers.model import Descriptor, Image, Platform, parse_json, sha256_digest
from pycvmfs.containers.reference import parse_reference
from pycvmfs.containers.source_layout import local_name, split_location
from pycvmfs.errors import ContainerError

__all__ = ["DockerArchiveSource"]

_LAYER_TYPES = {Compression.NONE: "application/vnd.docker.image.rootfs.diff.tar",
                Compression.GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression.ZSTD: "application/vnd.docker.image.rootfs.diff.tar.zstd"}
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_HEX_NAME = re.compile(r"(?:.*/)?([0-9a-f]{64})(?:\.json)?")
_MAX_LINKS = 16


def _is_file(path: str) -> bool:
    return os.path.isfile(path)


class DockerArchiveSource:
    """A docker-archive: ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``) and the
    files it names, read in place (random access into the uncompressed tar).

    ``name`` selects the entry with that RepoTag (compared as normalised references, so
    ``alpine:3.19`` finds ``docker.io/library/alpine:3.19``) or ``@N`` the N-th entry; without
    it the archive must hold one image. The image's manifest is the archive's own when it is
    a Docker >= 25 archive whose ``index.json`` has a manifest for exactly these blobs;
    otherwise one is synthesised (Docker schema 2, sorted keys, compact) from the layer files
    as stored, so the same archive always gives the same manifest digest. An uncompressed
    layer's digest is the sha256 of its tar, i.e. its DiffID.
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or None
        self.description = f"docker-archive:{self.path}" + (f":{name}" if name else "")
        self._layer_digests: dict[str, tuple[str, int, Compression]] = {}
        self._blobs: dict[str, str] = {}  # digest -> member name
        self._members = self._index_members()
        self._entry = self._select(self._entries())

    @classmethod
    def from_text(cls, text: str) -> DockerArchiveSource:
        """From the part after ``docker-archive:`` (``FILE[:NAME]``, ``split_location``'s rule)."""
        path, name = split_location(text, _is_file)
        return cls(path, name)

    # -- the tar ------------------------------------------------------------------------

    def _index_members(self) -> dict[str, tarfile.TarInfo]:
        try:
            with open(self.path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise ContainerError(f"{self.description}: {self.path} is not a regular file")
                head = f.read(4)
                f.seek(0)
                if sniff_compression(head) is not Compression.NONE:
                    raise ContainerError(f"{self.description}: the archive is compressed "
                                         f"({sniff_compression(head).value}); decompress it first")
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    infos = tf.getmembers()
        except FileNotFoundError:
            raise ContainerError(f"{self.description}: {self.path} does not exist") from None
        except (tarfile.TarError, EOFError) as e:
            raise ContainerError(f"{self.description}: not a readable tar archive ({e})") from None
        except OSError as e:
            raise ContainerError(f"{self.description}: cannot read {self.path}: "
                                 f"{e.strerror}") from None
        members = {}
        for info in infos:
            members[self._inside(info.name, f"member {info.name!r}")] = info
        return members

    def _inside(self, name: str, what: str) -> str:
        """``name`` normalised relative to the archive root; one that leaves it is refused."""
        norm = posixpath.normpath(name)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise ContainerError(f"{self.description}: {what} points outside the archive; "
                                 "refused")
        return norm

    def _resolve(self, name: str, what: str) -> tarfile.TarInfo:
        """The regular file member ``name`` is, following symlinks and hard links inside
        the archive only."""
        current = self._inside(name, f"{what} {name!r}")
        for _ in range(_MAX_LINKS):
            info = self._members.get(current)
            if info is None:
                raise ContainerError(f"{self.description}: {what}: {current!r} is not in the "
                                     "archive")
            if info.issym():
                target = info.linkname
                if target.startswith("/"):
                    raise ContainerError(f"{self.description}: {what}: symlink {current!r} -> "
                                         f"{target!r} points outside the archive; refused")
                current = self._inside(posixpath.join(posixpath.dirname(current), target),
                                       f"{what}: symlink {current!r} -> {target!r}")
            elif info.islnk():
                current = self._inside(info.linkname,
                                       f"{what}: hard link {current!r} -> {info.linkname!r}")
            elif info.isreg() and not info.issparse():
                return info
            else:
                raise ContainerError(f"{self.description}: {what}: {current!r} is not a "
                                     "regular file")
        raise ContainerError(f"{self.description}: {what}: more than {_MAX_LINKS} links "
                             f"from {name!r}")

    def _reader(self, info: tarfile.TarInfo, what: str) -> BinaryIO:
        return io.BufferedReader(_MemberReader(self.path, info, what), 1 << 20)

    def _read_document(self, name: str, what: str) -> bytes:
        info = self._resolve(name, what)
        if info.size > MAX_DOCUMENT:
            raise ContainerError(f"{self.description}: {what} ({name}) has {info.size} bytes, "
                                 f"more than {MAX_DOCUMENT}; refused")
        with self._reader(info, what) as f:
            return f.read()

    # -- manifest.json ------------------------------------------------------------------

    def _entries(self) -> list[dict]:
        what = "manifest.json"
        if "manifest.json" not in self._members:
            raise ContainerError(f"{self.description}: no manifest.json (an archive from "
                                 "Docker before 1.10 is not supported)")
        try:
            doc = json.loads(self._read_document("manifest.json", what))
        except (ValueError, UnicodeDecodeError) as e:
            raise ContainerError(f"{self.description}: manifest.json is not valid JSON "
                                 f"({e})") from None
        if not isinstance(doc, list) or not doc:
            raise ContainerError(f"{self.description}: manifest.json must be a non-empty list "
                                 "of images")
        for i, e in enumerate(doc):
            ok = (isinstance(e, dict) and isinstance(e.get("Config"), str)
                  and isinstance(e.get("Layers"), list)
                  and all(isinstance(x, str) for x in e["Layers"])
                  and isinstance(e.get("RepoTags") or [], list)
                  and all(isinstance(x, str) for x in e.get("RepoTags") or []))
            if not ok:
                raise ContainerError(f"{self.description}: manifest.json entry {i} is not "
                                     '{"Config": str, "RepoTags": [str], "Layers": [str]}')
        return doc

    def _select(self, entries: list[dict]) -> dict:
        tags = [t for e in entries for t in e.get("RepoTags") or []]
        listed = ", ".join(tags) or "no RepoTags"
        if self.name is None:
            if len(entries) == 1:
                return entries[0]
            raise ContainerError(f"{self.description}: the archive holds {len(entries)} images "
                                 f"({listed}); name one as docker-archive:FILE:NAME or :@N")
        if self.name.startswith("@"):
            if not self.name[1:].isdigit() or int(self.name[1:]) >= len(entries):
                raise ContainerError(f"{self.description}: no image {self.name} (the archive "
                                     f"holds {len(entries)}, from @0)")
            return entries[int(self.name[1:])]
        if "@" in self.name:
            raise ContainerError(f"{self.description}: a docker-archive name is a tag or "
                                 "@N, not a digest")
        wanted = _normalised(self.name, self.description)
        for e in entries:
            for t in e.get("RepoTags") or []:
                if _normalised(t, f"{self.description}: RepoTag") == wanted:
                    return e
        raise ContainerError(f"{self.description}: no image tagged {wanted} in the archive "
                             f"(it has {listed})")

    def suggested_name(self) -> str:
        """The selected image's first RepoTag as a full reference (``docker save`` writes
        ``alpine:3.19``, skopeo ``docker.io/library/alpine:3.19``; both become the latter),
        else ``localhost/<file stem>:latest``."""
        if self.name is not None and not self.name.startswith("@"):
            return _normalised(self.name, self.description)
        tags = self._entry.get("RepoTags") or []
        if tags:
            return _normalised(tags[0], f"{self.description}: RepoTag")
        stem = self.path.name.split(".")[0] or self.path.name
        return local_name(stem, None)

    # -- images -------------------------------------------------------------------------

    def _config(self) -> tuple[bytes, str]:
        cfg_name = self._entry["Config"]
        what = f"config {cfg_name}"
        data = self._read_document(cfg_name, what)
        m = _HEX_NAME.fullmatch(cfg_name)
        digest = "sha256:" + m.group(1) if m else sha256_digest(data)
        check_blob(data, digest, f"{self.description}: {what}")
        self._blobs[digest] = cfg_name
        return data, digest

    def _layer_digest(self, name: str, what: str) -> tuple[str, int, Compression]:
        """The layer file's digest, size and compression, hashed once per source."""
        if name not in self._layer_digests:
            info = self._resolve(name, what)
            with self._reader(info, what) as f:
                head = f.peek(4)[:4]
                digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            m = _BLOB_NAME.fullmatch(self._inside(name, what))
            if m and digest != "sha256:" + m.group(1):
                raise ContainerError(f"{self.description}: {what} ({name}) hashes to {digest}, "
                                     "not the digest its name says; refused")
            self._layer_digests[name] = (digest, info.size, sniff_compression(head))
        return self._layer_digests[name]

    def _synthesised(self, cfg: bytes, cfg_digest: str) -> bytes:
        _doc, diff_ids, _plat = parse_config(cfg, f"{self.description}: config {cfg_digest}")
        layers = []
        for i, name in enumerate(self._entry["Layers"]):
            what = f"layer {i}"
            digest, size, comp = self._layer_digest(name, what)
            if comp is Compression.NONE and i < len(diff_ids) and digest != diff_ids[i]:
                raise ContainerError(f"{self.description}: {what} ({name}) hashes to {digest} "
                                     f"but the config's DiffID is {diff_ids[i]}; refused")
            self._blobs[digest] = name
            layers.append({"mediaType": _LAYER_TYPES[comp], "size": size, "digest": digest})
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": layers,
                    "config": {"mediaType": DOCKER_CONFIG, "size": len(cfg),
                               "digest": cfg_digest}}
        return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()

    def _stored_manifest(self, cfg_digest: str) -> tuple[bytes, str, str] | None:
        """A Docker >= 25 archive's own manifest for these exact blobs (from its OCI
        ``index.json``, one level of nested index), or None."""
        if "index.json" not in self._members or "oci-layout" not in self._members:
            return None
        hexes = [_BLOB_NAME.fullmatch(self._inside(n, "layer")) for n in self._entry["Layers"]]
        if not all(hexes):
            return None
        want_layers = ["sha256:" + m.group(1) for m in hexes]
        what = f"{self.description}: index.json"
        candidates = parse_index(parse_json(self._read_document("index.json", "index.json"),
                                            what), what)
        for desc in list(candidates):
            if desc.media_type in INDEX_TYPES:
                sub = self._blob_document(desc)
                sub_what = f"{self.description}: index {desc.digest}"
                candidates.extend(parse_index(parse_json(sub, sub_what), sub_what))
        for desc in candidates:
            if desc.media_type not in MANIFEST_TYPES:
                continue
            data = self._blob_document(desc)
            m_what = f"{self.description}: manifest {desc.digest}"
            m = parse_manifest(parse_json(data, m_what), m_what)
            if m.config.digest == cfg_digest and [d.digest for d in m.layers] == want_layers:
                return data, desc.digest, desc.media_type
        return None

    def _blob_document(self, desc: Descriptor) -> bytes:
        what = f"{desc.digest}"
        data = self._read_document(f"blobs/sha256/{desc.digest[7:]}", what)
        return check_blob(data, desc.digest, f"{self.description}: blob {what}", desc.size)

    def _fetch(self, digest: str, what: str) -> tuple[bytes, str | None]:
        return self._read_document(self._blob_member(digest), what), None

    def _blob_member(self, digest: str) -> str:
        name = self._blobs.get(digest)
        if name is not None:
            return name
        name = f"blobs/sha256/{digest[7:]}"
        if name in self._members:
            return name
        raise ContainerError(f"{self.description}: blob {digest} is not in the archive")

    def images(self, platforms: Sequence[Platform]) -> list[Image]:
        cfg, cfg_digest = self._config()
        stored = self._stored_manifest(cfg_digest)
        if stored is not None:
            top, top_digest, hint = stored
        else:
            top, top_digest, hint = self._synthesised(cfg, cfg_digest), None, DOCKER_MANIFEST
        return resolve_images(source=self.description, name=None, top=top,
                              top_digest=top_digest, top_hint=hint, fetch=self._fetch,
                              wanted=platforms, what=f"{self.description} manifest")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        name = self._blob_member(desc.digest)
        what = f"blob {desc.digest}"
        return self._reader(self._resolve(name, what), what)


def _normalised(name: str, what: str) -> str:
    try:
        return parse_reference(name).public_name()
    except ContainerError as e:
        raise ContainerError(f"{what}: {e}") from None


class _MemberReader(io.RawIOBase):
    """The bytes of one archive member, read with its own file descriptor (so readers of
    several layers never share a file position)."""

    def __init__(self, archive: Path, info: tarfile.TarInfo, what: str) -> None:
        self._fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        self._pos = info.offset_data
        self._end = info.offset_data + info.size
        self._what = f"{archive}: {what} ({info.name})"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:want]], self._pos)
        if got == 0:
            raise ContainerError(f"{self._what}: the archive ends inside the member")
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()
