"""The podman additional image store (``podmanStore/``): one read-only layer per image whose
``diff`` is the flat root file system (DUCC's current single-layer form, docs §3.6), with
identifiers derived from the config digest so the same images give the same bytes.

Field names and file names are containers-storage's (``overlay-images/images.json``,
``overlay-layers/layers.json``, "big data" files named by key, ``=``+base64 when the key has
characters outside ``[a-z0-9.]``), as podman 4.3 writes them itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pycvmfs.containers.layout import PODMAN, flat_path, relative_link
from pycvmfs.containers.model import (
    GeneratedEntry,
    check_digest,
    digest_hex,
    parse_json,
    sha256_digest,
)
from pycvmfs.containers.reference import parse_reference
from pycvmfs.errors import ContainerError

__all__ = ["PodmanImage", "big_data_file_name", "flat_layer_id", "is_rfc3339", "link_id",
           "podman_store_entries"]

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
_PLAIN_KEY = re.compile(r"[a-z0-9.]*")


@dataclass(frozen=True)
class PodmanImage:
    """One published image as the store lists it."""

    config_digest: str
    config_bytes: bytes
    manifest_bytes: bytes
    names: tuple[str, ...]  # public names, HOST[:PORT]/REPO:TAG or HOST/REPO@sha256:<hex>
    created: str  # RFC 3339, e.g. the config's "created"
    flat_size: int  # bytes of file content under the flat tree


def is_rfc3339(text: object) -> bool:
    """Whether ``text`` is a time podman can read (RFC 3339: ``2026-01-01T00:00:00Z``);
    image configs carry other spellings too, so callers check before they pass one."""
    return isinstance(text, str) and _RFC3339.fullmatch(text) is not None


def flat_layer_id(config_digest: str) -> str:
    """The store's layer ID of an image's flat tree: sha256("cvmfs-flat-layer:" + config hex)."""
    return hashlib.sha256(b"cvmfs-flat-layer:" + digest_hex(config_digest).encode()).hexdigest()


def link_id(layer_id: str) -> str:
    """The 26-character short name of a layer under ``overlay/l/`` (base32 of the sha256 of
    the layer ID, upper case, as containers-storage's random ones look)."""
    return base64.b32encode(hashlib.sha256(layer_id.encode()).digest()).decode()[:26]


def big_data_file_name(key: str) -> str:
    """The file name containers-storage stores an image's big-data item ``key`` under."""
    if _PLAIN_KEY.fullmatch(key):
        return key
    return "=" + base64.b64encode(key.encode()).decode()


def _check(image: PodmanImage) -> None:
    what = f"podman store image {image.config_digest}"
    check_digest(image.config_digest, what)
    if sha256_digest(image.config_bytes) != image.config_digest:
        raise ContainerError(f"{what}: the config bytes do not have this digest")
    manifest = parse_json(image.manifest_bytes, f"{what}: manifest")
    if not isinstance(manifest.get("config"), dict) or \
            manifest["config"].get("digest") != image.config_digest:
        raise ContainerError(f"{what}: the manifest names another config")
    if not is_rfc3339(image.created):
        raise ContainerError(f"{what}: created {image.created!r} is not an RFC 3339 time")
    if not isinstance(image.flat_size, int) or image.flat_size < 0:
        raise ContainerError(f"{what}: flat size {image.flat_size!r} is not a byte count")
    if not image.names:
        raise ContainerError(f"{what}: no names")
    for name in image.names:
        try:
            canonical = parse_reference(name).public_name()
        except ContainerError as e:
            raise ContainerError(f"{what}: {e}") from None
        if canonical != name:
            raise ContainerError(f"{what}: name {name!r} is not HOST/REPO:TAG or "
                                 "HOST/REPO@sha256:<hex>")


def _merged(images: Sequence[PodmanImage]) -> dict[str, dict]:
    """Per config hex: the names (in order, without repeats) and manifests of every image
    with that config; the first image gives created and size."""
    by_config: dict[str, dict] = {}
    owner: dict[str, str] = {}
    for image in images:
        _check(image)
        for name in image.names:
            if owner.setdefault(name, image.config_digest) != image.config_digest:
                raise ContainerError(f"podman store: the name {name} is given to two images, "
                                     f"{owner[name]} and {image.config_digest}")
        entry = by_config.setdefault(image.config_digest, {
            "image": image, "names": [], "manifests": {}})
        entry["names"] += [n for n in image.names if n not in entry["names"]]
        entry["manifests"].setdefault(sha256_digest(image.manifest_bytes), image.manifest_bytes)
    return dict(sorted(by_config.items()))


def _json(doc: object) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def podman_store_entries(images: Sequence[PodmanImage]) -> list[GeneratedEntry]:
    """Every directory, file and symlink of ``podmanStore/`` for ``images`` (repository
    paths, parents first). Images with the same config become one store image with all
    their names; identical input gives identical output."""
    merged = _merged(images)
    store = PODMAN
    out = [GeneratedEntry(d, "dir", 0o755) for d in (
        store, f"{store}/overlay", f"{store}/overlay/l", f"{store}/overlay-images",
        f"{store}/overlay-layers")]
    layers_doc, images_doc = [], []
    for config_digest, entry in merged.items():
        image: PodmanImage = entry["image"]
        config_hex = digest_hex(config_digest)
        layer = flat_layer_id(config_digest)
        short = link_id(layer)
        layer_dir = f"{store}/overlay/{layer}"
        out += [GeneratedEntry(layer_dir, "dir", 0o755),
                GeneratedEntry(f"{layer_dir}/diff", "symlink", 0o777, target=relative_link(
                    f"{layer_dir}/diff", flat_path(config_digest))),
                GeneratedEntry(f"{layer_dir}/link", "file", 0o644, short.encode()),
                GeneratedEntry(f"{store}/overlay/l/{short}", "symlink", 0o777,
                               target=f"../{layer}/diff")]
        layers_doc.append({"id": layer, "created": image.created,
                           # a placeholder, so that tools can report a size; nothing
                           # recomputes it for a read-only store
                           "diff-digest": "sha256:" + layer, "diff-size": image.flat_size})
        manifests: dict[str, bytes] = entry["manifests"]
        first_manifest = next(iter(manifests))
        big = {config_digest: image.config_bytes, "manifest": manifests[first_manifest]}
        big.update({f"manifest-{d}": data for d, data in manifests.items()})
        image_dir = f"{store}/overlay-images/{config_hex}"
        out.append(GeneratedEntry(image_dir, "dir", 0o755))
        out += [GeneratedEntry(f"{image_dir}/{big_data_file_name(key)}", "file", 0o644, data)
                for key, data in sorted(big.items())]
        images_doc.append({"id": config_hex, "digest": first_manifest,
                           "names": entry["names"], "layer": layer,
                           "big-data-names": sorted(big),
                           "big-data-sizes": {k: len(v) for k, v in big.items()},
                           "big-data-digests": {k: sha256_digest(v) for k, v in big.items()},
                           "created": image.created})
    out += [GeneratedEntry(f"{store}/overlay-layers/layers.json", "file", 0o644,
                           _json(layers_doc)),
            GeneratedEntry(f"{store}/overlay-layers/layers.lock", "file", 0o644),
            GeneratedEntry(f"{store}/overlay-images/images.json", "file", 0o644,
                           _json(images_doc)),
            GeneratedEntry(f"{store}/overlay-images/images.lock", "file", 0o644)]
    return out
