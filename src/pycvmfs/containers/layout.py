"""Every repository path the container publisher writes, in one place (DUCC-compatible).

Paths are repository paths without the leading slash (``.flat/ab/ab12...``); ``<hh>`` is the
first two hex digits of the digest that follows, as DUCC shards them.
"""

from __future__ import annotations

import posixpath

from pycvmfs.containers.model import Platform, digest_hex

__all__ = ["CHAINS", "DIRTY_CHAINS", "FLAT", "LAYERS", "METADATA", "PODMAN", "THIN",
           "alias_name", "flat_path", "images_index", "layer_dir", "layer_metadata",
           "layer_root", "metadata_dir", "platform_name", "relative_link"]

FLAT = ".flat"
LAYERS = ".layers"
METADATA = ".metadata"
PODMAN = "podmanStore"
THIN = ".thin"
CHAINS = ".chains"  # DUCC leftovers we recognise and remove
DIRTY_CHAINS = ".dirty-chains"


def _sharded(top: str, digest: str) -> str:
    h = digest_hex(digest)
    return f"{top}/{h[:2]}/{h}"


def flat_path(config_digest: str) -> str:
    """The merged root file system of an image: ``.flat/<hh>/<config hex>``."""
    return _sharded(FLAT, config_digest)


def layer_dir(layer_digest: str) -> str:
    """``.layers/<hh>/<layer hex>`` (a nested catalog per layer)."""
    return _sharded(LAYERS, layer_digest)


def layer_root(layer_digest: str) -> str:
    """The layer tree as kernel overlayfs takes it: ``.layers/<hh>/<hex>/layerfs``."""
    return layer_dir(layer_digest) + "/layerfs"


def layer_metadata(layer_digest: str) -> str:
    """``.layers/<hh>/<hex>/.metadata`` (``layers.json``, ``origin.json``)."""
    return layer_dir(layer_digest) + "/.metadata"


def metadata_dir(name: str) -> str:
    """``.metadata/<registry>/<repository>:<tag>`` (raw manifest and config)."""
    return f"{METADATA}/{name}"


def images_index() -> str:
    """``.metadata/images.json``: every image published, the GC's record."""
    return f"{METADATA}/images.json"


def alias_name(name: str, manifest_digest: str) -> str:
    """The immutable alias ``HOST/REPO@sha256:<hex>`` of ``HOST/REPO:TAG`` (or of a name that
    already is a digest reference)."""
    repo = name.split("@", 1)[0]
    last = repo.rsplit("/", 1)
    if ":" in last[-1]:
        repo = repo[: repo.rfind(":")]
    return f"{repo}@sha256:{digest_hex(manifest_digest)}"


def platform_name(name: str, platform: Platform, default: Platform) -> str:
    """The public name of one platform of a multi-architecture image: the default platform
    keeps ``name``; any other gets the platform appended to its tag, ``HOST/REPO:TAG-linux-arm64``
    (digest references: ``HOST/REPO@sha256:<hex>-linux-arm64``)."""
    if platform == default:
        return name
    return f"{name}-{platform.slug()}"


def relative_link(link_path: str, target: str) -> str:
    """The relative symlink target that makes repository path ``link_path`` point at repository
    path ``target`` (``a/b:1`` -> ``.flat/x/y`` gives ``../.flat/x/y``)."""
    return posixpath.relpath(target, posixpath.dirname(link_path) or ".")
