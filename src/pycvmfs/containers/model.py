"""The values the container modules pass around: platforms, descriptors, resolved images."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from pycvmfs.errors import ContainerError

__all__ = [
    "DEFAULT_PLATFORM",
    "Descriptor",
    "GeneratedEntry",
    "Image",
    "ImageSource",
    "Platform",
    "check_digest",
    "digest_hex",
    "materialise",
    "parse_json",
    "sha256_digest",
]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(digest: object, what: str) -> str:
    """``digest`` if it is ``sha256:<64 lower-case hex>``; anything else is refused (sha512
    and other algorithms are not used by registries we meet and are refused by name)."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ContainerError(f"{what}: {digest!r} is not a sha256 digest")
    return digest


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``."""
    return check_digest(digest, "digest")[7:]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, order=True)
class Platform:
    """``os/architecture[/variant]`` as in an image index (``linux/amd64``, ``linux/arm64/v8``)."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts):
            raise ContainerError(f"{text!r} is not a platform (os/architecture[/variant], "
                                 "e.g. linux/amd64)")
        return cls(*parts)

    @classmethod
    def from_json(cls, d: object, what: str) -> Platform:
        if not isinstance(d, dict) or not isinstance(d.get("os"), str) or not isinstance(
                d.get("architecture"), str):
            raise ContainerError(f"{what}: platform without os/architecture")
        v = d.get("variant") or ""
        return cls(d["os"], d["architecture"], v if isinstance(v, str) else "")

    def matches(self, other: Platform) -> bool:
        """``other`` (from an index) serves this wanted platform; an empty variant wanted
        accepts any (``linux/arm64`` takes ``linux/arm64/v8``)."""
        return (self.os == other.os and self.architecture == other.architecture
                and (not self.variant or self.variant == other.variant))

    def slug(self) -> str:
        """For names and paths: ``linux-arm64-v8``."""
        return "-".join(p for p in (self.os, self.architecture, self.variant) if p)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, d: object, what: str) -> Descriptor:
        if not isinstance(d, dict):
            raise ContainerError(f"{what}: a descriptor must be a JSON object")
        mt = d.get("mediaType", "")
        size = d.get("size")
        if not isinstance(mt, str):
            raise ContainerError(f"{what}: mediaType must be a string")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ContainerError(f"{what}: size {size!r} is not a non-negative integer")
        urls = d.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ContainerError(f"{what}: urls must be a list of strings")
        ann = d.get("annotations") or {}
        if not isinstance(ann, dict):
            raise ContainerError(f"{what}: annotations must be an object")
        plat = Platform.from_json(d["platform"], what) if d.get("platform") else None
        return cls(mt, check_digest(d.get("digest"), what), size, tuple(urls), plat,
                   tuple(sorted((str(k), str(v)) for k, v in ann.items())))

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass
class Image:
    """One platform's image, its manifest and config fetched and verified by digest.

    ``name`` is the public name it is published under (``HOST[:PORT]/REPO:TAG``, spelled as
    the reference spelled it) or None when the source gives none (the caller names it).
    """

    source: str  # how the user gave it, for messages (e.g. "oci:/tmp/img:1.0")
    name: str | None
    manifest_digest: str
    manifest_media_type: str
    manifest_bytes: bytes
    config: Descriptor
    config_bytes: bytes
    layers: list[Descriptor]
    diff_ids: list[str]
    platform: Platform
    config_json: dict = field(default_factory=dict)

    @property
    def config_hex(self) -> str:
        return digest_hex(self.config.digest)

    @property
    def manifest_hex(self) -> str:
        return digest_hex(self.manifest_digest)

    def runtime_config(self) -> dict:
        """The ``config`` object of the image config (Env, Entrypoint, Cmd, WorkingDir...)."""
        c = self.config_json.get("config") or {}
        return c if isinstance(c, dict) else {}


class ImageSource(Protocol):
    """Where images come from: an OCI layout, a docker-archive, a registry."""

    description: str

    def images(self, platforms: Sequence[Platform]) -> list[Image]:
        """The images this source names, one per wanted platform that it has (an error when
        it has none of them), manifests and configs verified."""

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """The blob's bytes as stored (compressed), unverified: the reader checks the digest
        and size while it reads (``layer.read_layer``)."""


def parse_json(data: bytes, what: str) -> dict:
    """A JSON object from ``data``; anything else is refused naming ``what``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ContainerError(f"{what}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ContainerError(f"{what}: not a JSON object")
    return doc


@dataclass(frozen=True)
class GeneratedEntry:
    """A file, directory or symlink we generate (Apptainer files, podman store documents):
    ``path`` relative to where it goes (a flat root, the repository root), no leading ``/``."""

    path: str
    kind: str  # "dir", "file" or "symlink"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""  # symlinks

    def __post_init__(self) -> None:
        norm = posixpath.normpath(self.path)
        if (self.kind not in ("dir", "file", "symlink") or norm != self.path
                or norm.startswith(("/", "../")) or norm in (".", "..")):
            raise ContainerError(f"generated entry {self.path!r} ({self.kind}) is not a "
                                 "normalised relative path of a dir, file or symlink")


def materialise(entries: Sequence[GeneratedEntry], root: str | os.PathLike) -> None:
    """Write ``entries`` below the local directory ``root`` (parents first in the list, as
    generated; an existing directory is kept, as the publisher skips what an image has).
    Nothing is written through a symlink: neither one of ``entries`` nor one in ``root``."""
    for e in entries:
        dest = os.path.join(root, e.path)
        parent = os.path.join(os.path.realpath(root), os.path.dirname(e.path))
        if os.path.realpath(os.path.dirname(dest)) != parent.rstrip("/") or os.path.islink(
                dest) or not os.path.isdir(parent):
            raise ContainerError(f"generated entry {e.path!r} below {os.fspath(root)}: a "
                                 "symlink on the way or no parent directory; not writing it")
        if e.kind == "dir":
            if not os.path.isdir(dest):
                try:
                    os.mkdir(dest)
                except FileExistsError:
                    raise ContainerError(f"generated directory {e.path!r} below "
                                         f"{os.fspath(root)}: a file is in the way") from None
            os.chmod(dest, e.mode)
        elif e.kind == "symlink":
            os.symlink(e.target, dest)
        else:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with open(fd, "wb") as f:
                f.write(e.data)
                os.fchmod(f.fileno(), e.mode)
