"""open_source / open_store: turn a repository location (URL, S3 spec or path) into a storage."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pycvmfs.errors import ConfigError
from pycvmfs.storage.base import ObjectStore, Source
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.local import LocalStorage
from pycvmfs.storage.s3 import S3Storage


def open_source(location: str, *, must_exist: bool = True, **kw: Any) -> Source:
    """Open a repository location for reading.

    ``http://`` / ``https://`` URLs give an :class:`HttpSource` (several URLs may be separated by
    ``;``, tried in that order); ``file://`` URLs (``file:///abs/path``, ``file://localhost/...``)
    and plain paths give a :class:`LocalStorage`, whose folder must exist unless ``must_exist`` is
    false; S3 locations (see :func:`open_s3`) give an :class:`S3Storage`. ``kw`` goes to the
    constructor (e.g. ``proxies=``, ``timeout=`` for HTTP).
    """
    loc = location.strip()
    if not loc:
        raise ConfigError("empty repository location")
    lowered = loc.lower()
    if is_s3_location(loc):
        return open_s3(loc, **kw)
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
        raise ConfigError(f"{location!r}: unsupported scheme (use http(s)://, file://, s3:// "
                          "or a path)")
    else:
        path = os.path.expanduser(loc)
    if must_exist and not os.path.isdir(path):
        raise ConfigError(f"{location!r}: no such storage directory {path}")
    return LocalStorage(path, **kw)


def open_store(location: str, *, must_exist: bool = True, **kw: Any) -> ObjectStore:
    """Open a location for writing: a storage directory (path or ``file://``) or S3 (see
    :func:`open_s3`). HTTP URLs are read-only and refused with a ConfigError."""
    if location.strip().lower().startswith(("http://", "https://")):
        raise ConfigError(f"{location!r}: an HTTP URL is read-only; give a storage directory or "
                          "an S3 location")
    store = open_source(location, must_exist=must_exist, **kw)
    assert isinstance(store, ObjectStore)
    return store


def is_s3_location(location: str) -> bool:
    """Whether ``location`` names S3: ``s3://...`` or a stock ``S3,<tmp>,<alias>@<conf>``."""
    loc = location.strip()
    return loc.lower().startswith("s3://") or loc.startswith("S3,")


def parse_s3_upstream(spec: str) -> tuple[str, str, str]:
    """Split a stock ``CVMFS_UPSTREAM_STORAGE`` S3 value ``S3,<tmp dir>,<alias>@<s3.conf>``
    into ``(tmp dir, alias, config path)``; the alias is the key prefix in the bucket."""
    parts = spec.strip().split(",", 2)
    if len(parts) != 3 or parts[0] != "S3" or "@" not in parts[2]:
        raise ConfigError(f"{spec!r}: expected S3,<tmp dir>,<repository alias>@<s3.conf path>")
    alias, _, conf = parts[2].rpartition("@")
    if not conf:
        raise ConfigError(f"{spec!r}: no S3 configuration file after '@'")
    return parts[1], alias, conf


def open_s3(location: str, **kw: Any) -> S3Storage:
    """An :class:`S3Storage` from an S3 location.

    * ``S3,<tmp dir>,<alias>@<s3.conf>`` — the stock ``CVMFS_UPSTREAM_STORAGE`` form: bucket,
      endpoint and keys from the ``CVMFS_S3_*`` file, keys below ``<alias>/`` (stock: the fqrn).
    * ``s3://<bucket>[/<prefix>]?endpoint=<URL>[&region=R][&dns_buckets=true][&config=FILE]``
      — credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or ``config=`` an
      ``s3.conf`` supplying them and the endpoint), anonymous when there are none. Without
      ``endpoint`` the AWS default endpoint is used.
    """
    loc = location.strip()
    if loc.startswith("S3,"):
        _tmp, alias, conf = parse_s3_upstream(loc)
        return S3Storage.from_config_file(conf, prefix=alias, **kw)
    parts = urlsplit(loc)
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"{location!r}: an S3 URL is s3://<bucket>[/<prefix>]?endpoint=<URL>")
    prefix = unquote(parts.path).strip("/")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"endpoint", "region", "dns_buckets", "config"}
    if unknown:
        raise ConfigError(f"{location!r}: unknown S3 URL parameter {sorted(unknown)[0]!r} "
                          "(endpoint, region, dns_buckets, config)")
    opts: dict[str, Any] = {}
    if "endpoint" in query:
        opts["endpoint_url"] = query["endpoint"]
    if "region" in query:
        opts["region"] = query["region"]
    if "dns_buckets" in query:
        opts["dns_buckets"] = query["dns_buckets"].lower() in ("true", "yes", "on", "1")
    opts.update(kw)
    if "config" in query:
        return S3Storage.from_config_file(query["config"], prefix=prefix, bucket=bucket, **opts)
    return S3Storage(bucket, prefix=prefix, **opts)
