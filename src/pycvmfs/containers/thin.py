"""``thin.json`` descriptors: an image as the list of its layers' paths in a repository."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pycvmfs.containers.layout import THIN, layer_root
from pycvmfs.containers.manifest import MAX_DOCUMENT
from pycvmfs.containers.model import parse_json
from pycvmfs.errors import ContainerError

__all__ = ["THIN_VERSION", "ThinDescriptor", "ThinLayer", "layer_url", "parse_thin",
           "thin_descriptor", "thin_path"]

THIN_VERSION = "1.0"
_HEX = re.compile(r"[0-9a-f]{64}")
_CVMFS_URL = re.compile(r"cvmfs://([A-Za-z0-9][A-Za-z0-9.-]*)/(\S+)")


@dataclass(frozen=True)
class ThinLayer:
    digest: str  # hex of the layer digest as in the manifest, without "sha256:"
    url: str  # cvmfs://<fqrn>/<path of the layer tree in the repository>

    @property
    def repository(self) -> str:
        return _CVMFS_URL.fullmatch(self.url).group(1)

    @property
    def path(self) -> str:
        return _CVMFS_URL.fullmatch(self.url).group(2)


@dataclass(frozen=True)
class ThinDescriptor:
    version: str
    origin: str
    layers: tuple[ThinLayer, ...]  # bottom layer first, as in the manifest
    min_version: str = ""
    comment: str = ""


def layer_url(fqrn: str, layer_digest: str) -> str:
    """``cvmfs://<fqrn>/.layers/<hh>/<hex>/layerfs``: where a layer's tree is published."""
    return f"cvmfs://{fqrn}/{layer_root(layer_digest)}"


def thin_path(public_name: str) -> str:
    """``.thin/<registry>/<repository>:<tag>/thin.json`` (repository path)."""
    return f"{THIN}/{public_name}/thin.json"


def _layer(digest: object, url: object, what: str) -> ThinLayer:
    hexpart = digest[7:] if isinstance(digest, str) and digest.startswith("sha256:") else digest
    if not isinstance(hexpart, str) or not _HEX.fullmatch(hexpart):
        raise ContainerError(f"{what}: layer digest {digest!r} is not a sha256 digest")
    m = _CVMFS_URL.fullmatch(url) if isinstance(url, str) else None
    if not m or any(part in ("", ".", "..") for part in m.group(2).split("/")):
        raise ContainerError(f"{what}: layer url {url!r} is not cvmfs://<repository>/<path> "
                             "with a normalised path")
    return ThinLayer(hexpart, url)


def thin_descriptor(origin: str, layers: Sequence[tuple[str, str]], *,
                    comment: str = "") -> bytes:
    """The ``thin.json`` bytes for an image whose layers, **bottom first** (manifest
    order), are ``(digest, url)`` pairs; digests may be ``sha256:<hex>`` or hex (written as
    hex). Same input, same bytes."""
    doc: dict = {"version": THIN_VERSION}
    if origin:
        doc["origin"] = origin
    doc["layers"] = [{"digest": t.digest, "url": t.url}
                     for t in (_layer(d, u, f"thin descriptor of {origin}") for d, u in layers)]
    if comment:
        doc["comment"] = comment
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_thin(data: bytes, what: str = "thin.json") -> ThinDescriptor:
    """Read a ``thin.json``; refuses other versions than 1.x, layers without a ``cvmfs://``
    URL and digests that are not sha256 hex, naming ``what``."""
    if len(data) > MAX_DOCUMENT:
        raise ContainerError(f"{what}: larger than {MAX_DOCUMENT} bytes")
    doc = parse_json(data, what)
    version = doc.get("version")
    if not isinstance(version, str) or version.split(".")[0] != "1":
        raise ContainerError(f"{what}: version {version!r} is not 1.x")
    strings = {k: doc.get(k, "") for k in ("origin", "min_version", "comment")}
    for key, value in strings.items():
        if not isinstance(value, str):
            raise ContainerError(f"{what}: {key} must be a string")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ContainerError(f"{what}: layers must be a non-empty list")
    parsed = []
    for n, entry in enumerate(layers):
        if not isinstance(entry, dict):
            raise ContainerError(f"{what}: layer {n} is not an object")
        parsed.append(_layer(entry.get("digest"), entry.get("url"), f"{what}: layer {n}"))
    return ThinDescriptor(version, strings["origin"], tuple(parsed), strings["min_version"],
                          strings["comment"])
