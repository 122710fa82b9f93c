"""What a container run writes besides flats and layers (public names and sha256 aliases,
``.metadata/<name>``, the podman store, ``thin.json``) and the checks of names and published
records those writes rely on."""

from __future__ import annotations

import datetime as _dt
import json
import os

from pycvmfs.containers import layout
from pycvmfs.containers.flatwrite import put_generated, write_catalog_dir
from pycvmfs.containers.model import Image, sha256_digest
from pycvmfs.containers.state import ImageRecord, PublishedState, check_public_name
from pycvmfs.errors import ContainerError, NoSuchPathError, PathError
from pycvmfs.publish.rows import Meta

__all__ = ["MAX_INDEX", "check_names", "check_parents", "config_created", "drop_empty_parents",
           "iso_time",
           "metadata_is", "read_index", "write_metadata", "write_names", "write_podman",
           "write_thin"]

MAX_INDEX = 256 << 20  # bytes of images.json: far more than any repository's images need


def iso_time(t: float) -> str:
    """``t`` as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    return _dt.datetime.fromtimestamp(int(t), _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_index(view) -> bytes | None:
    """``images.json`` as published (None: there is none); anything but a regular file of a
    sane size there is refused by name, never taken for an empty state."""
    path = "/" + layout.images_index()
    try:
        st = view.lstat(path)
    except NoSuchPathError:
        return None
    if not st.is_file:
        raise ContainerError(f"{path}: not a regular file; not taking it for an empty state")
    if st.entry.size > MAX_INDEX:
        raise ContainerError(f"{path}: {st.entry.size} bytes, more than {MAX_INDEX}")
    return view.read_bytes(path)


def metadata_is(view, name: str, img: Image) -> bool:
    """Whether ``.metadata/<name>`` holds ``img``'s manifest and config as published."""
    md = "/" + layout.metadata_dir(name)
    try:
        return (view.read_bytes(md + "/manifest.json") == img.manifest_bytes
                and view.read_bytes(md + "/config.json") == img.config_bytes)
    except PathError:
        return False


def check_names(name: str, img: Image | None) -> None:
    """A public name and, once the image is known, its sha256 alias (check_public_name)."""
    check_public_name(name)
    if img is not None:
        check_public_name(layout.alias_name(name, img.manifest_digest),
                          f"the sha256 alias of {name!r},")


def check_parents(view, name: str, outputs: frozenset[str]) -> None:
    """Refuse a name whose directories in the repository are a symlink or a file (nothing is
    written through a symlink, and nothing the image does not own is replaced)."""
    from pycvmfs.containers.thin import thin_path

    paths = [name, layout.metadata_dir(name) + "/config.json"]
    paths += [thin_path(name)] if "thin" in outputs else []
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            try:
                st = view.lstat("/" + parent)
            except PathError:
                break  # missing: made as a directory
            if not st.is_dir:
                kind = "a symbolic link" if st.is_symlink else "not a directory"
                raise ContainerError(f"{name}: /{parent} is {kind}; not publishing the "
                                     "image's name below it")


def config_created(cfg: bytes) -> str | None:
    """The config's ``created`` text, if it has one."""
    try:
        c = json.loads(cfg).get("created")
    except (ValueError, AttributeError):
        return None
    return c if isinstance(c, str) else None


def write_names(txn, view, old: PublishedState, new: PublishedState,
                 images: dict[str, Image], now: int) -> None:
    """Public names and sha256 aliases as symlinks to the flats, ``.metadata/<name>``;
    the links of names removed, retargeted (their old alias) or published without a flat
    go (a link that no record holds would outlive the flat it points to)."""
    linked = {p for r in new.images.values() if "flat" in r.outputs
              for p in (r.name, r.alias)}
    stale = {p for r in old.images.values() for p in (r.name, r.alias)}
    stale |= {p for r in new.images.values() if "flat" not in r.outputs
              for p in (r.name, r.alias)}
    for p in sorted(stale - linked):
        row = txn.lookup(b"/" + p.encode()) if p else None
        if row is not None and row.symlink:
            txn.remove(p)
            drop_empty_parents(txn, p, "")
    for name in sorted(set(old.images) - set(new.images)):
        txn.remove(layout.metadata_dir(name), missing_ok=True)
        drop_empty_parents(txn, layout.metadata_dir(name), layout.METADATA)
    for name, rec in sorted(new.images.items()):
        before = old.images.get(name)
        img = images.get(name)
        if before is not None and before.same_image(rec) and before.alias == rec.alias:
            if img is not None and not metadata_is(view, name, img):
                write_metadata(txn, name, img, now)  # damaged: made whole again
            continue
        flat = layout.flat_path(rec.config_digest)
        for link in sorted({name, rec.alias}) if "flat" in rec.outputs else ():
            row = txn.lookup(b"/" + link.encode())
            if row is not None and not row.symlink:
                raise ContainerError(f"/{link}: exists and is not a symbolic link; "
                                     "not replacing it with the image's public name")
            txn.put_symlink(link, Meta(0o777, now, 0, 0),
                            layout.relative_link(link, flat).encode())
        if img is not None:
            write_metadata(txn, name, img, now)


def drop_empty_parents(txn, path: str, top: str) -> None:
    """Remove the directories above repository path ``path`` that are left empty, up to but
    not including ``top`` (a removed ``HOST/REPO:TAG`` leaves no empty ``HOST/REPO/``)."""
    parent = path.rpartition("/")[0]
    while parent and parent != top:
        key = b"/" + parent.encode()
        if (txn.lookup(key) is None or txn.tree.is_catalog_root(key)
                or txn.tree.listdir(key)):
            return
        txn.remove(parent)
        parent = parent.rpartition("/")[0]


def write_metadata(txn, name: str, img: Image, now: int) -> None:
    md = layout.metadata_dir(name)
    write_catalog_dir(txn, layout.METADATA)
    txn.put_file(md + "/manifest.json", Meta(0o644, now, 0, 0),
                 txn.ingester.submit_bytes(img.manifest_bytes))
    txn.put_file(md + "/config.json", Meta(0o644, now, 0, 0),
                 txn.ingester.submit_bytes(img.config_bytes))


def podman_records(state: PublishedState) -> list[ImageRecord]:
    """The records of the images the podman store lists, by name."""
    return [r for _n, r in sorted(state.images.items()) if {"podman", "flat"} <= set(r.outputs)]


def write_podman(txn, view, old: PublishedState, new: PublishedState,
                 images: dict[str, Image], warnings: list[str]) -> None:
    """``podmanStore/`` regenerated from the whole published state (deterministic: an
    unchanged state rewrites identical rows, which publish nothing)."""
    from pycvmfs.containers.podman import PodmanImage, is_rfc3339, podman_store_entries

    recs = podman_records(new)
    store = "/" + layout.PODMAN
    if not recs:
        if txn.lookup(store.encode()) is not None:
            txn.remove(layout.PODMAN)
        return
    if recs == podman_records(old) and view.exists(store):
        return  # the same images as published: nothing to read back or regenerate
    found = []
    for r in sorted(recs, key=lambda r: r.name):
        img = images.get(r.name)
        if img is not None:
            cfg, man = img.config_bytes, img.manifest_bytes
        else:
            md = "/" + layout.metadata_dir(r.name)
            try:
                cfg = view.read_bytes(md + "/config.json")
                man = view.read_bytes(md + "/manifest.json")
            except PathError:
                warnings.append(f"{r.name}: no {md}/config.json; left out of the "
                                       "podman store")
                continue
            for data, digest, what in ((cfg, r.config_digest, "config.json"),
                                       (man, r.manifest_digest, "manifest.json")):
                if sha256_digest(data) != digest:
                    raise ContainerError(f"{md}/{what}: its digest is not {digest} "
                                         "(images.json); ingest the image again")
        created = config_created(cfg)
        if created is None or not is_rfc3339(created):
            created = iso_time(r.published)
        names = (r.name, r.alias) if r.alias and r.alias != r.name else (r.name,)
        found.append(PodmanImage(r.config_digest, cfg, man, names, created, r.flat_size))
    entries = podman_store_entries(found)
    write_catalog_dir(txn, layout.PODMAN)
    put_generated(txn, "", entries, mtime=0)
    keep = {e.path for e in entries}
    for _dirpath, dirs, files in (view.walk(store) if view.exists(store) else ()):
        for s in dirs + files:
            rel = s.path.lstrip("/")
            if (rel not in keep and os.path.dirname(rel) in keep
                    and s.entry.name != b".cvmfscatalog"):
                txn.remove(rel, missing_ok=True)


def write_thin(txn, fqrn: str, new: PublishedState, old: PublishedState) -> None:
    from pycvmfs.containers.thin import layer_url, thin_descriptor, thin_path

    for name in sorted(set(old.images) - set(new.images)):  # pruned names
        if "thin" in old.images[name].outputs:
            txn.remove(thin_path(name), missing_ok=True)
            drop_empty_parents(txn, thin_path(name), layout.THIN)
    for name, r in sorted(new.images.items()):
        before = old.images.get(name)
        if "thin" not in r.outputs:
            if before is not None and "thin" in before.outputs:
                txn.remove(thin_path(name), missing_ok=True)
                drop_empty_parents(txn, thin_path(name), layout.THIN)
            continue
        if before == r:
            continue  # its descriptor is published already
        data = thin_descriptor(f"{r.source}@{r.manifest_digest}",
                               [(d, layer_url(fqrn, d)) for d in r.layers])
        txn.put_file(thin_path(name), Meta(0o644, r.published, 0, 0),
                     txn.ingester.submit_bytes(data))
