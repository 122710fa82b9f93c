"""The tree of catalogs of one revision: mount point, hash, size and entries of each."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from pycvmfs.client.repository import Repository
from pycvmfs.format.hashes import ContentHash, ObjectKind

__all__ = ["CatalogInfo", "list_catalogs"]


@dataclass(frozen=True)
class CatalogInfo:
    """One catalog as ``list-catalogs`` shows it; ``size`` is the uncompressed SQLite file."""

    mountpoint: str  # "/" for the root catalog
    hash: str
    size: int
    entries: int
    depth: int  # 0: the root catalog

    def to_dict(self) -> dict:
        return asdict(self)


def list_catalogs(repo: Repository, root: ContentHash | None = None) -> list[CatalogInfo]:
    """Every catalog reachable from ``root`` (default: the current revision's root catalog),
    depth first in path order, each verified by its hash before it is read."""
    root = root or repo.manifest.root_catalog
    out: list[CatalogInfo] = []
    pending: list[tuple[bytes, ContentHash, int]] = [(b"", root, 0)]
    while pending:
        mountpoint, h, depth = pending.pop()
        path = repo.fetch_object(h, ObjectKind.CATALOG)  # capped by its recorded size
        # opened through the repository: checked to be mounted where its root_prefix says, and
        # the sizes of its nested catalogs cap their downloads
        with repo.load_catalog(h, mountpoint) as catalog:
            children = [r for r in catalog.nested_catalogs() if r.hash is not None]
            entries = catalog.entry_count()
        out.append(CatalogInfo(mountpoint.decode("utf-8", "surrogateescape") or "/", str(h),
                               os.path.getsize(path), entries, depth))
        pending.extend((r.path, r.hash, depth + 1) for r in reversed(children))
    return out

