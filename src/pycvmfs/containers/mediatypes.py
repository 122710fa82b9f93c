"""Media types of OCI and Docker manifests, indexes and layers, and layer compression."""

from __future__ import annotations

from enum import Enum

from pycvmfs.errors import ContainerError

__all__ = ["ACCEPT_MANIFESTS", "CONFIG_TYPES", "INDEX_TYPES", "MANIFEST_TYPES", "Compression",
           "is_foreign", "layer_compression", "sniff_compression"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
#: the Accept header of a manifest request (schema 1 is obsolete and not asked for)
ACCEPT_MANIFESTS = ", ".join(MANIFEST_TYPES + INDEX_TYPES)


class Compression(Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar": Compression.NONE,
}


def layer_compression(media_type: str, what: str) -> Compression:
    """The compression a layer media type declares; an unknown layer type is refused."""
    try:
        return _LAYERS[media_type]
    except KeyError:
        raise ContainerError(f"{what}: unsupported layer media type {media_type!r}") from None


def is_foreign(media_type: str) -> bool:
    """Non-distributable (foreign) layers: registries do not serve them."""
    return "nondistributable" in media_type or "foreign" in media_type


def sniff_compression(head: bytes) -> Compression:
    """What the first bytes of a layer say (for sources that do not tell)."""
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE
