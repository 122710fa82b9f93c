"""``.metadata/images.json``: what the container publisher has published, and what it retired.

One JSON document is the record every run compares its desired state with (idempotency) and
the garbage collector works from: public names with their manifest, config, platform and
layers, and the flats and layers no longer used with the time they stopped being used (the
grace period counts from then, not from directory mtimes).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields

from pycvmfs.errors import ContainerError

__all__ = ["OUTPUTS", "ImageRecord", "PublishedState", "check_public_name"]

VERSION = 1
OUTPUTS = frozenset({"flat", "layers", "podman", "thin"})
NAME_MAX = 255  # bytes of one path component
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: what ``retired`` may hold: ``.flat/<hh>/<name>`` or ``.layers/<hh>/<name>`` (DUCC's too)
_RETIRABLE = re.compile(r"(?:\.flat|\.layers)/[^/]+/[^/]+")
_PODMAN = "podmanStore"


def check_public_name(name: object, what: str = "public name", *, shape: bool = True) -> str:
    """``name`` if it can be an image's public name in the repository (``HOST[:PORT]/REPO:TAG``
    or ``...@sha256:<hex>``): relative, no empty, ``.`` or ``..`` component, none longer than
    255 bytes, not below a reserved top-level directory (``.flat``, ``.layers``, ``.metadata``,
    ``podmanStore``, ``.cvmfs``: no first component starting with ``.``), ``:`` and ``@`` only
    in the host and the last component, which has a tag or digest (so that no name is the
    parent directory of another). Else a ContainerError naming it. ``shape`` False checks
    only that the name is a safe repository path (names recorded before the shape rules)."""
    def bad(why: str) -> ContainerError:
        return ContainerError(f"{what} {name!r}: {why}")

    if not isinstance(name, str) or not name:
        raise bad("not a HOST/REPO:TAG name")
    if "\0" in name:
        raise bad("contains a NUL character")
    parts = name.split("/")
    if shape and len(parts) < 2:
        raise bad("not HOST/REPO:TAG (no '/')")
    for part in parts:
        if part in ("", ".", ".."):
            raise bad("empty, '.' or '..' path component (absolute, or leaving its directory)")
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise bad(f"the component {part[:40]!r}... is {size} bytes, more than {NAME_MAX}")
    if parts[0].startswith(".") or parts[0] == _PODMAN:
        raise bad(f"{parts[0]} is reserved at the repository root")
    if not shape:
        return name
    if any(":" in p or "@" in p for p in parts[1:-1]):
        raise bad("':' or '@' inside the repository path")
    if ":" not in parts[-1] and "@" not in parts[-1]:
        raise bad("no :TAG or @DIGEST at the end")
    return name


@dataclass
class ImageRecord:
    """One public name as published."""

    name: str
    manifest_digest: str
    config_digest: str
    platform: str
    layers: list[str]
    diff_ids: list[str]
    size: int  # bytes of the layers as stored (compressed)
    source: str
    published: int  # Unix time of the first publish of this manifest under this name
    alias: str = ""
    outputs: list[str] = field(default_factory=lambda: ["flat", "layers", "podman"])
    flat_size: int = 0  # bytes of regular files in the merged tree

    def same_image(self, other: ImageRecord) -> bool:
        return (self.manifest_digest, self.config_digest, self.platform, self.outputs) == (
            other.manifest_digest, other.config_digest, other.platform, other.outputs)


@dataclass
class PublishedState:
    images: dict[str, ImageRecord] = field(default_factory=dict)
    #: repository path (a flat or a layer directory) -> Unix time it stopped being used
    retired: dict[str, int] = field(default_factory=dict)
    #: layer digest -> the digest of the same DiffID whose tree it links to (§7.4: another
    #: compression of one layer is a symlink, not a second tree)
    aliases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, data: bytes | None, what: str = ".metadata/images.json") -> PublishedState:
        if data is None:
            return cls()
        try:
            doc = json.loads(data)
            if doc.get("version") != VERSION:
                raise ContainerError(f"{what}: version {doc.get('version')!r}, expected "
                                     f"{VERSION}")
            images = {n: _record(n, r, what) for n, r in _mapping(doc, "images", what).items()}
            retired = {}
            for k, v in _mapping(doc, "retired", what).items():
                if not (_RETIRABLE.fullmatch(k) and ".." not in k.split("/")):
                    raise ContainerError(f"{what}: retired path {k!r} is not a flat or a layer")
                retired[k] = _typed(v, int, f"{what}: retired {k!r}")
            aliases = {_digest(k, f"{what}: alias"): _digest(v, f"{what}: alias {k}")
                       for k, v in _mapping(doc, "aliases", what).items()}
        except (ValueError, TypeError, AttributeError) as e:
            raise ContainerError(f"{what}: not a valid image index ({e})") from None
        return cls(images, retired, aliases)

    def dump(self) -> bytes:
        doc = {"version": VERSION,
               "images": {n: asdict(r) for n, r in sorted(self.images.items())},
               "retired": dict(sorted(self.retired.items()))}
        if self.aliases:
            doc["aliases"] = dict(sorted(self.aliases.items()))
        return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"

    def live_paths(self) -> set[str]:
        from pycvmfs.containers.layout import flat_path, layer_dir

        live: set[str] = set()
        for r in self.images.values():
            if "flat" in r.outputs:
                live.add(flat_path(r.config_digest))
            live.update(layer_dir(d) for d in r.layers)
            live.update(layer_dir(self.aliases[d]) for d in r.layers if d in self.aliases)
        return live


def _mapping(doc: dict, key: str, what: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ContainerError(f"{what}: {key} is not an object")
    return value


def _typed(value: object, kind: type, what: str):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ContainerError(f"{what}: {value!r} is not a {kind.__name__}")
    return value


def _digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise ContainerError(f"{what}: {value!r} is not sha256:<64 lower-case hex>")
    return value


def _record(name: str, doc: object, what: str) -> ImageRecord:
    """One entry of ``images``, every field checked (the GC and the name writer trust them)."""
    where = f"{what}: image {name!r}"
    check_public_name(name, f"{what}: image", shape=False)
    if not isinstance(doc, dict) or set(doc) - {f.name for f in fields(ImageRecord)}:
        raise ContainerError(f"{where}: not an image record")
    rec = ImageRecord(**doc)
    if rec.name != name:
        raise ContainerError(f"{where}: the record names {rec.name!r}")
    for key in ("manifest_digest", "config_digest"):
        _digest(getattr(rec, key), f"{where}: {key}")
    for key in ("platform", "source", "alias"):
        _typed(getattr(rec, key), str, f"{where}: {key}")
    for key in ("size", "published", "flat_size"):
        _typed(getattr(rec, key), int, f"{where}: {key}")
    for key in ("layers", "diff_ids"):
        for d in _typed(getattr(rec, key), list, f"{where}: {key}"):
            _digest(d, f"{where}: {key}")
    if len(rec.layers) != len(rec.diff_ids):
        raise ContainerError(f"{where}: {len(rec.layers)} layers, {len(rec.diff_ids)} DiffIDs")
    if rec.alias:
        check_public_name(rec.alias, f"{where}: alias", shape=False)
    outputs = _typed(rec.outputs, list, f"{where}: outputs")
    if not all(isinstance(o, str) for o in outputs) or not set(outputs) <= OUTPUTS:
        raise ContainerError(f"{where}: outputs {outputs!r} are not among "
                             f"{', '.join(sorted(OUTPUTS))}")
    return rec
