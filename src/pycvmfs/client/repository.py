"""A repository reached through a source, and the chain of trust that opens its revisions."""

from __future__ import annotations

import datetime as _dt
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.client.cache import Breadcrumb, ObjectCache, default_cache_dir
from pycvmfs.client.view import RevisionView
from pycvmfs.errors import (
    ConfigError,
    FormatError,
    OutdatedManifestError,
    TagNotFoundError,
)
from pycvmfs.format.catalog import Catalog
from pycvmfs.format.certificate import Certificate
from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import DirectoryEntry
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.history import History, Tag
from pycvmfs.format.manifest import Manifest, verify_manifest
from pycvmfs.format.whitelist import Whitelist, verify_whitelist
from pycvmfs.storage.base import Source, fetch_bytes
from pycvmfs.storage.objects import HISTORY_LIMIT, SMALL_FILE_LIMIT, catalog_limit

if TYPE_CHECKING:
    from pycvmfs.client.config import ClientConfig

__all__ = ["Repository", "TrustedState", "open_repository"]

#: size caps of the objects no catalog entry gives a size for (see storage.objects)
_FIXED_LIMITS = {ObjectKind.CERTIFICATE: SMALL_FILE_LIMIT, ObjectKind.METAINFO: SMALL_FILE_LIMIT,
                 ObjectKind.HISTORY: HISTORY_LIMIT}

MANIFEST = ".cvmfspublished"
WHITELIST = ".cvmfswhitelist"


@dataclass(frozen=True)
class TrustedState:
    """The verified head of a repository: manifest, certificate and whitelist."""

    manifest: Manifest
    certificate: Certificate
    whitelist: Whitelist
    manifest_bytes: bytes
    whitelist_bytes: bytes


class Repository:
    """A CernVM-FS repository whose every byte is checked before use.

    The chain is: master public key -> whitelist signature -> certificate fingerprint ->
    manifest signature -> root catalog hash -> nested catalog hashes -> object hashes.
    """

    def __init__(self, source: Source, *, public_keys: Sequence, fqrn: str | None = None,
                 cache: ObjectCache | None = None,
                 now: Callable[[], _dt.datetime] | None = None,
                 blacklist: Sequence[ContentHash] = (),
                 env: Callable[[str], str | None] | None = None) -> None:
        if not public_keys:
            raise ConfigError("no public key given: a repository cannot be verified without "
                              "its master public key (--key FILE or a keys directory)")
        self.source = source
        self.public_keys = list(public_keys)
        self.fqrn = fqrn
        self.cache = cache if cache is not None else ObjectCache(default_cache_dir())
        self._now = now or (lambda: _dt.datetime.now(_dt.UTC))
        self.blacklist = list(blacklist)
        self.env = env
        self._state: TrustedState | None = None
        self._history: History | None = None
        self._lock = threading.RLock()
        #: recorded (uncompressed) catalog sizes, from the manifest and the nested_catalogs
        #: rows of the catalogs opened so far: each catalog download is capped by its size
        self._catalog_sizes: dict[ContentHash, int] = {}

    # -- the chain of trust --------------------------------------------------------------
    def refresh(self) -> TrustedState:
        """Fetch and verify the current manifest, certificate and whitelist.

        Plain GETs, as the stock client makes them: proxies may answer from their cache for the
        61 s the server allows (format doc §1.7, §8.2); bad bytes still trigger a no-cache retry
        in the source."""
        with self._lock:
            data = fetch_bytes(self.source, MANIFEST, what=self._where(MANIFEST),
                               limit=SMALL_FILE_LIMIT)
            from pycvmfs.format.manifest import parse_signed_manifest

            unverified, _ = parse_signed_manifest(data, what=self._where(MANIFEST))
            fqrn = self.fqrn or unverified.fqrn
            if not fqrn:
                raise FormatError(f"{self._where(MANIFEST)}: no repository name (key N)")
            if unverified.fqrn != fqrn:
                raise FormatError(f"{self._where(MANIFEST)}: manifest is for repository "
                                  f"{unverified.fqrn!r}, expected {fqrn!r}")
            crumb = self.cache.read_breadcrumb(fqrn)
            self._check_not_older(unverified, crumb)
            if unverified.certificate is None:
                raise FormatError(f"{self._where(MANIFEST)}: no certificate hash (key X)")
            cert_path = self.fetch_object(unverified.certificate, ObjectKind.CERTIFICATE)
            certificate = Certificate.from_pem(
                Path(cert_path).read_bytes(),
                what=unverified.certificate.describe(ObjectKind.CERTIFICATE))
            manifest = verify_manifest(data, certificate, what=self._where(MANIFEST))
            wl_bytes = fetch_bytes(self.source, WHITELIST, what=self._where(WHITELIST),
                                   limit=SMALL_FILE_LIMIT)
            whitelist = verify_whitelist(wl_bytes, self.public_keys, fqrn=fqrn,
                                         certificate=certificate, now=self._now(),
                                         blacklist=self.blacklist,
                                         what=self._where(WHITELIST))
            self.fqrn = fqrn
            self.cache.write_breadcrumb(fqrn, Breadcrumb(manifest.root_catalog,
                                                         manifest.publish_timestamp or 0,
                                                         manifest.revision))
            if self._state is None or self._state.manifest.history != manifest.history:
                self._close_history()
            self._state = TrustedState(manifest, certificate, whitelist, data, wl_bytes)
            return self._state

    def _check_not_older(self, m: Manifest, crumb: Breadcrumb | None) -> None:
        if crumb is None:
            return
        where = self._where(MANIFEST)
        if m.revision < crumb.revision:
            raise OutdatedManifestError(
                f"{where}: revision {m.revision} is older than revision {crumb.revision} "
                "already seen; refusing to go back")
        if (m.publish_timestamp or 0) < crumb.timestamp:
            raise OutdatedManifestError(
                f"{where}: published at {m.publish_timestamp}, older than the manifest already "
                f"seen (published at {crumb.timestamp}); refusing to go back")

    def _where(self, relpath: str) -> str:
        return f"{relpath} of {self.source.describe('') or 'repository'}".rstrip("/")

    @property
    def state(self) -> TrustedState:
        return self._state if self._state is not None else self.refresh()

    @property
    def manifest(self) -> Manifest:
        return self.state.manifest

    # -- objects and catalogs ------------------------------------------------------------
    def fetch_object(self, h: ContentHash, kind: ObjectKind,
                     compression: Compression = Compression.ZLIB, *,
                     max_size: int | None = None) -> Path:
        """Path of a verified, decompressed object in the local cache; ``max_size`` bounds
        its size (:meth:`ObjectCache.fetch`), by default the limit of its kind (a catalog's
        recorded size, the fixed caps of certificate, meta-info and history)."""
        if max_size is None:
            max_size = self.size_limit(h, kind)
        return self.cache.fetch(self.source, h, kind, compression, max_size=max_size)

    def size_limit(self, h: ContentHash, kind: ObjectKind) -> int | None:
        """The most bytes object ``h`` may decompress to, as far as the repository knows
        without a catalog entry: a catalog's recorded size (the manifest's for the root, the
        parent's row for a nested catalog opened through this repository), the fixed caps of
        certificate, meta-info and history; None for data objects (their size is the entry's)."""
        if kind is ObjectKind.CATALOG:
            recorded = self._catalog_sizes.get(h)
            if not recorded and self._state is not None and h == self._state.manifest.root_catalog:
                recorded = self._state.manifest.root_catalog_size
            return catalog_limit(recorded)
        return _FIXED_LIMITS.get(kind)

    def load_catalog(self, h: ContentHash, mountpoint: bytes = b"",
                     what: str | None = None) -> Catalog:
        """The catalog ``h``, verified, to be mounted at ``mountpoint`` (``b""``: a root
        catalog); one whose ``root_prefix`` says otherwise raises :class:`CatalogError`."""
        return self._open_catalog(h, mountpoint, what, pin=False)

    def _load_pinned_catalog(self, h: ContentHash, mountpoint: bytes, what: str) -> Catalog:
        # a view's catalogs stay pinned in the cache until the view closes (release_object)
        return self._open_catalog(h, mountpoint, what, pin=True)

    def _open_catalog(self, h: ContentHash, mountpoint: bytes, what: str | None, *,
                      pin: bool) -> Catalog:
        """Fetch (capped by its recorded size) and open a catalog, checked to be mounted where
        its root_prefix says (:meth:`Catalog.check_mounted`: with nested catalogs strictly
        below it, every walk of the tree goes deeper, never round); the sizes its nested
        catalogs are recorded with cap their downloads in turn."""
        path = self.cache.fetch(self.source, h, ObjectKind.CATALOG, pin=pin,
                                max_size=self.size_limit(h, ObjectKind.CATALOG))
        try:
            cat = Catalog.open(path, what=what or h.describe(ObjectKind.CATALOG), hash=h)
            try:
                cat.check_mounted(mountpoint)
                for ref in cat.nested_catalogs():
                    if ref.hash is not None and ref.size:
                        self._catalog_sizes[ref.hash] = ref.size
            except BaseException:
                cat.close()
                raise
        except BaseException:
            if pin:
                self.cache.unpin(h)
            raise
        return cat

    def _fetch_for_entry(self, h: ContentHash, kind: ObjectKind, entry: DirectoryEntry,
                         size: int) -> Path:
        # pinned until the RepoFile reading it lets go (release_object below); capped at its
        # size in the catalog (the file's, or the chunk's)
        return self.cache.fetch(self.source, h, kind, entry.compression, pin=True,
                                max_size=size)

    def _lookup_for_entry(self, h: ContentHash) -> Path | None:
        # cached objects only, pinned like _fetch_for_entry; None: download in a thread
        return self.cache.lookup(h, pin=True)

    # -- history -------------------------------------------------------------------------
    def history(self) -> History | None:
        with self._lock:
            if self._history is None:
                h = self.state.manifest.history
                if h is None:
                    return None
                path = self.fetch_object(h, ObjectKind.HISTORY)
                self._history = History.open(path, what=h.describe(ObjectKind.HISTORY))
            return self._history

    def tags(self) -> list[Tag]:
        hist = self.history()
        return hist.tags() if hist is not None else []

    def _close_history(self) -> None:
        if self._history is not None:
            self._history.close()
            self._history = None

    # -- revisions -----------------------------------------------------------------------
    def resolve(self, *, tag: str | None = None, revision: int | None = None,
                root_hash: str | ContentHash | None = None,
                date: str | _dt.datetime | None = None) -> tuple[ContentHash, int | None]:
        """The root catalog hash (and revision if known) of the revision asked for."""
        if sum(x is not None for x in (tag, revision, root_hash, date)) > 1:
            raise ConfigError("give at most one of tag, revision, root hash and date")
        m = self.state.manifest
        if root_hash is not None:
            h = root_hash if isinstance(root_hash, ContentHash) else ContentHash.parse(
                root_hash, what="root hash")
            return h, None
        if tag is not None:
            t = self.history().get(tag) if self.history() is not None else None
            if t is None:
                raise TagNotFoundError(f"tag {tag!r} not found in the history of {self.fqrn}")
            return self._tagged(t)
        if date is not None:
            ts = _parse_date(date)
            t = self.history().tag_at_date(ts) if self.history() is not None else None
            if t is None:
                raise TagNotFoundError(f"no tag of {self.fqrn} at or before {date}")
            return self._tagged(t)
        if revision is not None and revision != m.revision:
            return self._find_revision(revision), revision
        return m.root_catalog, m.revision

    def _tagged(self, t: Tag) -> tuple[ContentHash, int | None]:
        """A tag's root catalog and revision; its recorded size caps the catalog's download."""
        if t.size:
            self._catalog_sizes[t.root_hash] = t.size
        return t.root_hash, t.revision

    def _find_revision(self, revision: int) -> ContentHash:
        if revision > self.state.manifest.revision or revision < 0:
            raise TagNotFoundError(f"{self.fqrn} has no revision {revision} "
                                   f"(newest is {self.state.manifest.revision})")
        for t in self.tags():
            if t.revision == revision and t.branch == "":
                return t.root_hash
        h = self.state.manifest.root_catalog
        while True:  # follow previous_revision links, each one verified by its hash
            with self.load_catalog(h) as cat:
                if cat.revision == revision:
                    return h
                prev = cat.previous_revision
                if prev is None or cat.revision < revision:
                    break
                h = prev
        raise TagNotFoundError(f"revision {revision} of {self.fqrn} not found")

    def open_revision(self, *, tag: str | None = None, revision: int | None = None,
                      root_hash: str | ContentHash | None = None,
                      date: str | _dt.datetime | None = None) -> RevisionView:
        """A verified view of the newest revision, or of the one named by tag/revision/hash/date."""
        h, rev = self.resolve(tag=tag, revision=revision, root_hash=root_hash, date=date)
        m = self.state.manifest
        return RevisionView(
            fqrn=self.fqrn or "", root_hash=h,
            load_catalog=self._load_pinned_catalog,
            fetch_object=self._fetch_for_entry, env=self.env, revision=rev,
            timestamp=m.publish_timestamp if h == m.root_catalog else None,
            release_object=self.cache.unpin,
            # without a quota a cache lookup is one stat(); with one, pinning writes the
            # quota database, which may wait for other processes: not on an event loop
            lookup_object=self._lookup_for_entry if self.cache.quota is None else None)

    head = open_revision

    def close(self) -> None:
        self._close_history()
        self.source.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_date(date: str | _dt.datetime) -> int:
    if isinstance(date, _dt.datetime):
        d = date if date.tzinfo else date.replace(tzinfo=_dt.UTC)
        return int(d.timestamp())
    text = date.strip()
    if text.isdigit():
        return int(text)
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            d = _dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.UTC)
            return int(d.timestamp())
        except ValueError:
            continue
    raise ConfigError(f"cannot parse date {date!r} (expected YYYY-MM-DDThh:mm:ssZ)")


def guess_fqrn(location: str) -> str | None:
    """The repository name a URL or storage path ends with, if it looks like one."""
    last = location.rstrip("/").rsplit("/", 1)[-1]
    return last if "." in last and not last.startswith(".") else None


def open_repository(location: str, *, keys: Sequence[str | os.PathLike] | Sequence = (),
                    fqrn: str | None = None, cache_dir: str | os.PathLike | None = None,
                    proxies: Sequence[str] = ("DIRECT",), timeout: float = 10.0,
                    now: Callable[[], _dt.datetime] | None = None,
                    env: Callable[[str], str | None] | None = None,
                    quota_limit: int | None = None, low_speed_limit: int = 1024,
                    deadline: float = 3600.0) -> Repository:
    """Open a repository from a URL (``http://host/cvmfs/fqrn``, several separated by ``;``) or
    a local storage directory, trusting the given public keys (files or directories).

    ``quota_limit`` (bytes) keeps the cache under that size with LRU eviction (``cachedb``).
    Over HTTP, a transfer slower than ``low_speed_limit`` bytes/s for ``timeout`` seconds
    (``CVMFS_LOW_SPEED_LIMIT``), or not done after ``deadline`` seconds, fails over to the
    next server (:class:`~pycvmfs.storage.http.HttpSource`)."""
    from pycvmfs.format.signature import load_public_keys
    from pycvmfs.storage.locate import open_source

    public_keys = [k for k in keys if not isinstance(k, str | os.PathLike)]
    paths = [k for k in keys if isinstance(k, str | os.PathLike)]
    if paths:
        public_keys += load_public_keys(paths)
    if location.strip().lower().startswith(("http://", "https://")):
        source = open_source(location, proxies=proxies, timeout=timeout,
                             low_speed_limit=low_speed_limit, deadline=deadline)
    else:
        source = open_source(location)
    if fqrn is None:
        fqrn = guess_fqrn(location.split(";")[0])
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    quota = None
    if quota_limit is not None:
        from pycvmfs.client.quota import QuotaManager

        quota = QuotaManager(cache_dir, quota_limit)
    cache = ObjectCache(cache_dir, quota=quota)
    return Repository(source, public_keys=public_keys, fqrn=fqrn, cache=cache, now=now, env=env)


def open_configured_repository(cfg: ClientConfig, *, keys: Sequence[str | os.PathLike] = (),
                               proxies: Sequence[str] = (),
                               cache_dir: str | os.PathLike | None = None,
                               pool_size: int = 16) -> Repository:
    """Open the repository a CernVM-FS client configuration describes (servers, proxies,
    timeouts, keys, cache location and quota), as the mount does; ``keys``, ``proxies`` and
    ``cache_dir`` override the configuration's. ``pool_size``: keep-alive connections."""
    from pycvmfs.format.signature import load_public_keys
    from pycvmfs.storage.http import HttpSource

    urls = cfg.server_urls
    if not urls:
        raise ConfigError(f"{cfg.fqrn}: CVMFS_SERVER_URL is not configured")
    options = cfg.source_options()
    if proxies:
        options["proxies"] = list(proxies)
    source = HttpSource(urls, pool_size=pool_size, **options)
    keys_found = load_public_keys(list(keys) or cfg.public_keys)
    cache_base = cache_dir or cfg.cache_base or str(default_cache_dir())
    directory = os.path.join(cache_base, "shared" if cfg.shared_cache else cfg.fqrn)
    if not cache_dir and cfg.cache_dir:
        directory = str(cfg.cache_dir)
    quota = None
    if cfg.quota_limit_mb:
        from pycvmfs.client.quota import QuotaManager

        quota = QuotaManager(directory, cfg.quota_limit_mb << 20)
    return Repository(source, public_keys=keys_found, fqrn=cfg.fqrn,
                      cache=ObjectCache(directory, quota=quota))
