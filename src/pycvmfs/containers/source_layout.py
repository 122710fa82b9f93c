"""Images from an OCI image layout directory (``oci:DIR[:TAG]``)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from pycvmfs.containers.manifest import MAX_DOCUMENT, parse_index, resolve_images
from pycvmfs.containers.model import Descriptor, Image, Platform, digest_hex, parse_json
from pycvmfs.containers.reference import parse_reference
from pycvmfs.errors import ContainerError

__all__ = ["REF_NAME", "OciLayoutSource", "local_name", "split_location"]

REF_NAME = "org.opencontainers.image.ref.name"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def split_location(text: str, exists: Callable[[str], bool]) -> tuple[str, str | None]:
    """Split ``PATH[:SUFFIX]`` where PATH may itself contain ``:``.

    The rule: ``text`` as a whole when ``exists(text)``; else the split at the leftmost
    ``:`` whose left side ``exists`` (skopeo splits at the first ``:``, which this equals for
    paths without a colon, and a suffix may contain ``:`` as an OCI ``ref.name`` may); else
    the split at the first ``:`` (so the error names the path skopeo would have tried).
    """
    if exists(text):
        return text, None
    for i, ch in enumerate(text):
        if ch == ":" and i > 0 and exists(text[:i]):
            return text[:i], text[i + 1:]
    path, sep, rest = text.partition(":")
    return path, (rest if sep else None)


def local_name(stem: str, tag: str | None) -> str:
    """``localhost/<stem>:<tag>``, podman's name for an image with no registry: the stem
    lower-cased with every run of other characters than ``a-z0-9`` turned into ``-``, a
    tag that is not a valid Docker tag replaced by ``latest``."""
    repo = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "image"
    if tag:
        try:
            return parse_reference(f"localhost/{repo}:{tag}").public_name()
        except ContainerError:
            pass
    return f"localhost/{repo}:latest"


def _is_layout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "oci-layout"))


class OciLayoutSource:
    """An OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``.

    ``ref`` selects the ``index.json`` entry whose ``org.opencontainers.image.ref.name``
    annotation equals it, or ``@N`` the N-th entry (from 0); without it the layout must hold
    exactly one entry. Blobs are regular files inside the layout (a symlink is followed only
    when it stays inside the layout's ``blobs`` directory).
    """

    def __init__(self, path: str | os.PathLike[str], ref: str | None = None) -> None:
        self.path = Path(path)
        self.ref = ref or None
        self.description = f"oci:{self.path}" + (f":{ref}" if ref else "")
        self._selected: Descriptor | None = None
        if not self.path.is_dir():
            raise ContainerError(f"{self.description}: {self.path} is not a directory")
        root = os.path.realpath(self.path)
        self._blobs = os.path.realpath(self.path / "blobs" / "sha256")
        if os.path.commonpath([root, self._blobs]) != root:
            raise ContainerError(f"{self.description}: blobs/sha256 leads outside the layout "
                                 f"({self._blobs}); refused")
        marker = self._read_document(self.path / "oci-layout", "oci-layout", 4096)
        version = parse_json(marker, f"{self.description}: oci-layout").get("imageLayoutVersion")
        if version != "1.0.0":
            raise ContainerError(f"{self.description}: oci-layout imageLayoutVersion "
                                 f"{version!r}, expected '1.0.0'")

    @classmethod
    def from_text(cls, text: str) -> OciLayoutSource:
        """From the part after ``oci:`` (``DIR[:TAG]``, see ``split_location``)."""
        path, ref = split_location(text, _is_layout)
        return cls(path, ref)

    def _open(self, path: Path, what: str) -> BinaryIO:
        """A regular file of the layout (symlinks only when they stay inside ``blobs``)."""
        target = str(path)
        if path.is_symlink():
            target = os.path.realpath(path)
            if os.path.commonpath([target, self._blobs]) != self._blobs:
                raise ContainerError(f"{what}: {path} is a symlink pointing outside the "
                                     f"layout's blobs ({target}); refused")
        try:
            fd = os.open(target, _READ)
        except FileNotFoundError:
            raise ContainerError(f"{what}: {path} is missing") from None
        except OSError as e:
            raise ContainerError(f"{what}: cannot open {path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ContainerError(f"{what}: {path} is not a regular file")
        return os.fdopen(fd, "rb")

    def _read_document(self, path: Path, what: str, cap: int = MAX_DOCUMENT) -> bytes:
        with self._open(path, f"{self.description}: {what}") as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise ContainerError(f"{self.description}: {what} ({path}) is larger than "
                                 f"{cap} bytes; refused")
        return data

    def _blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest_hex(digest)

    def _fetch(self, digest: str, what: str) -> tuple[bytes, str | None]:
        return self._read_document(self._blob_path(digest), what), None

    def entries(self) -> list[Descriptor]:
        """The descriptors ``index.json`` lists."""
        what = f"{self.description}: index.json"
        doc = parse_json(self._read_document(self.path / "index.json", "index.json"), what)
        return parse_index(doc, what)

    def selected(self) -> Descriptor:
        """The ``index.json`` entry ``ref`` names (or the only one)."""
        if self._selected is None:
            self._selected = self._select(self.entries())
        return self._selected

    def _select(self, entries: list[Descriptor]) -> Descriptor:
        names = [d.annotation(REF_NAME) for d in entries]
        listed = ", ".join(repr(n) for n in names if n) or "no names"
        if self.ref is None:
            if len(entries) == 1:
                return entries[0]
            raise ContainerError(f"{self.description}: the layout holds {len(entries)} "
                                 f"images ({listed}); name one as oci:DIR:TAG")
        if self.ref.startswith("@") and self.ref[1:].isdigit():
            i = int(self.ref[1:])
            if i >= len(entries):
                raise ContainerError(f"{self.description}: no entry {self.ref} (the layout "
                                     f"holds {len(entries)})")
            return entries[i]
        hits = [d for d, n in zip(entries, names, strict=True) if n == self.ref]
        if not hits:
            raise ContainerError(f"{self.description}: no image named {self.ref!r} in "
                                 f"index.json (it has {listed})")
        if len({d.digest for d in hits}) > 1:
            raise ContainerError(f"{self.description}: {self.ref!r} names "
                                 f"{len(hits)} different images in index.json")
        return hits[0]

    def images(self, platforms: Sequence[Platform]) -> list[Image]:
        top = self.selected()
        what = f"{self.description} manifest {top.digest}"
        if top.size > MAX_DOCUMENT:
            raise ContainerError(f"{what}: {top.size} bytes, more than a manifest may be")
        data, _hint = self._fetch(top.digest, what)
        if len(data) != top.size:
            raise ContainerError(f"{what}: {len(data)} bytes, index.json says {top.size}")
        return resolve_images(source=self.description, name=None, top=data,
                              top_digest=top.digest, top_hint=top.media_type or None,
                              fetch=self._fetch, wanted=platforms, what=what)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self._open(self._blob_path(desc.digest), f"{self.description}: blob {desc.digest}")

    def suggested_name(self) -> str:
        """``localhost/<dir basename>:<tag>`` (the tag given, else the selected entry's
        ref.name when it is a plain tag, else ``latest``)."""
        tag = self.ref
        if tag is None or tag.startswith("@"):
            tag = self.selected().annotation(REF_NAME)
        return local_name(self.path.resolve().name, tag)

