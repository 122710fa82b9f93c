"""A stratum-0 repository this machine publishes to: create it, change it, tag and roll it back."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from pycvmfs.errors import ConfigError, PublishError, TagNotFoundError
from pycvmfs.format.catalog_writer import EntryRow
from pycvmfs.format.compression import Compression, compress
from pycvmfs.format.dirent import make_flags
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.history import TRUNK, TRUNK_PREVIOUS, History, Tag
from pycvmfs.format.manifest import Manifest
from pycvmfs.format.metainfo import make_skeleton
from pycvmfs.format.whitelist import Whitelist, create_whitelist
from pycvmfs.publish.catalog_tree import CatalogTree, CommitResult
from pycvmfs.publish.config import RepositoryConfig, ServerSettings, check_fqrn, config_base
from pycvmfs.publish.ingest import Ingester
from pycvmfs.publish.journal import ObjectJournal, recover
from pycvmfs.publish.keys import RepositoryKeys
from pycvmfs.publish.lock import publish_lock
from pycvmfs.publish.signing import (
    MANIFEST,
    WHITELIST,
    check_signing,
    read_head,
    store_object,
    switch_manifest,
)
from pycvmfs.publish.transaction import PublishSummary, Transaction
from pycvmfs.publish.upstream import SpooledStore, manifest_key
from pycvmfs.storage.local import LocalStorage
from pycvmfs.storage.objects import download_verified

__all__ = ["Publisher", "RollbackPlan", "open_publisher_store", "s3_upstream_spec"]

MASTER_REPLICA_TEXT = b"This file marks the repository as replicatable to stratum 1 servers\n"
UNDO_TAG_PREFIX = "pre-rollback-r"


@dataclasses.dataclass(frozen=True)
class RollbackPlan:
    """What ``rollback(target)`` would do: the head it leaves, the target, the tags it deletes
    and the tag that keeps the rolled-over head reachable (``None`` when not kept)."""

    fqrn: str
    head_revision: int
    head_root: ContentHash
    target: Tag
    deleted_tags: list[Tag]
    undo_tag: str | None

    @property
    def new_revision(self) -> int:
        return self.head_revision + 1


def s3_upstream_spec(spool: str | os.PathLike, alias: str, s3_config: str | os.PathLike) -> str:
    """The stock ``CVMFS_UPSTREAM_STORAGE`` value for a repository in S3."""
    return f"S3,{Path(spool).absolute()},{alias}@{Path(s3_config).absolute()}"


def open_publisher_store(config: RepositoryConfig) -> LocalStorage | SpooledStore:
    """The storage a publisher writes: the local storage directory, or for an S3 upstream a
    :class:`SpooledStore` (spool directory + bucket)."""
    if config.upstream is None:
        return LocalStorage(config.storage, fsync=False)
    from pycvmfs.storage.locate import open_s3

    return SpooledStore(config.storage, open_s3(config.upstream),
                        config.repo_dir / "upload.journal")


class Publisher:
    """The write side of one repository: its configuration, keys and storage.

    ``store`` is a :class:`LocalStorage` (the storage directory) or, for a repository in S3, a
    :class:`SpooledStore`; everything but the ingest pipeline goes through the ObjectStore
    protocol.
    """

    def __init__(self, config: RepositoryConfig, keys: RepositoryKeys) -> None:
        self.config = config
        self.keys = keys
        self.store: LocalStorage | SpooledStore = open_publisher_store(config)
        self._journal: ObjectJournal | None = None
        self.recovered_objects = 0

    # -- creating and opening ------------------------------------------------------------
    @classmethod
    def open(cls, fqrn: str, *, config_dir: str | os.PathLike | None = None,
             repository_key: bool = True) -> Publisher:
        """An existing repository; ``repository_key=False`` only for a certificate rotation
        (``<fqrn>.key``/``.crt`` may then be lost or broken: see :meth:`resign`)."""
        cfg = RepositoryConfig.load(fqrn, Path(config_dir) if config_dir else None)
        return cls(cfg, RepositoryKeys.load(cfg.keys_dir, fqrn, repository_key=repository_key))

    @classmethod
    def mkfs(cls, fqrn: str, storage: str | os.PathLike | None = None, *,
             upstream: str | None = None, config_dir: str | os.PathLike | None = None,
             settings: ServerSettings | None = None, whitelist_days: int = 30,
             keys: RepositoryKeys | None = None, now: int | None = None) -> Publisher:
        """Create a repository like ``cvmfs_server mkfs``: keys, whitelist, revision 0 (empty
        root catalog, meta-info skeleton), then revision 1 holding ``/new_repository``.

        ``storage`` is the storage directory; or ``upstream`` an S3 upstream
        ``S3,<spool dir>,<alias>@<s3.conf>`` (see :func:`s3_upstream_spec`)."""
        check_fqrn(fqrn)
        config_dir = config_base(config_dir)
        if upstream is not None:
            from pycvmfs.storage.locate import parse_s3_upstream

            spool, alias, conf = parse_s3_upstream(upstream)
            upstream = s3_upstream_spec(spool, alias, conf)
            storage = spool
        elif storage is None:
            raise ConfigError(f"mkfs {fqrn}: give a storage directory or an S3 upstream")
        storage = Path(storage).absolute()
        settings = settings or ServerSettings()
        if settings.owner_uid is None:
            settings.owner_uid, settings.owner_gid = os.getuid(), os.getgid()
        cfg = RepositoryConfig(fqrn, config_dir, storage, settings, upstream)
        if cfg.server_conf.exists():
            raise ConfigError(f"repository {fqrn} exists already ({cfg.server_conf})")
        store = open_publisher_store(cfg)
        try:
            if store.exists(MANIFEST):
                raise ConfigError(f"{store.describe()} holds a repository already")
        finally:
            store.close()
        keys = keys or RepositoryKeys.generate(fqrn)
        keys.save(cfg.keys_dir, fqrn)
        cfg.save()
        pub = cls(cfg, keys)
        pub.store.create_skeleton()
        with pub.lock():
            pub._mkfs_revision0(whitelist_days, int(now or time.time()))
        with pub.transaction() as txn:
            txn.add_file("/new_repository", f"New CernVM-FS repository for {fqrn}\n".encode(),
                         mode=0o644)
        return pub

    def _mkfs_revision0(self, whitelist_days: int, now: int) -> None:
        s = self.settings
        algo = s.hash_algorithm
        self.store.put_bytes(WHITELIST, create_whitelist(
            self.fqrn, self.keys.certificate, self.keys.require_master(self.config.keys_dir,
                                                                       self.fqrn),
            algorithm=algo, days=whitelist_days))
        mode = stat.S_IFDIR | 0o755
        root = EntryRow(mode=mode, flags=make_flags(mode=mode), size=4096, mtime=now,
                        uid=s.owner_uid or 0, gid=s.owner_gid or 0, linkcount=2)
        tree = self.open_tree(None, root_entry=root)
        try:
            result = tree.commit(self.store_object, now=now, ttl=None, root_revision=0,
                                 record_previous=False)
        finally:
            tree.close()
        meta = store_object(self.store, compress(make_skeleton()), ObjectKind.METAINFO, algo)
        manifest = Manifest(root_catalog=result.root_hash, root_catalog_size=result.root_size,
                            ttl=s.ttl, revision=0, meta_info=meta)
        switch_manifest(self.store, self.config, self.keys, manifest, previous=None, now=now)
        self.store.put_bytes(".cvmfs_master_replica", MASTER_REPLICA_TEXT)

    # -- basics --------------------------------------------------------------------------
    @property
    def fqrn(self) -> str:
        return self.config.fqrn

    @property
    def settings(self) -> ServerSettings:
        return self.config.settings

    def lock(self, *, wait: bool = False):
        return publish_lock(self.config.lock_path, what=f"repository {self.fqrn}", wait=wait)

    @contextlib.contextmanager
    def signing_lock(self) -> Iterator[None]:
        """The publish lock for a change that signs a new manifest: :meth:`check_signing`
        before it is taken (a refusal leaves even ``publish.lock`` untouched) and again once it
        is held (the keys or the whitelist may have changed meanwhile)."""
        self.check_signing()
        with self.lock():
            self.check_signing()
            yield

    def head(self) -> Manifest:
        return read_head(self.store, self.keys, self.fqrn)

    def check_signing(self) -> Whitelist:
        """Refuse a change no client would accept (key not the certificate's, certificate or
        whitelist expired, whitelist not naming the certificate), before anything is stored."""
        return check_signing(self.store, self.config, self.keys)

    def begin_change(self, head: Manifest | None = None) -> Manifest:
        """The head (or the ``head`` the caller read), for a change outside a transaction (tag,
        rollback, resign): with an S3 upstream, leftovers of a publisher that died are cleaned
        up first. Call it holding :meth:`signing_lock` (or :meth:`lock`)."""
        if head is None:
            head = self.head()
        if isinstance(self.store, SpooledStore):
            self.recovered_objects = self.store.recover(manifest_key(head))
        return head

    @property
    def spooled(self) -> bool:
        """Whether the repository lives in a remote upstream (S3) behind a local spool."""
        return isinstance(self.store, SpooledStore)

    def store_object(self, data: bytes, kind: ObjectKind) -> ContentHash:
        """Store compressed ``data`` with the repository's algorithm (journaled in a
        transaction)."""
        return store_object(self.store, data, kind, self.settings.hash_algorithm, self._journal)

    def open_journal(self, head: Manifest) -> ObjectJournal:
        """Start recording the objects of a transaction (after cleaning up a dead one's)."""
        path = self.config.repo_dir / "objects.journal"
        removed = recover(path, self.store.root, head.root_catalog)
        discard = None
        if isinstance(self.store, SpooledStore):
            removed += self.store.recover(manifest_key(head))
            discard = self.store.discard_uploads
        if removed:
            self.recovered_objects = removed
        self._journal = ObjectJournal(path, self.store.root, head.root_catalog,
                                      on_discard=discard)
        return self._journal

    def open_tree(self, root: ContentHash | None, *, root_entry: EntryRow | None = None
                  ) -> CatalogTree:
        work = self.config.work_dir / f"tree-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        return CatalogTree(self.store, work, root, algorithm=self.settings.hash_algorithm,
                           root_entry=root_entry)

    def new_ingester(self, on_progress=None) -> Ingester:
        s = self.settings
        return Ingester(self.store, algorithm=s.hash_algorithm, compression=s.compression,
                        chunking=s.chunking if s.use_chunking else None,
                        max_file_size=s.file_mbyte_limit << 20, on_progress=on_progress)

    def open_reader(self, cache_dir: str | os.PathLike):
        """A verified reader (:class:`pycvmfs.client.repository.Repository`) of this
        repository's own storage, trusting its master public key: what producers read the
        published state through (``reader.open_revision()`` is the head)."""
        from cryptography.hazmat.primitives import serialization

        from pycvmfs.client.cache import ObjectCache
        from pycvmfs.client.repository import Repository

        key = serialization.load_pem_public_key(self.keys.master_public_pem)
        return Repository(self.store, public_keys=[key], fqrn=self.fqrn,
                          cache=ObjectCache(cache_dir))

    def transaction(self, *, tag: str | None = None, message: str = "",
                    progress=None) -> Transaction:
        """``with publisher.transaction() as txn: ...`` publishes one revision at the end.
        Entering it is refused (before the lock is taken) when the keys cannot sign a
        revision (:meth:`signing_lock`)."""
        return Transaction(self, tag=tag, message=message, progress=progress)

    def check_limits(self, tree: CatalogTree) -> list[str]:
        """Catalog size limits (format doc §7.4): warnings, or errors with enforce_limits."""
        s = self.settings
        out = []
        for mp in tree.catalog_roots():
            n = tree.entry_count(mp)
            limit = (s.root_kcatalog_limit if mp == b"" else s.nested_kcatalog_limit) * 1000
            if n > limit:
                msg = (f"catalog at {os.fsdecode(mp) or '/'} has {n} entries, more than "
                       f"{limit} (add a .cvmfscatalog below it or a .cvmfsdirtab rule)")
                if s.enforce_limits:
                    raise PublishError(msg)
                out.append(msg)
        return out

    # -- committing ----------------------------------------------------------------------
    def commit_tree(self, tree: CatalogTree, head: Manifest, *, tag: str | None,
                    message: str, summary: PublishSummary) -> CommitResult:
        """Store the changed catalogs, the next history and a signed manifest (the switch)."""
        now = int(time.time())
        summary.warnings += self.check_limits(tree)
        result = tree.commit(self.store_object, now=now, ttl=self.settings.ttl,
                             root_revision=head.revision + 1)
        history = self._next_history(head, result, now, tag=tag, message=message,
                                     summary=summary)
        manifest = dataclasses.replace(
            head, root_catalog=result.root_hash, root_catalog_size=result.root_size,
            ttl=self.settings.ttl, revision=result.revision, history=history)
        switch_manifest(self.store, self.config, self.keys, manifest, previous=head, now=now)
        return result

    @contextlib.contextmanager
    def _history_copy(self, head: Manifest, name: str) -> Iterator[History]:
        work = self.config.work_dir
        work.mkdir(parents=True, exist_ok=True)
        new = work / f"{name}.db"
        old = work / f"{name}-old.db"
        for p in (new, old):
            p.unlink(missing_ok=True)
        if head.history is None:
            hist = History.create(new, self.fqrn, previous=None)
        else:
            with open(old, "wb") as f:
                download_verified(self.store, head.history, ObjectKind.HISTORY,
                                  Compression.ZLIB, f)
            hist = History.derive(old, new, previous=head.history)
        try:
            yield hist
        finally:
            hist.close()
            old.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _reading_history(self, head: Manifest) -> Iterator[History]:
        """The history of ``head`` to read only; its work copy goes afterwards."""
        try:
            with self._history_copy(head, "history-read") as hist:
                yield hist
        finally:
            (self.config.work_dir / "history-read.db").unlink(missing_ok=True)

    def _store_history(self, name: str) -> ContentHash:
        path = self.config.work_dir / f"{name}.db"
        h = self.store_object(compress(path.read_bytes()), ObjectKind.HISTORY)
        path.unlink()
        return h

    def _next_history(self, head: Manifest, result: CommitResult, now: int, *,
                      tag: str | None, message: str, summary: PublishSummary) -> ContentHash:
        s = self.settings
        with self._history_copy(head, "history") as hist:
            if s.auto_tag_timespan > 0:
                for old in hist.expired_auto_tags(now - s.auto_tag_timespan):
                    hist.remove(old.name)
            new = Tag("trunk", result.root_hash, result.revision, now, 0, "", result.root_size,
                      "")
            if tag:
                hist.insert(dataclasses.replace(new, name=tag, description=message))
                summary.tags.append(tag)
            elif s.auto_tag:
                name = hist.auto_tag_name(now)
                hist.insert(dataclasses.replace(new, name=name))
                summary.tags.append(name)
            hist.update_undo_tags(new, keep_previous=head.history is not None)
        return self._store_history("history")

    # -- tags, rollback, resign ----------------------------------------------------------
    def tags(self) -> list[Tag]:
        head = self.head()
        if head.history is None:
            return []
        with self._reading_history(head) as hist:
            return hist.tags()

    def tag(self, name: str, *, root_hash: ContentHash | None = None, message: str = "",
            remove: bool = False) -> Manifest:
        """Add (or with ``remove`` delete) a named tag; re-signs the manifest, S unchanged."""
        with self.signing_lock():
            head = self.begin_change()
            with self._history_copy(head, "history") as hist:
                if remove:
                    if not hist.remove(name):
                        raise TagNotFoundError(f"tag {name!r} not found in {self.fqrn}")
                else:
                    target = root_hash or head.root_catalog
                    info = self.catalog_info(target)
                    hist.insert(Tag(name, target, info[0], info[1], 0, message, info[2], ""))
            h = self._store_history("history")
            return switch_manifest(self.store, self.config, self.keys,
                                   dataclasses.replace(head, history=h), previous=head)

    def catalog_info(self, h: ContentHash) -> tuple[int, int, int]:
        """(revision, last_modified, uncompressed size) of a root catalog."""
        from pycvmfs.format.catalog import Catalog

        work = self.config.work_dir
        work.mkdir(parents=True, exist_ok=True)
        path = work / "probe.db"
        with open(path, "wb") as f:
            download_verified(self.store, h, ObjectKind.CATALOG, Compression.ZLIB, f)
        try:
            with Catalog.open(path, what=h.describe(ObjectKind.CATALOG)) as cat:
                if cat.root_prefix:
                    raise PublishError(f"{h}: a nested catalog, not a root catalog")
                return cat.revision, cat.last_modified, path.stat().st_size
        finally:
            path.unlink(missing_ok=True)

    def _plan(self, hist: History, head: Manifest, target: str, keep_undo: bool) -> RollbackPlan:
        tag = hist.get(target)
        if tag is None or tag.branch != "":
            raise TagNotFoundError(f"tag {target!r} not found in {self.fqrn}")
        if tag.revision >= head.revision:
            raise PublishError(f"{self.fqrn}: tag {target!r} is the current revision "
                               f"{head.revision}; nothing to roll back")
        deleted = [t for t in hist.tags_affected_by_rollback(target)
                   if t.name not in (target, TRUNK, TRUNK_PREVIOUS)]
        previous = hist.get(TRUNK_PREVIOUS)  # always goes: one anonymous undo, as in stock
        if previous is not None and target != TRUNK_PREVIOUS:
            deleted.append(previous)
        undo = f"{UNDO_TAG_PREFIX}{head.revision}" if keep_undo else None
        return RollbackPlan(self.fqrn, head.revision, head.root_catalog, tag, deleted, undo)

    def rollback_plan(self, target: str = "trunk-previous", *,
                      keep_undo: bool = True) -> RollbackPlan:
        """What :meth:`rollback` would do, without changing anything; refused like the
        rollback itself when the keys cannot sign it."""
        self.check_signing()
        head = self.head()
        with self._reading_history(head) as hist:
            return self._plan(hist, head, target, keep_undo)

    def rollback(self, target: str = "trunk-previous", *, keep_undo: bool = True,
                 expect_head: ContentHash | None = None) -> Manifest:
        """Make the revision of tag ``target`` current again, as a new revision.

        Tags newer than the target go (as in stock); with ``keep_undo`` the rolled-over head
        gets the tag ``pre-rollback-r<revision>``, so ``pycvmfs gc`` keeps it and
        ``rollback(that tag)`` undoes the rollback. ``expect_head`` (the head a
        :meth:`rollback_plan` was shown for) refuses when someone published since.
        """
        from pycvmfs.format.catalog_writer import CatalogWriter

        with self.signing_lock():
            head = self.begin_change()
            if expect_head is not None and head.root_catalog != expect_head:
                raise PublishError(f"{self.fqrn}: the head changed to revision {head.revision} "
                                   "since the rollback was planned; nothing was changed")
            with self._history_copy(head, "history") as hist:
                plan = self._plan(hist, head, target, keep_undo)
                tag = plan.target
                undo_at = self.catalog_info(head.root_catalog) if plan.undo_tag else None
                now = int(time.time())
                work = self.config.work_dir / "rollback.db"
                with open(work, "wb") as f:
                    download_verified(self.store, tag.root_hash, ObjectKind.CATALOG,
                                      Compression.ZLIB, f)
                w = CatalogWriter.open(work, what=f"catalog {tag.root_hash}C")
                w.set_property("revision", head.revision + 1)
                w.set_property("last_modified", now)
                w.set_property("previous_revision", str(head.root_catalog))
                w.close()
                data = work.read_bytes()
                new_root = self.store_object(compress(data), ObjectKind.CATALOG)
                work.unlink()
                hist.rollback_to(tag, new_root, head.revision + 1, now, len(data))
                if plan.undo_tag and undo_at is not None and hist.get(plan.undo_tag) is None:
                    hist.insert(Tag(plan.undo_tag, head.root_catalog, head.revision,
                                    undo_at[1], 0, f"head before the rollback to {target}",
                                    undo_at[2], ""))
            h = self._store_history("history")
            manifest = dataclasses.replace(head, root_catalog=new_root,
                                           root_catalog_size=len(data),
                                           revision=head.revision + 1, history=h)
            return switch_manifest(self.store, self.config, self.keys, manifest, previous=head,
                                   now=now)

    def resign(self, *, days: int = 30, published: bool = False,
               rotate_certificate: bool = False, certificate_days: int = 365) -> Manifest | None:
        """``cvmfs_server resign``: renew the whitelist (``days``); with ``published`` re-sign
        the current manifest instead (``resign -p``); with ``rotate_certificate`` make a new
        repository key and certificate, a whitelist naming it and re-sign the manifest. The
        manifest ones return the re-signed manifest (same revision)."""
        from pycvmfs.publish import resign

        if rotate_certificate:
            return resign.rotate_certificate(self, whitelist_days=days,
                                             certificate_days=certificate_days)
        if published:
            return resign.resign_published(self)
        resign.renew_whitelist(self, days=days)
        return None
