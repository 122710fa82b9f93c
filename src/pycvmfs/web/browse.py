"""The repository browser's per-request reads: a path's details and a diff of two revisions.

These are the only portal answers not stored in the index: each is a few keyed catalog
lookups, capped (children listed, changes listed), read through the verified reader. Each
indexed repository gets its own reader for them (separate from the one the index refreshes
with, with its own object cache below the index's), used by one request at a time. It is
refreshed when the index moved to another revision; the "current" revision of a request is
the INDEXED one, so a newer head the index refused is never shown.

Errors: an unknown repository, revision, tag or path raises :class:`BrowseNotFound`, a
request that cannot be answered (a bad path or revision) :class:`BrowseBadRequest`, a read
that fails verification :class:`BrowseRefused`; each message names the repository and what
was asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pycvmfs.errors import (
    ConfigError,
    CvmfsError,
    NoSuchPathError,
    NotADirectoryPathError,
    StackError,
    TagNotFoundError,
    TooManySymlinksError,
)
from pycvmfs.web.index import UnknownName, WebIndex
from pycvmfs.web.repoinfo import DIFF_LIMIT, Ref, entry_details, open_ref, revision_diff

__all__ = ["BrowseBadRequest", "BrowseNotFound", "BrowseRefused", "Browser", "clean_text"]

#: children a directory answer lists at most
CHILDREN_LIMIT = 2000
#: the most of a log a page shows (its tail: where a build failed)
LOG_LIMIT = 2 << 20
#: the file names :meth:`Browser.log` serves, in a ``logs/`` folder (what the builder publishes)
LOG_NAMES = ("build.log", "test.log")

_T = TypeVar("_T")


class BrowseNotFound(StackError, LookupError):
    """An unknown repository, revision, tag or path."""


class BrowseBadRequest(StackError, ValueError):
    """A path or revision the browser cannot look up."""


class BrowseRefused(StackError):
    """A read that failed verification (or could not fetch what it needed)."""


def clean_text(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (a non-UTF-8 name of the
    repository shows its undecodable bytes as ``\\xNN``), recursively through dicts and lists."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {k: clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


class _Reader:
    """One repository's browsing reader and the lock serialising its use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repo: Any = None
        self.synced_root: str | None = None


class Browser:
    """Per-request reads of the repositories ``index`` has indexed."""

    def __init__(self, index: WebIndex) -> None:
        self.index = index
        self._readers: dict[str, _Reader] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        with self._guard:
            for reader in self._readers.values():
                with reader.lock:
                    if reader.repo is not None:
                        reader.repo.close()
                        reader.repo = None
            self._readers.clear()

    # -- reads -------------------------------------------------------------------------------
    def tree(self, fqrn: str, path: str, revision: str | None = None, *,
             limit: int = CHILDREN_LIMIT) -> dict[str, Any]:
        """:func:`~pycvmfs.web.repoinfo.entry_details` of ``path`` in ``revision`` (None:
        the indexed revision; digits: a revision number; else a tag) plus ``fqrn``."""
        path = "/" + path.strip("/")
        what = f"{path} in {_describe(revision)}"
        out = self._with_repo(fqrn, what, lambda repo, head: entry_details(
            repo, path, _ref(revision, head), max_children=limit))
        return clean_text({"fqrn": fqrn, **out})

    def diff(self, fqrn: str, a: str, b: str, *, path: str = "/",
             limit: int = DIFF_LIMIT) -> dict[str, Any]:
        """:func:`~pycvmfs.web.repoinfo.revision_diff` from ``a`` to ``b`` (each a
        revision number or a tag; empty: the indexed revision) below ``path``."""
        path = "/" + path.strip("/")
        what = f"the diff from {_describe(a or None)} to {_describe(b or None)}"
        out = self._with_repo(fqrn, what, lambda repo, head: revision_diff(
            repo, _ref(a or None, head), _ref(b or None, head), path=path, limit=limit))
        return clean_text(out)

    def log(self, fqrn: str, path: str, *, limit: int = LOG_LIMIT) -> dict[str, Any]:
        """A build or test log a build published (``.../logs/build.log`` or ``test.log``) in
        the indexed revision: its last ``limit`` bytes (from a line start when cut), decoded as
        UTF-8 with undecodable bytes replaced. Other files are not served."""
        path = "/" + path.strip("/")
        parts = path.rsplit("/", 2)
        if len(parts) != 3 or parts[1] != "logs" or parts[2] not in LOG_NAMES:
            raise BrowseBadRequest(f"{fqrn}: {path}: only build logs are served "
                                   f"(.../logs/{' or .../logs/'.join(LOG_NAMES)})")

        def read(repo: Any, head: int) -> dict[str, Any]:
            with open_ref(repo, head) as view:
                st = view.stat(path)
                if not st.is_file:
                    raise BrowseBadRequest(f"{path} is not a regular file")
                size = st.entry.size
                offset = max(0, size - limit)
                with view.open_stat(st) as f:
                    data = f.pread(size - offset, offset)
                if offset:
                    cut = data.find(b"\n")
                    if 0 <= cut < len(data) - 1:
                        data, offset = data[cut + 1:], offset + cut + 1
                h = st.entry.hash
                return {"fqrn": fqrn, "path": path, "size": size,
                        "hash": str(h) if h is not None else None, "offset": offset,
                        "truncated": offset > 0,
                        "text": data.decode("utf-8", errors="replace")}

        return self._with_repo(fqrn, f"the log {path}", read)

    # -- the reader ----------------------------------------------------------------------------
    def _with_repo(self, fqrn: str, what: str, fn: Callable[[Any, int], _T]) -> _T:
        try:
            info = self.index.repository(fqrn)
            src = self.index.source_of(fqrn)
        except UnknownName as e:
            raise BrowseNotFound(str(e)) from None
        if info["revision"] is None or info["root_hash"] is None:
            raise BrowseNotFound(f"repository {fqrn!r} has no verified revision indexed")
        with self._guard:
            reader = self._readers.setdefault(fqrn, _Reader())
        with reader.lock:
            try:
                if reader.repo is None:
                    from pycvmfs.client.repository import open_repository

                    reader.repo = open_repository(
                        src.location, keys=list(src.keys), fqrn=src.fqrn,
                        cache_dir=Path(self.index.cache_dir) / "browse" / fqrn)
                if reader.synced_root != info["root_hash"]:
                    reader.repo.refresh()
                    reader.synced_root = info["root_hash"]
                return fn(reader.repo, info["revision"])
            except (NoSuchPathError, NotADirectoryPathError, TagNotFoundError) as e:
                raise BrowseNotFound(f"{fqrn}: {what}: {e}") from None
            except (ConfigError, TooManySymlinksError, ValueError) as e:
                raise BrowseBadRequest(f"{fqrn}: {what}: {e}") from None
            except (CvmfsError, OSError, EOFError) as e:
                reader.synced_root = None  # read the manifest again next time
                raise BrowseRefused(f"{fqrn}: {what}: refused, {type(e).__name__}: {e}"
                                    ) from None


def _ref(text: str | None, indexed: int) -> Ref:
    """A revision reference: the indexed revision for None, a number for digits, else a tag."""
    if text is None or text == "":
        return indexed
    if _is_number(text):
        if len(text.strip()) > 18:
            raise TagNotFoundError(f"there is no revision {text.strip()[:30]}")
        return int(text)
    return text


def _describe(revision: str | None) -> str:
    if revision is None:
        return "the indexed revision"
    return f"revision {revision}" if _is_number(revision) else f"tag {revision!r}"


def _is_number(text: str) -> bool:
    text = text.strip()
    return text.isascii() and text.isdigit()
