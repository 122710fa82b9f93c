"""Parsing and checking image manifests, indexes and configs (OCI and Docker schema 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pycvmfs.containers.mediatypes import (
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    MANIFEST_TYPES,
    layer_compression,
)
from pycvmfs.containers.model import (
    Descriptor,
    Image,
    Platform,
    check_digest,
    parse_json,
    sha256_digest,
)
from pycvmfs.errors import ContainerError

__all__ = ["MAX_DOCUMENT", "ParsedManifest", "check_blob", "document_type", "parse_config",
           "parse_index", "parse_manifest", "resolve_images", "select_platforms"]

#: manifests, indexes and configs larger than this are refused (registries cap at 4 MiB)
MAX_DOCUMENT = 8 << 20


def check_blob(data: bytes, digest: str, what: str, size: int | None = None) -> bytes:
    """``data`` when it hashes to ``digest`` (and has ``size`` bytes); else a clear error."""
    if size is not None and len(data) != size:
        raise ContainerError(f"{what}: {len(data)} bytes, the descriptor says {size}")
    got = sha256_digest(data)
    if got != digest:
        raise ContainerError(f"{what}: digest mismatch (expected {digest}, got {got})")
    return data


def document_type(doc: dict, hint: str | None, what: str) -> str:
    """The media type of a manifest or index: its own ``mediaType``, else the transport's
    ``hint`` (Content-Type), else guessed from its shape."""
    mt = doc.get("mediaType") or hint or ""
    if not isinstance(mt, str):
        raise ContainerError(f"{what}: mediaType must be a string")
    mt = mt.split(";")[0].strip()
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ContainerError(f"{what}: Docker schema 1 manifests are obsolete and not supported")
    if mt in MANIFEST_TYPES or mt in INDEX_TYPES:
        return mt
    if not mt or mt == "application/json":
        if "manifests" in doc:
            return INDEX_TYPES[0]
        if "layers" in doc and "config" in doc:
            return MANIFEST_TYPES[0]
    raise ContainerError(f"{what}: unsupported manifest media type {mt!r}")


class ParsedManifest:
    """A single-platform manifest: its config and layer descriptors."""

    def __init__(self, config: Descriptor, layers: list[Descriptor]) -> None:
        self.config = config
        self.layers = layers


def parse_manifest(doc: dict, what: str) -> ParsedManifest:
    if doc.get("schemaVersion") != 2:
        raise ContainerError(f"{what}: schemaVersion {doc.get('schemaVersion')!r}, expected 2")
    config = Descriptor.from_json(doc.get("config"), f"{what}: config")
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise ContainerError(f"{what}: 'layers' must be a list")
    layers = [Descriptor.from_json(d, f"{what}: layer {i}") for i, d in enumerate(layers_raw)]
    for i, d in enumerate(layers):
        layer_compression(d.media_type, f"{what}: layer {i} ({d.digest})")
    return ParsedManifest(config, layers)


def parse_index(doc: dict, what: str) -> list[Descriptor]:
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise ContainerError(f"{what}: 'manifests' must be a list")
    return [Descriptor.from_json(d, f"{what}: manifest {i}") for i, d in enumerate(raw)]


def parse_config(data: bytes, what: str) -> tuple[dict, list[str], Platform]:
    """The config document, its DiffIDs (bottom layer first) and its platform."""
    doc = parse_json(data, what)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ContainerError(f"{what}: rootfs.type must be 'layers'")
    ids = rootfs.get("diff_ids")
    if not isinstance(ids, list):
        raise ContainerError(f"{what}: rootfs.diff_ids must be a list")
    diff_ids = [check_digest(d, f"{what}: diff_ids[{i}]") for i, d in enumerate(ids)]
    plat = Platform(str(doc.get("os") or "linux"), str(doc.get("architecture") or "amd64"),
                    str(doc.get("variant") or ""))
    return doc, diff_ids, plat


def select_platforms(entries: Sequence[Descriptor], wanted: Sequence[Platform],
                     what: str) -> list[Descriptor]:
    """The index entries for the ``wanted`` platforms, in the order wanted. An index with one
    entry without a platform is taken as is; a wanted platform the index lacks is an error
    naming the platforms it has. Attestation manifests (``unknown/unknown``) never match."""
    manifests = [d for d in entries if d.media_type in MANIFEST_TYPES or not d.media_type]
    if len(manifests) == 1 and manifests[0].platform is None:
        return manifests
    chosen = []
    for want in wanted:
        hits = [d for d in manifests if d.platform is not None and want.matches(d.platform)]
        if not hits:
            have = ", ".join(sorted({str(d.platform) for d in manifests if d.platform})) or "none"
            raise ContainerError(f"{what}: no image for platform {want} (the index has: {have})")
        chosen.append(hits[0])
    return chosen


FetchDoc = Callable[[str, str], tuple[bytes, str | None]]  # (digest, what) -> (bytes, type hint)


def resolve_images(*, source: str, name: str | None, top: bytes, top_digest: str | None,
                   top_hint: str | None, fetch: FetchDoc, wanted: Sequence[Platform],
                   what: str, depth: int = 0) -> list[Image]:
    """Images of a manifest or index ``top`` (checked against ``top_digest`` when known),
    following nested indexes; ``fetch(digest, what)`` returns a verified document."""
    if len(top) > MAX_DOCUMENT:
        raise ContainerError(f"{what}: {len(top)} bytes, more than a manifest may be")
    if top_digest is not None:
        check_blob(top, top_digest, what)
    digest = top_digest or sha256_digest(top)
    doc = parse_json(top, what)
    mt = document_type(doc, top_hint, what)
    if mt in INDEX_TYPES:
        if depth > 4:
            raise ContainerError(f"{what}: indexes nested more than 4 deep")
        out: list[Image] = []
        for d in select_platforms(parse_index(doc, what), wanted, what):
            sub_what = f"{source} manifest {d.digest}"
            data, hint = fetch(d.digest, sub_what)
            check_blob(data, d.digest, sub_what, d.size)
            imgs = resolve_images(source=source, name=name, top=data, top_digest=d.digest,
                                  top_hint=d.media_type or hint, fetch=fetch, wanted=wanted,
                                  what=sub_what, depth=depth + 1)
            if d.platform is not None:
                for img in imgs:
                    img.platform = d.platform
            out.extend(imgs)
        return out
    m = parse_manifest(doc, what)
    cfg_what = f"{source} config {m.config.digest}"
    if m.config.size > MAX_DOCUMENT:
        raise ContainerError(f"{cfg_what}: {m.config.size} bytes, more than a config may be")
    cfg, _hint = fetch(m.config.digest, cfg_what)
    check_blob(cfg, m.config.digest, cfg_what, m.config.size)
    cfg_doc, diff_ids, plat = parse_config(cfg, cfg_what)
    if len(diff_ids) != len(m.layers):
        raise ContainerError(f"{what}: {len(m.layers)} layers but the config lists "
                             f"{len(diff_ids)} DiffIDs")
    return [Image(source=source, name=name, manifest_digest=digest, manifest_media_type=mt,
                  manifest_bytes=top, config=m.config, config_bytes=cfg, layers=m.layers,
                  diff_ids=diff_ids, platform=plat, config_json=cfg_doc)]
