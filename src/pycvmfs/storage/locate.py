"""open_source: turn a repository location (URL or path) into a Source."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from pycvmfs.errors import ConfigError
from pycvmfs.storage.base import Source
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage


def open_source(location: str, *, must_exist: bool = True, **kw: Any) -> Source:
    """Open a repository location for reading.

    ``http://`` / ``https://`` URLs give an :class:`HttpSource` (several URLs may be separated by
    ``;``, tried in that order); ``file://`` URLs (``file:///abs/path``, ``file://localhost/...``)
    and plain paths give a :class:`LocalStorage`, whose folder must exist unless ``must_exist`` is
    false. ``kw`` goes to the constructor (e.g. ``proxies=``, ``timeout=`` for HTTP).
    """
    loc = location.strip()
    if not loc:
        raise ConfigError("empty repository location")
    lowered = loc.lower()
    if lowered.startswith(("http://", "https://")):
        urls = [u.strip() for u in loc.split(";") if u.strip()]
        bad = [u for u in urls if not u.lower().startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"{location!r}: mixes HTTP URLs with {bad[0]!r}")
        return HttpSource(urls, **kw)
    if lowered.startswith("file:"):
        parts = urlsplit(loc)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{location!r}: a file URL must be file:///absolute/path")
        path = unquote(parts.path)
    elif "://" in loc:
        raise ConfigError(f"{location!r}: unsupported scheme (use http(s)://, file:// or a path)")
    else:
        path = os.path.expanduser(loc)
    if must_exist and not os.path.isdir(path):
        raise ConfigError(f"{location!r}: no such storage directory {path}")
    return LocalStorage(path, **kw)
