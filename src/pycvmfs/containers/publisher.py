"""One run of the container publisher: every wanted image into ONE repository transaction.

Layers not yet published are read once from their source (digest, size and DiffID checked while
reading), written as ``.layers/<hh>/<hex>/layerfs`` and applied to the merged tree of each image
that needs a new flat; layers already published are read back from their catalogs, never
downloaded again. Public names, aliases, metadata, the podman store, ``images.json`` and the
garbage collection of retired flats and layers go into the same transaction, so a failure or a
kill at any point leaves the repository at its previous revision.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.containers import layout
from pycvmfs.containers.flatten import Node, Tree
from pycvmfs.containers.flatwrite import (
    flat_size,
    node_meta,
    put_generated,
    write_catalog_dir,
    write_tree,
)
from pycvmfs.containers.layer import Entry, Kind, LayerChanges, read_layer
from pycvmfs.containers.layerfs import RECORD, load_layer, write_layer
from pycvmfs.containers.model import Image, ImageSource
from pycvmfs.containers.publish_names import (
    check_names,
    check_parents,
    iso_time,
    read_index,
    write_names,
    write_podman,
    write_thin,
)
from pycvmfs.containers.state import OUTPUTS, ImageRecord, PublishedState
from pycvmfs.errors import ContainerError, PathError, RepositoryBusyError
from pycvmfs.publish.rows import Meta

__all__ = ["ALL_OUTPUTS", "ContainerPublisher", "RunReport", "Wanted"]

ALL_OUTPUTS = OUTPUTS
DEFAULT_OUTPUTS = frozenset({"flat", "layers", "podman"})
DAY = 86400


@dataclass
class Wanted:
    """A public name to publish and the image it names."""

    name: str
    image: Image
    source: ImageSource
    outputs: frozenset[str] = DEFAULT_OUTPUTS


@dataclass
class RunReport:
    revision: int | None = None
    dry_run: bool = False
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    layers_new: list[str] = field(default_factory=list)
    layers_reused: list[str] = field(default_factory=list)
    flats_new: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    publish: dict = field(default_factory=dict)
    #: some wanted image could not be resolved (a sync published the rest, removed nothing)
    incomplete: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class ContainerPublisher:
    """Publishes container images into one repository (``pub``: a
    :class:`pycvmfs.publish.repository.Publisher`). ``lock_wait``: seconds a run waits for
    another publisher of the repository to finish (0: refused at once when it is busy)."""

    def __init__(self, pub, *, work_dir: str | os.PathLike | None = None,
                 now: Callable[[], float] | None = None,
                 progress: Callable[[str, int, int | None], None] | None = None,
                 lock_wait: float = 0.0) -> None:
        self.pub = pub
        self.now = now or time.time
        self.progress = progress
        self.lock_wait = lock_wait
        # the reader's cache of catalogs, kept between runs beside the repository's config
        work = Path(work_dir) if work_dir else Path(pub.config.repo_dir) / "container-work"
        work.mkdir(parents=True, exist_ok=True)
        self.work_dir = str(work)

    # -- reading the published state -----------------------------------------------------
    def reader(self):
        """A verified reader of the repository's own storage (``open_revision()``: head)."""
        return self.pub.open_reader(os.path.join(self.work_dir, "reader-cache"))

    def published_state(self, view=None) -> PublishedState:
        own = view is None
        if own:
            reader = self.reader()
            view = reader.open_revision()
        try:
            return PublishedState.load(read_index(view))
        finally:
            if own:
                view.close()
                reader.close()

    # -- one run ---------------------------------------------------------------------------
    def run(self, wanted: Sequence[Wanted], *, prune: bool = False, complete: bool = True,
            grace_days: float = 7.0, dry_run: bool = False, collect: bool = True,
            tag: str | None = None, ducc_leftovers: bool = False,
            include_unknown: bool = False) -> RunReport:
        """Publish ``wanted`` (name → image). ``prune``: names published before and not wanted
        now are removed (a wish-list sync); ``complete`` False (some registry could not be
        listed) forbids every removal. ``collect``: flats and layers no longer used are
        retired and deleted once retired for ``grace_days`` (see :meth:`collect` for
        ``ducc_leftovers`` and ``include_unknown``)."""
        names = [w.name for w in wanted]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ContainerError(f"the same public name is wanted twice: {', '.join(sorted(dup))}")
        for w in wanted:  # before anything is read or fetched
            check_names(w.name, w.image)
            if "thin" in w.outputs and "layers" not in w.outputs:
                raise ContainerError(f"{w.name}: the thin output names the image's layer "
                                     "directories; it needs the layers output too")
        report = RunReport(dry_run=dry_run)
        options = dict(prune=prune, complete=complete, grace_days=grace_days, collect=collect,
                       gc_extra=(ducc_leftovers, include_unknown))
        if dry_run:
            reader = self.reader()
            view = reader.open_revision()
            try:
                self._plan(view, wanted, report, **options, txn=None)
            finally:
                view.close()
                reader.close()
            return report
        self._prefetch(wanted)
        with contextlib.ExitStack() as held:
            txn = self._transaction(held, tag)
            reader = self.reader()  # the published state is read holding the lock
            view = reader.open_revision()
            try:
                for w in wanted:  # sources scanned into the transaction (a directory)
                    prepare = getattr(w.source, "prepare", None)
                    if prepare is not None:
                        w.image = prepare(txn.ingester,
                                          keep_xattrs=self.pub.settings.include_xattrs)
                        w.image.name = w.name
                if view.revision is not None and view.revision != txn.head.revision:
                    raise ContainerError("the repository changed while the run started; retry")
                self._plan(view, wanted, report, **options, txn=txn)
            finally:
                view.close()
                reader.close()
        report.publish = txn.summary.to_dict()
        report.revision = txn.summary.revision
        return report

    def _transaction(self, held: contextlib.ExitStack, tag: str | None):
        """A transaction entered in ``held``; while another process publishes, retried for up
        to ``lock_wait`` seconds."""
        deadline = time.monotonic() + self.lock_wait
        while True:
            txn = self.pub.transaction(tag=tag, message="pycvmfs container",
                                       progress=self.progress)
            try:
                return held.enter_context(txn)
            except RepositoryBusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def collect(self, *, grace_days: float = 7.0, dry_run: bool = False,
                ducc_leftovers: bool = False, include_unknown: bool = False) -> RunReport:
        """Garbage collection alone: delete the flats and layers retired for ``grace_days``;
        ``include_unknown`` retires flats and layers no recorded image uses (a repository DUCC
        filled), ``ducc_leftovers`` removes DUCC's ``.chains``, ``.dirty-chains`` and
        ``remove-schedule.json`` at once."""
        return self.run([], grace_days=grace_days, dry_run=dry_run, collect=True,
                        ducc_leftovers=ducc_leftovers, include_unknown=include_unknown)

    def _prefetch(self, wanted: Sequence[Wanted]) -> None:
        """Blobs a run will read are fetched before the lock is taken (a registry's go to
        the verified blob cache; opening a local one costs nothing)."""
        reader = self.reader()
        view = reader.open_revision()
        try:
            for w in wanted:
                if hasattr(w.source, "prepare"):
                    continue  # nothing to fetch: scanned in the transaction
                if "layers" not in w.outputs and view.exists(
                        "/" + layout.flat_path(w.image.config.digest)):
                    continue
                for d in w.image.layers:
                    if not view.exists(f"/{layout.layer_metadata(d.digest)}/{RECORD}"):
                        w.source.open_blob(d).close()
        finally:
            view.close()
            reader.close()

    def _plan(self, view, wanted: Sequence[Wanted], report: RunReport, *, prune: bool,
              complete: bool, grace_days: float, collect: bool,
              gc_extra: tuple[bool, bool], txn) -> None:
        now = int(self.now())
        old = self.published_state(view)
        new = PublishedState(images=dict(old.images), retired=dict(old.retired),
                             aliases=dict(old.aliases))
        layers_done: dict[str, LayerChanges] = {}
        self._new = new
        self._by_diff = {}  # DiffID -> a layer digest whose tree may be published with it
        for r in old.images.values():
            for d, diff in zip(r.layers, r.diff_ids, strict=False):
                if d not in old.aliases:
                    self._by_diff.setdefault(diff, d)
        #: digests whose .layers directory (a tree or a symlink) this run writes (plans)
        self._layers_written: set[str] = set()
        trees: dict[str, Tree | None] = {}  # flats written (planned: None) in this run

        def layer_published(d: str) -> bool:
            return view.exists(f"/{layout.layer_metadata(d)}/{RECORD}")

        for w in wanted:
            check_names(w.name, w.image)  # again: a scanned directory has its image only now
            check_parents(view, w.name, w.outputs)
            img = w.image
            rec = ImageRecord(name=w.name, manifest_digest=img.manifest_digest,
                              config_digest=img.config.digest, platform=str(img.platform),
                              layers=[d.digest for d in img.layers], diff_ids=list(img.diff_ids),
                              size=sum(d.size for d in img.layers), source=img.source,
                              published=now, alias=layout.alias_name(w.name, img.manifest_digest),
                              outputs=sorted(w.outputs))
            prev = old.images.get(w.name)
            flat = layout.flat_path(img.config.digest)
            need_flat = "flat" in w.outputs and not view.exists("/" + flat) and flat not in trees
            need_layers = "layers" in w.outputs and any(
                not layer_published(d.digest) and d.digest not in self._layers_written
                for d in img.layers)
            if prev is not None and prev.same_image(rec) and not need_flat and not need_layers:
                report.unchanged.append(w.name)
                rec.published, rec.flat_size = prev.published, prev.flat_size
                new.images[w.name] = rec
                continue
            (report.updated if prev is not None else report.added).append(w.name)
            if prev is not None and prev.manifest_digest == img.manifest_digest:
                rec.published = prev.published
            if need_flat or need_layers:
                if txn is None:
                    self._plan_layers(w, layers_done, layer_published, report)
                    if need_flat:
                        trees[flat] = None
                        report.flats_new.append(flat)
                else:
                    tree = self._build(txn, view, w, layers_done, report, now)
                    rec.flat_size = flat_size(tree)
                    if need_flat:
                        self._write_flat(txn, flat, tree, img, now)
                        trees[flat] = tree
                        report.flats_new.append(flat)
            elif prev is not None and prev.config_digest == img.config.digest:
                rec.flat_size = prev.flat_size
            new.images[w.name] = rec
        _share_flat_sizes(old, new)
        if prune:
            gone = sorted(set(old.images) - {w.name for w in wanted})
            if gone and not complete:
                report.warnings.append(
                    f"not removing {len(gone)} image(s) ({', '.join(gone)}): a registry could "
                    "not be listed, so the desired state is incomplete")
            elif gone:
                for n in gone:
                    del new.images[n]
                report.removed = gone
        if collect:  # an incomplete state retires what it stops using, deletes nothing
            self._collect(view, old, new, report, now, grace_days, delete=complete,
                          leftovers=gc_extra[0], unknown=gc_extra[1])
        if txn is not None:
            for p in report.deleted:
                txn.remove(p, missing_ok=True)
            images = {w.name: w.image for w in wanted}
            write_names(txn, view, old, new, images, now)
            write_podman(txn, view, old, new, images, report.warnings)
            write_thin(txn, self.pub.fqrn, new, old)
            if new.dump() != old.dump():
                write_catalog_dir(txn, layout.METADATA)
                txn.put_file(layout.images_index(), Meta(0o644, now, 0, 0),
                             txn.ingester.submit_bytes(new.dump()))

    # -- layers and flats ------------------------------------------------------------------
    def _plan_layers(self, w: Wanted, done: dict, published: Callable[[str], bool],
                     report: RunReport) -> None:
        """What :meth:`_build` would do with the layers of ``w``, nothing read (dry run)."""
        for desc, diff in zip(w.image.layers, w.image.diff_ids, strict=True):
            if "layers" in w.outputs and not published(desc.digest):
                self._layers_written.add(desc.digest)
            if desc.digest in done:
                continue
            done[desc.digest] = None
            if published(desc.digest) or self._twin(w, desc.digest, diff, published):
                report.layers_reused.append(desc.digest)
            else:
                report.layers_new.append(desc.digest)
                if "layers" in w.outputs:
                    self._by_diff.setdefault(diff, desc.digest)

    def _twin(self, w: Wanted, digest: str, diff_id: str,
              published: Callable[[str], bool]) -> str | None:
        """The digest of the same layer in another compression whose tree is in the
        repository (or written by this run), when ``w`` wants its layers: ``.layers/<digest>``
        becomes a symlink to it (§7.4)."""
        same = self._by_diff.get(diff_id)
        if (same is None or same == digest or "layers" not in w.outputs
                or not (same in self._layers_written or published(same))):
            return None
        return same

    def _layer(self, txn, view, w: Wanted, i: int, done: dict[str, LayerChanges],
               report: RunReport) -> tuple[LayerChanges, bool]:
        desc = w.image.layers[i]
        if desc.digest in done:
            return done[desc.digest], False
        if view.exists(f"/{layout.layer_metadata(desc.digest)}/{RECORD}"):
            ch = load_layer(view, desc.digest)
            if ch.diff_id != w.image.diff_ids[i]:
                raise ContainerError(f"{w.image.source}: layer {desc.digest} was published with "
                                     f"DiffID {ch.diff_id}, the config says "
                                     f"{w.image.diff_ids[i]}")
            report.layers_reused.append(desc.digest)
            done[desc.digest] = ch
            return ch, False
        same = self._twin(w, desc.digest, w.image.diff_ids[i], lambda d: view.exists(
            f"/{layout.layer_metadata(d)}/{RECORD}"))
        if same is not None:
            # the same layer in another compression (gzip in a registry, plain in a docker
            # archive): its DiffID is what the verified config names, so its published tree is
            # this layer's; nothing is read, .layers gets a symlink
            ch = done.get(same) or load_layer(view, same)
            done[desc.digest] = ch
            self._new.aliases[desc.digest] = same
            report.layers_reused.append(desc.digest)
            return ch, False
        what = f"{w.image.source} layer {i}"
        scanned = getattr(w.source, "layer_changes", None)
        if scanned is not None:
            ch = scanned(desc)
        else:
            with w.source.open_blob(desc) as raw:
                ch = read_layer(raw, desc, w.image.diff_ids[i], txn.ingester, what=what,
                                keep_xattrs=self.pub.settings.include_xattrs)
        report.warnings += ch.warnings
        report.layers_new.append(desc.digest)
        done[desc.digest] = ch
        return ch, True

    def _build(self, txn, view, w: Wanted, done: dict[str, LayerChanges], report: RunReport,
               now: int) -> Tree:
        tree = Tree()
        for i in range(len(w.image.layers)):
            ch, _fresh = self._layer(txn, view, w, i, done, report)
            digest = w.image.layers[i].digest
            if "layers" not in w.outputs or digest in self._layers_written or view.exists(
                    f"/{layout.layer_metadata(digest)}/{RECORD}"):
                pass  # not wanted, or there already
            elif (alias := self._new.aliases.get(digest)) is not None and (
                    alias in self._layers_written
                    or view.exists(f"/{layout.layer_metadata(alias)}/{RECORD}")):
                for top in (layout.LAYERS, f"{layout.LAYERS}/{digest[7:9]}"):
                    write_catalog_dir(txn, top)
                link = layout.layer_dir(digest)
                txn.remove(link, missing_ok=True)
                txn.put_symlink(link, Meta(0o777, now, 0, 0),
                                layout.relative_link(link, layout.layer_dir(alias)).encode())
                self._layers_written.add(digest)
            else:
                # a tree at that path without our record (DUCC's, with .wh. files) goes
                self._new.aliases.pop(digest, None)
                txn.remove(layout.layer_dir(digest), missing_ok=True)
                write_layer(txn, ch, resolve=_resolver(tree, ch), created=iso_time(now))
                for top in (layout.LAYERS, f"{layout.LAYERS}/{ch.compressed_digest[7:9]}"):
                    write_catalog_dir(txn, top)
                self._layers_written.add(digest)
                self._by_diff.setdefault(ch.diff_id, digest)
            report.warnings += [f"{w.image.source}: {m}" for m in tree.apply(ch)]
        return tree

    def _write_flat(self, txn, flat: str, tree: Tree, img: Image, now: int) -> None:
        from pycvmfs.containers.apptainer import apptainer_files

        for top in (layout.FLAT, flat.rsplit("/", 1)[0]):
            write_catalog_dir(txn, top)
        write_catalog_dir(txn, flat, node_meta(tree.root))  # its rows go straight there
        write_tree(txn, flat, tree, key=b"flat:" + img.config.digest.encode() + b":")
        created = int(_created(img) or now)
        put_generated(txn, flat, apptainer_files(img.config_json), mtime=created,
                      skip_existing=tree)

    # -- garbage collection ----------------------------------------------------------------
    def _collect(self, view, old: PublishedState, new: PublishedState, report: RunReport,
                 now: int, grace_days: float, *, delete: bool = True, leftovers: bool = False,
                 unknown: bool = False) -> None:
        live = new.live_paths()
        if unknown:
            for top in (layout.FLAT, layout.LAYERS):
                for shard in _listdir(view, top):
                    for h in _listdir(view, f"{top}/{shard}"):
                        if h.startswith("."):  # .cvmfscatalog: the shard's nested catalog
                            continue
                        p = f"{top}/{shard}/{h}"
                        if p not in live and p not in new.retired:
                            new.retired[p] = now
                            report.retired.append(p)
        if leftovers and delete:
            for p in (layout.CHAINS, layout.DIRTY_CHAINS,
                      f"{layout.METADATA}/remove-schedule.json"):
                if view.exists("/" + p):
                    report.deleted.append(p)
        for p in old.live_paths() - live:
            if p not in new.retired:
                new.retired[p] = now
                report.retired.append(p)
        for p in list(new.retired):
            if p in live:
                del new.retired[p]
            elif delete and now - new.retired[p] >= grace_days * DAY:
                report.deleted.append(p)
                del new.retired[p]


def _share_flat_sizes(old: PublishedState, new: PublishedState) -> None:
    """A name whose flat was built before (another name, an earlier run) gets its size."""
    known = {r.config_digest: r.flat_size for r in (*old.images.values(), *new.images.values())
             if r.flat_size}
    for r in new.images.values():
        if not r.flat_size:
            r.flat_size = known.get(r.config_digest, 0)


def _listdir(view, path: str) -> list[str]:
    try:
        return sorted(view.listdir("/" + path))
    except PathError:
        return []




def _created(img: Image) -> float | None:
    c = img.config_json.get("created")
    if isinstance(c, str):
        try:
            return _dt.datetime.fromisoformat(c.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _resolver(tree: Tree, ch: LayerChanges) -> Callable[[Entry], Entry]:
    """A HARDLINK into a lower layer as the FILE it is in the tree below this layer."""
    def resolve(e: Entry) -> Entry:
        n: Node | None = tree.lookup(e.target)
        if n is None or n.kind is not Kind.FILE:
            raise ContainerError(f"layer {ch.compressed_digest}: hard link "
                                 f"{os.fsdecode(e.path)} -> {os.fsdecode(e.target)}: no such "
                                 "file in the lower layers")
        return Entry(path=e.path, kind=Kind.FILE, mode=n.mode, uid=n.uid, gid=n.gid,
                     mtime=n.mtime, mtimens=n.mtimens, size=n.size,
                     xattrs=dict(n.xattrs) if n.xattrs else None, content=n.content)
    return resolve
