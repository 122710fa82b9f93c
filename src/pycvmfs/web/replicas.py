"""Whether every stratum 1 is up to date: replica status rows and Prometheus metrics.

:func:`replica_status` reads each stratum 1 as a client would, with the stratum 0's master keys:
its manifest must carry a valid signature and its root catalog must match the hash the manifest
names, so a replica serving tampered or foreign data is reported as an error, never as a
revision. Each replica is read with its own object cache (a client refuses a manifest older
than one it has seen, and a replica is usually older than its stratum 0). The time of its last
snapshot comes from ``.cvmfs_last_snapshot`` (or ``.cvmfs_status.json``), which stratum 1s
write unsigned, as stock ``cvmfs_server snapshot`` does.

A replica lags when its revision is below the stratum 0's; it has lagged since the stratum 0
published the first revision it lacks (read from the stratum 0's verified root catalogs, or its
history's tags). It is ``stale`` when it has lagged longer than ``stale_after`` seconds, or
cannot be read, or serves another root catalog under the stratum 0's revision number.

:func:`prometheus_metrics` writes the same figures in the Prometheus text exposition format.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.client.repository import Repository, open_repository
from pycvmfs.errors import CvmfsError, ObjectNotFoundError
from pycvmfs.format.signature import load_public_keys
from pycvmfs.replica.snapshot import IS_SNAPSHOTTING, LAST_SNAPSHOT, STATUS
from pycvmfs.storage.base import fetch_bytes
from pycvmfs.web.repoinfo import iso_date

__all__ = ["parse_snapshot_date", "prometheus_metrics", "replica_status"]

#: root catalogs of the stratum 0 read back from its head to date a lagging replica
_CHAIN_LIMIT = 32
_SMALL = 1 << 16
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                        "Sep", "Oct", "Nov", "Dec"), 1)}


def parse_snapshot_date(text: str) -> int | None:
    """UNIX time of a ``date --utc`` line (``Tue Nov  5 12:00:00 UTC 2024``, what stratum 1s
    write to ``.cvmfs_last_snapshot``) or of an ISO 8601 date; None if it is neither."""
    parts = text.split()
    if len(parts) == 6 and parts[4] == "UTC" and parts[1] in _MONTHS:
        try:
            hh, mm, ss = (int(x) for x in parts[3].split(":"))
            d = _dt.datetime(int(parts[5]), _MONTHS[parts[1]], int(parts[2]), hh, mm, ss,
                             tzinfo=_dt.UTC)
        except ValueError:
            return None
        return int(d.timestamp())
    try:
        d = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((d if d.tzinfo else d.replace(tzinfo=_dt.UTC)).timestamp())


# -- the stratum 0 -------------------------------------------------------------------------

@dataclass
class _Stratum0:
    """The stratum 0's head, and when each of its recent revisions was published."""

    repo: Repository
    fqrn: str
    revision: int
    root_hash: str
    published: dict[int, int] = field(default_factory=dict)  # revision -> UNIX time
    _walked: bool = False

    def published_at(self, revision: int) -> int | None:
        """When ``revision`` was published on the default branch, if it can be told."""
        if revision not in self.published and not self._walked:
            self._walked = True
            self._walk_chain()
            for t in self.repo.tags():
                if t.branch == "" and t.timestamp:
                    old = self.published.get(t.revision)
                    self.published[t.revision] = min(t.timestamp, old or t.timestamp)
        return self.published.get(revision)

    def _walk_chain(self) -> None:
        """The newest root catalogs, each verified by the hash its successor names."""
        h = self.repo.manifest.root_catalog
        for _ in range(_CHAIN_LIMIT):
            with self.repo.load_catalog(h) as cat:
                self.published[cat.revision] = cat.last_modified
                prev = cat.previous_revision
            if prev is None:
                return
            h = prev


def _open_stratum0(stratum0: Repository | str, keys: Sequence, cache: Path,
                   timeout: float) -> _Stratum0:
    repo = stratum0 if isinstance(stratum0, Repository) else open_repository(
        stratum0, keys=keys, cache_dir=cache / "stratum0", timeout=timeout)
    m = repo.refresh().manifest
    return _Stratum0(repo, repo.fqrn or m.fqrn, m.revision, str(m.root_catalog))


# -- one replica ---------------------------------------------------------------------------

def _empty_row(url: str, s0: _Stratum0) -> dict:
    return {"replica": url, "fqrn": s0.fqrn, "verified": False, "revision": None,
            "root_hash": None, "published": None, "published_timestamp": None,
            "last_snapshot": None, "last_snapshot_timestamp": None, "snapshotting": False,
            "stratum0_revision": s0.revision, "lag_revisions": None,
            "lag_seconds": None, "behind_since": None, "stale": True, "error": None}


def _read_small(repo: Repository, relpath: str) -> bytes | None:
    try:
        return fetch_bytes(repo.source, relpath, what=repo.source.describe(relpath),
                           limit=_SMALL, fresh=True)
    except ObjectNotFoundError:
        return None


def _last_snapshot(repo: Repository) -> int | None:
    raw = _read_small(repo, LAST_SNAPSHOT)
    if raw is not None:
        return parse_snapshot_date(raw.decode("utf-8", "replace"))
    status = _read_small(repo, STATUS)
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(status or b"{}").get("last_snapshot")
        return parse_snapshot_date(text) if isinstance(text, str) else None
    return None


def _check_replica(url: str, s0: _Stratum0, keys: Sequence, cache: Path, timeout: float,
                   stale_after: float, now: float) -> dict:
    row = _empty_row(url, s0)
    cache_dir = cache / hashlib.sha1(url.encode()).hexdigest()[:16]
    try:
        with open_repository(url, keys=keys, fqrn=s0.fqrn, cache_dir=cache_dir,
                             timeout=timeout) as repo:
            m = repo.refresh().manifest
            with repo.load_catalog(m.root_catalog) as cat:  # served intact, hash checked
                revision = cat.revision
            if revision != m.revision:
                raise CvmfsError(f"{url}: the root catalog has revision {revision}, the "
                                 f"manifest says {m.revision}")
            row.update(verified=True, revision=m.revision, root_hash=str(m.root_catalog),
                       published=iso_date(m.publish_timestamp or None),
                       published_timestamp=m.publish_timestamp or None)
            with contextlib.suppress(CvmfsError):  # unsigned markers: best effort
                snap = _last_snapshot(repo)
                row.update(last_snapshot=iso_date(snap), last_snapshot_timestamp=snap,
                           snapshotting=_read_small(repo, IS_SNAPSHOTTING) is not None)
    except Exception as e:  # a status page reports every failure, it never raises
        row["error"] = _error_text(e, url)
        return row
    lag = s0.revision - row["revision"]
    row["lag_revisions"] = lag
    if lag <= 0:
        row.update(lag_seconds=0, stale=False)
        if lag == 0 and row["root_hash"] != s0.root_hash:
            row.update(stale=True, error=f"{url}: revision {s0.revision} has root catalog "
                                         f"{row['root_hash']}, the stratum 0's is "
                                         f"{s0.root_hash}")
        return row
    since = s0.published_at(row["revision"] + 1)
    if since is None:  # too far behind to tell: stale
        return row
    row.update(behind_since=iso_date(since), lag_seconds=max(0.0, round(now - since, 3)))
    row["stale"] = row["lag_seconds"] > stale_after
    return row


def _error_text(e: BaseException, url: str) -> str:
    """The error's message, naming the replica's URL."""
    text = str(e) or type(e).__name__
    if not isinstance(e, CvmfsError):
        text = f"{type(e).__name__}: {text}"
    return text if url in text else f"{url}: {text}"


def replica_status(stratum0: Repository | str, replicas: Sequence[str], *, keys: Sequence,
                   stale_after: float, now: float | _dt.datetime | None = None,
                   cache_dir: str | os.PathLike | None = None, timeout: float = 10.0,
                   workers: int = 8) -> list[dict]:
    """One row per stratum 1 URL in ``replicas`` (in their order), compared with
    ``stratum0`` (a verified reader, refreshed here, or a URL / storage path opened with
    ``keys``); ``keys``: master public keys (key objects, files or directories).

    Row keys: ``replica``, ``fqrn``, ``verified`` (read, its signature and root catalog
    checked), ``revision``, ``root_hash``, ``published``, ``last_snapshot`` (ISO dates;
    ``*_timestamp``: UNIX times), ``snapshotting``, ``stratum0_revision``,
    ``lag_revisions``, ``lag_seconds``, ``behind_since``, ``stale`` and ``error`` (None, or
    why the replica cannot be read or trusted). Unreachable or tampered replicas are rows,
    never exceptions; only a stratum 0 that cannot be read raises. ``now``: the time lags
    are measured at (default: now). ``cache_dir`` keeps one verified object cache per
    replica between calls (default: a temporary one)."""
    loaded = [k for k in keys if not isinstance(k, str | os.PathLike)]
    paths = [k for k in keys if isinstance(k, str | os.PathLike)]
    public_keys = loaded + (load_public_keys(paths) if paths else [])
    if isinstance(now, _dt.datetime):
        now = (now if now.tzinfo else now.replace(tzinfo=_dt.UTC)).timestamp()
    at = time.time() if now is None else float(now)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="replicas-")))
        else:
            cache = Path(cache_dir)
        s0 = _open_stratum0(stratum0, public_keys, cache, timeout)
        if not isinstance(stratum0, Repository):
            stack.callback(s0.repo.close)
        s0.published_at(s0.revision)  # read the chain once, before the threads share it
        with ThreadPoolExecutor(max(1, min(workers, len(replicas) or 1))) as pool:
            return list(pool.map(lambda url: _check_replica(
                url, s0, public_keys, cache, timeout, stale_after, at), replicas))


# -- Prometheus ----------------------------------------------------------------------------

def _escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    return ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(int(value)) if value.is_integer() else repr(value)
    return str(int(value))


#: (metric, help, row key) of the replica gauges, labelled fqrn and replica
_REPLICA_GAUGES = (
    ("cvmfs_replica_up", "Whether the stratum 1 could be read and verified (1) or not (0).",
     "verified"),
    ("cvmfs_replica_revision", "Revision of the stratum 1's verified manifest.", "revision"),
    ("cvmfs_replica_lag_revisions", "Revisions the stratum 1 is behind its stratum 0.",
     "lag_revisions"),
    ("cvmfs_replica_lag_seconds", "Seconds since the stratum 0 published the first revision "
     "the stratum 1 lacks (0 when up to date).", "lag_seconds"),
    ("cvmfs_replica_last_snapshot_timestamp_seconds",
     "UNIX time of the stratum 1's last snapshot (.cvmfs_last_snapshot).",
     "last_snapshot_timestamp"),
    ("cvmfs_replica_stale", "1 when the stratum 1 lagged longer than allowed or cannot be read.",
     "stale"),
)
#: (metric, help, info key) of the repository gauges, labelled fqrn
_REPOSITORY_GAUGES = (
    ("cvmfs_repository_revision", "Revision of the repository's verified manifest.",
     "revision"),
    ("cvmfs_repository_published_timestamp_seconds",
     "UNIX time the current revision was published.", "published_timestamp"),
    ("cvmfs_repository_files", "Regular files in the current revision.", "files"),
    ("cvmfs_repository_bytes", "Sum of the file sizes of the current revision.", "bytes"),
)


def _gauge(lines: list[str], name: str, help_text: str,
           samples: Iterable[tuple[Mapping[str, object], object]]) -> None:
    body = [f"{name}{{{_labels(labels)}}} {_number(value)}"
            for labels, value in samples if value is not None]
    if body:
        lines += [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} gauge", *body]


def prometheus_metrics(status_rows: Iterable[Mapping], repositories_info: Iterable[Mapping]
                       ) -> str:
    """The text exposition format (version 0.0.4) of replica rows (:func:`replica_status`)
    and repository summaries (dicts with ``fqrn``, ``revision`` and optionally
    ``published_timestamp``, ``files``, ``bytes``, as
    :func:`pycvmfs.web.repoinfo.repository_summary` answers). A figure that is unknown
    (None) has no sample; a metric without samples is left out."""
    rows, infos = list(status_rows), list(repositories_info)
    lines: list[str] = []
    for name, help_text, key in _REPLICA_GAUGES:
        _gauge(lines, name, help_text,
               (({"fqrn": r.get("fqrn") or "", "replica": r["replica"]}, r.get(key))
                for r in rows))
    for name, help_text, key in _REPOSITORY_GAUGES:
        _gauge(lines, name, help_text, (({"fqrn": i["fqrn"]}, i.get(key)) for i in infos))
    return "\n".join(lines) + "\n" if lines else ""
