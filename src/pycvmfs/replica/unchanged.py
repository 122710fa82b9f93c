"""The no-op snapshot: a replica already at its source's revision, recognised without verifying
the same signatures again.

After every successful verified snapshot, :func:`remember` keeps in the state dir the SHA-256
of the manifest and whitelist bytes it verified, the master keys that verified them (a SHA-256
of the key files), the whitelist's expiry and what the report needs. The next snapshot fetches
the two files (the same plain GETs as the verified path) and, when their bytes are the ones
verified then, under the same keys, before the whitelist expires, and they are what the replica
serves, it only marks the snapshot done (:func:`unchanged_report`; nothing from the source is
written to the replica then). Identical bytes checked by the same keys give the same verdict,
so nothing is trusted that was not verified; anything else (a new revision, a re-signed
whitelist, other keys, a replica that differs, a missing or unreadable record) goes the whole
verified way. A verified snapshot :func:`forget`s the record before it starts and writes it
again only when it succeeded, so a record is never older than what the verified path has seen
(its refusal of an older revision stays in force).

Imports nothing heavy: no signatures, SQLite, catalogs or copy engine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.replica.snapshot import (
    LAST_SNAPSHOT,
    MANIFEST,
    SMALL,
    WHITELIST,
    SnapshotReport,
    mark_done,
    read_file,
)
from pycvmfs.storage.base import ObjectStore, Source, fetch_bytes

if TYPE_CHECKING:
    from pycvmfs.client.repository import TrustedState

__all__ = ["RECORD", "forget", "key_fingerprint", "remember", "unchanged_report"]

#: the record in the state dir
RECORD = "verified-head.json"


def key_fingerprint(keys: Sequence) -> str | None:
    """SHA-256 (hex) of the contents of the key files ``keys`` name (a directory: its ``*.pub``
    files, sorted, as :func:`pycvmfs.format.signature.load_public_keys` reads them); None when
    a key is an object rather than a path, or a file is missing or unreadable (then no record
    is used or written)."""
    if not keys:
        return None
    h = hashlib.sha256()
    for key in keys:
        if not isinstance(key, str | os.PathLike):
            return None
        path = Path(key)
        if path.is_dir():
            files = sorted(f for f in path.glob("*.pub") if f.is_file())
            if not files:
                return None
        elif path.is_file():
            files = [path]
        else:
            return None
        for f in files:
            try:
                data = f.read_bytes()
            except OSError:
                return None
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()


def forget(state: Path) -> None:
    """Drop the record (a verified snapshot starts)."""
    (state / RECORD).unlink(missing_ok=True)


def remember(state: Path, *, fqrn: str, keys: str, trusted: TrustedState,
             all_tags: bool) -> None:
    """Record the head a verified snapshot has just verified and placed on the replica;
    ``keys``: :func:`key_fingerprint` of the keys that verified it; ``all_tags``: whether the
    trees of all its tags are on the replica. A record that cannot be written is left out."""
    m = trusted.manifest
    record = {"fqrn": fqrn, "keys": keys, "manifest": _sha256(trusted.manifest_bytes),
              "whitelist": _sha256(trusted.whitelist_bytes),
              "whitelist_expires": trusted.whitelist.expires.timestamp(),
              "revision": m.revision, "root_hash": str(m.root_catalog), "all_tags": all_tags}
    tmp = state / (RECORD + ".tmp")
    try:
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, state / RECORD)
    except OSError:  # (a full disk, say): the snapshot itself succeeded; the next one verifies
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def unchanged_report(source: Source, dest: ObjectStore, fqrn: str, keys: str | None,
                     state: Path, *, all_tags: bool,
                     now: Callable[[], _dt.datetime] | None = None) -> SnapshotReport | None:
    """The report of a no-op snapshot when the source's manifest and whitelist are the bytes
    recorded as verified (and the replica serves them), after marking the snapshot done; None
    when the verified snapshot has to run. ``keys``: :func:`key_fingerprint` of the keys the
    snapshot was given. The caller holds the snapshot lock."""
    record = _load(state)
    if (record is None or keys is None or record.get("keys") != keys
            or record.get("fqrn") != fqrn or (all_tags and record.get("all_tags") is not True)):
        return None
    try:
        expires = float(record["whitelist_expires"])
        revision, root_hash = int(record["revision"]), str(record["root_hash"])
    except (KeyError, TypeError, ValueError):
        return None
    if not math.isfinite(expires) or _now_seconds(now) >= expires:
        return None  # the verified path reports the expired whitelist
    where = source.describe("") or "repository"
    manifest = fetch_bytes(source, MANIFEST, what=f"{MANIFEST} of {where}".rstrip("/"),
                           limit=SMALL)
    if _sha256(manifest) != record.get("manifest"):
        return None
    whitelist = fetch_bytes(source, WHITELIST, what=f"{WHITELIST} of {where}".rstrip("/"),
                            limit=SMALL)
    if _sha256(whitelist) != record.get("whitelist"):
        return None
    if (read_file(dest, MANIFEST) != manifest or read_file(dest, WHITELIST) != whitelist
            or not dest.exists(LAST_SNAPSHOT)):
        return None
    if _now_seconds(now) >= expires:
        return None  # it expired while the files were fetched
    mark_done(dest)
    return SnapshotReport(fqrn, source.describe(), dest.describe(), revision, root_hash,
                          revision, changed=False)


def _load(state: Path) -> dict | None:
    try:
        record = json.loads((state / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now_seconds(now: Callable[[], _dt.datetime] | None) -> float:
    """``now()`` (naive: UTC, as the whitelist check takes it) in seconds since the epoch."""
    if now is None:
        return time.time()
    t = now()
    return (t if t.tzinfo is not None else t.replace(tzinfo=_dt.UTC)).timestamp()
