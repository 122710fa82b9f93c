"""The container verbs as a Python API (the ``pycvmfs container`` commands are a thin layer
over these): ingest images, sync a wish list, list, collect garbage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.containers import layout
from pycvmfs.containers.blobcache import BlobCache
from pycvmfs.containers.credentials import Credentials
from pycvmfs.containers.model import DEFAULT_PLATFORM, Platform
from pycvmfs.containers.publisher import DEFAULT_OUTPUTS, ContainerPublisher, RunReport, Wanted
from pycvmfs.containers.wishlist import WishList
from pycvmfs.errors import ContainerError, CvmfsError

__all__ = ["ContainerSettings", "container_publisher", "ingest_images", "list_images",
           "resolve_images", "sync_wishlist"]


@dataclass
class ContainerSettings:
    """Where blobs are cached and how registries are reached."""

    cache_dir: str | None = None
    credentials: Credentials | None = None
    insecure: bool = False
    platforms: list[Platform] = field(default_factory=lambda: [DEFAULT_PLATFORM])


def _cache(pub, settings: ContainerSettings) -> BlobCache:
    root = settings.cache_dir or str(Path(pub.config.repo_dir) / "container-blobs")
    return BlobCache(root)


def container_publisher(pub, progress=None, now=None, *,
                        lock_wait: float = 0.0) -> ContainerPublisher:
    """The publisher of images into ``pub`` (``now``: a clock, for the grace period;
    ``lock_wait``: seconds to wait while another process publishes)."""
    return ContainerPublisher(pub, progress=progress, now=now, lock_wait=lock_wait)


def _names_for(base: str, images: list, platforms: Sequence[Platform]) -> list[str]:
    """One public name per platform image: the first wanted platform keeps ``base``."""
    if len(images) == 1:
        return [base]
    return [base if platforms[0].matches(img.platform)
            else layout.platform_name(base, img.platform, platforms[0]) for img in images]


def resolve_images(texts: Sequence[str], settings: ContainerSettings, *,
                   names: Sequence[str | None] | None = None,
                   outputs: frozenset[str] = DEFAULT_OUTPUTS, cache: BlobCache) -> list[Wanted]:
    """Open every image source and resolve the wanted platforms (manifests and configs
    verified); ``names`` gives a public name per text (None: the source's own)."""
    from pycvmfs.containers.source import open_source

    wanted: list[Wanted] = []
    for i, text in enumerate(texts):
        src = open_source(text, cache=cache, credentials=settings.credentials,
                          insecure=settings.insecure)
        imgs = src.images(settings.platforms)
        given = names[i] if names else None
        base = given or imgs[0].name or src.suggested_name()
        for name, img in zip(_names_for(base, imgs, settings.platforms), imgs, strict=True):
            img.name = name
            wanted.append(Wanted(name, img, src, outputs))
    return wanted


def ingest_images(pub, texts: Sequence[str], settings: ContainerSettings, *,
                  names: Sequence[str | None] | None = None,
                  outputs: frozenset[str] = DEFAULT_OUTPUTS, dry_run: bool = False,
                  progress=None, tag: str | None = None, lock_wait: float = 0.0) -> RunReport:
    """Publish the images ``texts`` (``oci:DIR[:TAG]``, ``docker-archive:FILE[:NAME]``,
    ``docker://HOST/REPO:TAG``...) in one transaction; nothing else is removed."""
    cache = _cache(pub, settings)
    wanted = resolve_images(texts, settings, names=names, outputs=outputs, cache=cache)
    return container_publisher(pub, progress, lock_wait=lock_wait).run(
        wanted, dry_run=dry_run, collect=True, tag=tag)


def sync_wishlist(pub, wishlist: WishList, settings: ContainerSettings, *,
                  dry_run: bool = False, grace_days: float | None = None, progress=None,
                  tag: str | None = None, now=None, lock_wait: float = 0.0) -> RunReport:
    """Make the repository hold exactly what ``wishlist`` asks for, in one transaction: new
    and retargeted names, names no longer wanted removed, unused flats and layers collected
    after the grace period. When a registry cannot be listed or an image cannot be resolved,
    what could be resolved is published and nothing at all is removed (reported)."""
    from pycvmfs.containers.source_registry import RegistrySource

    if wishlist.repository and wishlist.repository != pub.fqrn:
        raise ContainerError(f"{wishlist.source}: cvmfs_repo is {wishlist.repository}, "
                             f"not {pub.fqrn}")
    cache = _cache(pub, settings)
    wanted: list[Wanted] = []
    problems: list[str] = []
    for item in wishlist.items:
        item_settings = ContainerSettings(settings.cache_dir, settings.credentials,
                                          settings.insecure, item.platforms or
                                          settings.platforms)
        try:
            refs = [item.ref]
            lister = None
            if item.ref.is_glob:
                lister = RegistrySource(item.ref, cache=cache, credentials=settings.credentials,
                                        insecure=settings.insecure)
                refs = lister.expand()
            for ref in refs:
                if lister is None:
                    lister = RegistrySource(ref, cache=cache, credentials=settings.credentials,
                                            insecure=settings.insecure)
                src = lister if ref == lister.ref else lister.sibling(ref)
                imgs = src.images(item_settings.platforms)
                for name, img in zip(_names_for(ref.public_name(), imgs,
                                                item_settings.platforms), imgs, strict=True):
                    img.name = name
                    wanted.append(Wanted(name, img, src, item.outputs or DEFAULT_OUTPUTS))
        except CvmfsError as e:
            problems.append(f"{item.ref.url()}: {e}")
    seen: dict[str, Wanted] = {}
    for w in wanted:  # two inputs naming the same image: one publish
        seen.setdefault(w.name, w)
    report = container_publisher(pub, progress, now, lock_wait=lock_wait).run(
        list(seen.values()), prune=True, complete=not problems, dry_run=dry_run,
        grace_days=wishlist.grace_days if grace_days is None else grace_days, tag=tag)
    report.warnings = problems + report.warnings
    report.incomplete = bool(problems)
    return report


def list_images(pub) -> list[dict]:
    """What is published: one record per public name (``images.json``)."""
    cp = container_publisher(pub)
    state = cp.published_state()
    out = []
    for name, r in sorted(state.images.items()):
        out.append({"name": name, "alias": r.alias, "manifest_digest": r.manifest_digest,
                    "config_digest": r.config_digest, "platform": r.platform,
                    "layers": len(r.layers), "size": r.size, "flat_size": r.flat_size,
                    "flat": layout.flat_path(r.config_digest), "published": r.published,
                    "source": r.source, "outputs": r.outputs})
    return out


def import_rootfs(pub, directory: str, name: str, *, runtime: dict | None = None,
                  platform: Platform | None = None,
                  outputs: frozenset[str] = frozenset({"flat", "podman"}), progress=None,
                  tag: str | None = None) -> RunReport:
    """Publish the root file system tree ``directory`` as the image ``name`` (one layer, a
    flat tree with the Apptainer files, the podman store entry) in one transaction."""
    from pycvmfs.containers.reference import parse_reference
    from pycvmfs.containers.rootfs_source import RootfsSource

    parse_reference(name)  # a name a registry could hold: HOST/REPO:TAG
    src = RootfsSource(directory, name, platform=platform, runtime=runtime)
    return container_publisher(pub, progress).run([Wanted(name, None, src, outputs)],
                                                  collect=True, tag=tag)


def export_image(pub, name: str, dest: str, tag: str | None = None, *,
                 keep_generated: bool = False):
    """Write the published image ``name`` as an OCI image layout at ``dest`` (one layer: its
    flat tree read through the verified client; without the Apptainer files we added)."""
    from pycvmfs.containers.export import GENERATED_ENTRIES, export_oci

    cp = container_publisher(pub)
    reader = cp.reader()
    view = reader.open_revision()
    try:
        state = cp.published_state(view)
        rec = state.images.get(name)
        if rec is None:
            raise ContainerError(f"{pub.fqrn}: no image named {name!r} (see container ls)")
        config = view.read_bytes("/" + layout.metadata_dir(name) + "/config.json")
        if tag is None:
            last = name.split("@", 1)[0].rsplit("/", 1)[-1]
            tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
        return export_oci(view, "/" + layout.flat_path(rec.config_digest), dest, tag,
                          config_bytes=config,
                          exclude=() if keep_generated else GENERATED_ENTRIES)
    finally:
        view.close()
        reader.close()
