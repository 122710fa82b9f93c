"""``.metadata/images.json``: what the container publisher has published, and what it retired.

One JSON document is the record every run compares its desired state with (idempotency) and
the garbage collector works from: public names with their manifest, config, platform and
layers, and the flats and layers no longer used with the time they stopped being used (the
grace period counts from then, not from directory mtimes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pycvmfs.errors import ContainerError

__all__ = ["ImageRecord", "PublishedState"]

VERSION = 1


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
            images = {n: ImageRecord(**r) for n, r in doc.get("images", {}).items()}
            retired = {str(k): int(v) for k, v in doc.get("retired", {}).items()}
            aliases = {str(k): str(v) for k, v in doc.get("aliases", {}).items()}
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
            live.add(flat_path(r.config_digest))
            live.update(layer_dir(d) for d in r.layers)
            live.update(layer_dir(self.aliases[d]) for d in r.layers if d in self.aliases)
        return live
