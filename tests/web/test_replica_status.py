"""pycvmfs.web.replicas: a stratum 0 of our publisher and stratum 1s made by the real
``pycvmfs snapshot`` command, all served over real loopback HTTP; one replica lags, one is
down, others are tampered with; the Prometheus text is parsed back."""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.client.repository import open_repository
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.web.replicas import parse_snapshot_date, prometheus_metrics, replica_status
from pycvmfs.web.repoinfo import repository_summary
from web.conftest import iso

from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository

FQRN = "mirror.example.org"
CLI = [sys.executable, "-m", "pycvmfs.cli.main"]




@dataclass
class Mirrors:
    """A stratum 0, its stratum 1 (served below ``s1_root``) and a URL nobody answers."""

    pub: Publisher
    base: Path
    s0_url: str
    s1_root: Path
    s1_server: LoopbackServer
    down_url: str
    roots: dict[int, str] = field(default_factory=dict)
    published: dict[int, int] = field(default_factory=dict)
    snapshot_window: tuple[float, float] = (0.0, 0.0)

    @property
    def key(self) -> Path:
        return self.pub.config.key_path("pub")

    @property
    def s1_url(self) -> str:
        return f"{self.s1_server.url}/{FQRN}"

    def publish(self, files: dict[str, bytes]) -> int:
        with self.pub.transaction() as txn:
            for path, data in files.items():
                txn.add_file(path, data)
        head = self.pub.head()
        self.roots[head.revision] = str(head.root_catalog)
        self.published[head.revision] = head.publish_timestamp
        return head.revision

    def snapshot(self) -> None:
        """``pycvmfs snapshot`` of the stratum 0 into the stratum 1, as an operator runs it."""
        before = time.time()
        res = subprocess.run([*CLI, "snapshot", self.s0_url, str(self.s1_root / FQRN),
                              "-k", str(self.key), "--state-dir", str(self.base / "s1-state")],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        self.snapshot_window = (before, time.time())

    def copy_replica(self, name: str) -> Path:
        """A copy of the stratum 1 served at ``<s1 server>/<name>/<fqrn>``."""
        dest = self.s1_root / name / FQRN
        shutil.copytree(self.s1_root / FQRN, dest)
        return dest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mirrors(tmp_path: Path) -> Iterator[Mirrors]:
    pub = new_repository(tmp_path, FQRN, ServerSettings())
    s0 = LoopbackServer(tmp_path / "srv")
    (tmp_path / "s1").mkdir()
    s1 = LoopbackServer(tmp_path / "s1")
    m = Mirrors(pub, tmp_path, f"{s0.url}/{FQRN}", tmp_path / "s1", s1,
                f"http://127.0.0.1:{_closed_port()}/cvmfs/{FQRN}")
    m.publish({"/data/one.txt": b"one\n", "/data/two.txt": b"two\n"})  # revision 2
    m.snapshot()
    yield m
    s0.stop()
    s1.stop()


def test_a_replica_one_revision_behind_and_one_down(mirrors: Mirrors, tmp_path: Path) -> None:
    assert mirrors.publish({"/data/three.txt": b"three\n"}) == 3
    t3 = mirrors.published[3]
    rows = replica_status(mirrors.s0_url, [mirrors.s1_url, mirrors.down_url],
                          keys=[mirrors.key], stale_after=3600, now=t3 + 10)
    lagging, down = rows
    before, after = mirrors.snapshot_window
    assert math.floor(before) <= lagging["last_snapshot_timestamp"] <= after
    assert lagging == {
        "replica": mirrors.s1_url, "fqrn": FQRN, "verified": True, "revision": 2,
        "root_hash": mirrors.roots[2], "published": iso(mirrors.published[2]),
        "published_timestamp": mirrors.published[2],
        "last_snapshot": iso(lagging["last_snapshot_timestamp"]),
        "last_snapshot_timestamp": lagging["last_snapshot_timestamp"], "snapshotting": False,
        "stratum0_revision": 3, "lag_revisions": 1, "lag_seconds": 10,
        "behind_since": iso(t3), "stale": False, "error": None}
    assert (down["replica"], down["verified"], down["revision"], down["lag_revisions"],
            down["stale"], down["stratum0_revision"]) == (mirrors.down_url, False, None, None,
                                                          True, 3)
    assert mirrors.down_url in down["error"] and "Connection refused" in down["error"]

    # lagging longer than allowed: stale; the stratum 0 given as an open reader
    with open_repository(mirrors.s0_url, keys=[mirrors.key], cache_dir=tmp_path / "c0") as s0:
        late = replica_status(s0, [mirrors.s1_url], keys=[mirrors.key], stale_after=5,
                              now=_dt.datetime.fromtimestamp(t3 + 10, _dt.UTC),
                              cache_dir=tmp_path / "replica-caches")
    assert late == [{**lagging, "stale": True}]

    # two revisions behind: it has lagged since the first one it lacks was published
    assert mirrors.publish({"/data/four.txt": b"four\n"}) == 4
    two = replica_status(mirrors.s0_url, [mirrors.s1_url], keys=[mirrors.key],
                         stale_after=3600, now=mirrors.published[4] + 1,
                         cache_dir=tmp_path / "replica-caches")[0]
    assert (two["revision"], two["stratum0_revision"], two["lag_revisions"],
            two["behind_since"], two["lag_seconds"]) == (
        2, 4, 2, iso(t3), mirrors.published[4] + 1 - t3)

    mirrors.snapshot()  # caught up: not stale however strict the limit
    caught = replica_status(mirrors.s0_url, [mirrors.s1_url], keys=[mirrors.key],
                            stale_after=0, cache_dir=tmp_path / "replica-caches")[0]
    assert (caught["revision"], caught["root_hash"], caught["lag_revisions"],
            caught["lag_seconds"], caught["behind_since"], caught["stale"],
            caught["error"]) == (4, mirrors.roots[4], 0, 0, None, False, None)


def test_tampered_replicas_are_error_rows(mirrors: Mirrors) -> None:
    # a newer revision claimed: the body's hash line recomputed, the old signature kept
    bad_manifest = mirrors.copy_replica("bad-manifest") / ".cvmfspublished"
    body, rest = bad_manifest.read_bytes().split(b"\n--\n", 1)
    assert b"\nS2\n" in body
    body = body.replace(b"\nS2\n", b"\nS9\n", 1) + b"\n"
    signature = rest.split(b"\n", 1)[1]
    bad_manifest.write_bytes(body + b"--\n" + hashlib.sha1(body).hexdigest().encode() + b"\n"
                             + signature)
    bad_catalog = mirrors.copy_replica("bad-catalog")
    root = ContentHash.parse(mirrors.roots[2])
    victim = bad_catalog / root.object_path(ObjectKind.CATALOG)
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))

    urls = [f"{mirrors.s1_server.url}/bad-manifest/{FQRN}", mirrors.s1_url,
            f"{mirrors.s1_server.url}/bad-catalog/{FQRN}"]
    rows = replica_status(mirrors.s0_url, urls, keys=[mirrors.key], stale_after=3600)
    assert [r["replica"] for r in rows] == urls
    forged, good, broken = rows
    assert (good["verified"], good["revision"], good["lag_revisions"], good["stale"],
            good["error"]) == (True, 2, 0, False, None)
    for row in (forged, broken):
        assert (row["verified"], row["revision"], row["root_hash"], row["lag_revisions"],
                row["stale"]) == (False, None, None, None, True)
    assert forged["error"] == (f".cvmfspublished of {urls[0]}: signature does not verify with "
                               "the certificate's key")
    assert broken["error"].startswith(f"{urls[2]}: catalog {root}C: content hash mismatch")


def test_snapshot_markers(mirrors: Mirrors) -> None:
    store = mirrors.s1_root / FQRN
    first = replica_status(mirrors.s0_url, [mirrors.s1_url], keys=[mirrors.key],
                           stale_after=60)[0]
    (store / ".cvmfs_is_snapshotting").write_text("Tue Nov  5 12:00:00 UTC 2024\n")
    (store / ".cvmfs_last_snapshot").unlink()  # then .cvmfs_status.json says when
    second = replica_status(mirrors.s0_url, [mirrors.s1_url], keys=[mirrors.key],
                            stale_after=60)[0]
    assert second["snapshotting"] is True and first["snapshotting"] is False
    assert second["last_snapshot_timestamp"] == first["last_snapshot_timestamp"] is not None
    assert parse_snapshot_date("Tue Nov  5 12:00:00 UTC 2024") == int(
        _dt.datetime(2024, 11, 5, 12, tzinfo=_dt.UTC).timestamp())
    assert parse_snapshot_date("2024-11-05T12:00:00Z") == parse_snapshot_date(
        "Tue Nov  5 12:00:00 UTC 2024")
    assert parse_snapshot_date("not a date") is None


# -- the Prometheus text, parsed back ---------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of the text format 0.0.4, checking that each metric has one HELP and one
    TYPE line before its samples, that its samples are contiguous and labels well-formed."""
    assert text.endswith("\n")
    samples: dict[tuple[str, frozenset], float] = {}
    helped: set[str] = set()
    typed: dict[str, str] = {}
    finished: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped and re.fullmatch(_NAME, name), line
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in typed and kind == "gauge", line
            typed[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.groups()
        assert name in typed and name not in finished, line
        if current not in (None, name):
            finished.add(current)
        current = name
        labels: dict[str, str] = {}
        rest = labels_text or ""
        while rest:
            lm = _LABEL.match(rest)
            assert lm, f"bad labels in {line!r}"
            labels[lm.group(1)] = re.sub(r"\\[\\\"n]", lambda x: _UNESCAPE[x.group(0)],
                                         lm.group(2))
            rest = rest[lm.end():]
        key = (name, frozenset(labels.items()))
        assert key not in samples, line
        samples[key] = float(value)
    return samples


def test_prometheus_metrics(mirrors: Mirrors, tmp_path: Path) -> None:
    mirrors.publish({"/data/three.txt": b"three\n"})
    rows = replica_status(mirrors.s0_url, [mirrors.s1_url, mirrors.down_url],
                          keys=[mirrors.key], stale_after=3600,
                          now=mirrors.published[3] + 30)
    with open_repository(mirrors.s0_url, keys=[mirrors.key], cache_dir=tmp_path / "c") as s0:
        info = repository_summary(s0)
    assert (info["fqrn"], info["revision"], info["files"], info["bytes"]) == (
        FQRN, 3, 4, len(f"New CernVM-FS repository for {FQRN}\n") + 4 + 4 + 6)
    # a label value needing every escape of the format
    odd = {**rows[0], "replica": 'http://h/"q"\\x\ny'}
    samples = parse_exposition(prometheus_metrics([*rows, odd], [info]))

    def at(name: str, replica: str | None = None) -> float | None:
        labels = {"fqrn": FQRN} if replica is None else {"fqrn": FQRN, "replica": replica}
        return samples.get((name, frozenset(labels.items())))

    s1, down = mirrors.s1_url, mirrors.down_url
    assert [at("cvmfs_replica_up", u) for u in (s1, down)] == [1, 0]
    assert [at("cvmfs_replica_revision", u) for u in (s1, down)] == [2, None]
    assert [at("cvmfs_replica_lag_revisions", u) for u in (s1, down)] == [1, None]
    assert at("cvmfs_replica_lag_seconds", s1) == 30
    assert at("cvmfs_replica_last_snapshot_timestamp_seconds", s1) == rows[0][
        "last_snapshot_timestamp"]
    assert [at("cvmfs_replica_stale", u) for u in (s1, down)] == [0, 1]
    assert at("cvmfs_replica_revision", 'http://h/"q"\\x\ny') == 2
    assert at("cvmfs_repository_revision") == 3
    assert at("cvmfs_repository_published_timestamp_seconds") == mirrors.published[3]
    assert (at("cvmfs_repository_files"), at("cvmfs_repository_bytes")) == (
        info["files"], info["bytes"])
    # the down replica has no revision, lags or snapshot time
    assert len(samples) == 3 * 6 - 4 + 4
    assert prometheus_metrics([], []) == ""
