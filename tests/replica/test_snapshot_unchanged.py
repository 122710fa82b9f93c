"""The no-op snapshot from bytes verified before (pycvmfs.replica.unchanged): it is taken only
when the source's manifest and whitelist are the bytes the last verified snapshot checked, under
the same keys, before the whitelist expires, and the replica serves them; everything else goes
the whole verified way, with the same refusals as before."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pycvmfs.errors import HashMismatchError, IntegrityError, OutdatedManifestError, WhitelistError
from pycvmfs.replica import replicate as replicate_module
from pycvmfs.replica.snapshot import SnapshotReport
from pycvmfs.replica.unchanged import RECORD

from helpers.replica import SOURCE_FQRN, data_files


class Replica:
    """A stratum 1 of the test's source repository, snapshotted once already."""

    def __init__(self, source_repo, url: str, run: Callable[..., SnapshotReport],
                 dest: Path, state: Path) -> None:
        self.source_repo, self.url, self._run = source_repo, url, run
        self.dest, self.state = dest, state
        self.storage: Path = source_repo.config.storage

    def snapshot(self, **kw) -> SnapshotReport:
        return self._run(self.url, self.dest, self.state,
                         keys=kw.pop("keys", self.source_repo.config.key_path("pub")),
                         fqrn=SOURCE_FQRN, **kw)

    def serves(self, name: str) -> bool:
        return (self.dest / name).read_bytes() == (self.storage / name).read_bytes()


@pytest.fixture
def replica(source_repo, http_server, replicate, tmp_path: Path) -> Replica:
    srv = http_server(source_repo.config.storage.parent)
    r = Replica(source_repo, f"{srv.url}/{SOURCE_FQRN}", replicate, tmp_path / "replica",
                tmp_path / "state")
    assert r.snapshot().changed
    return r


@pytest.fixture
def no_verified_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the runs of the verified path (still run; the count tells which way it went)."""
    runs: list[int] = []
    real = replicate_module.verified_snapshot

    def counting(*args, **kw):
        runs.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(replicate_module, "verified_snapshot", counting)
    return runs


def test_a_noop_snapshot_skips_the_verified_path(replica: Replica, no_verified_path):
    (replica.dest / ".cvmfs_last_snapshot").write_text("before\n")
    report = replica.snapshot()
    assert not report.changed and no_verified_path == []
    head = replica.source_repo.head()
    assert (report.revision, report.previous_revision, report.root_hash) == (
        head.revision, head.revision, str(head.root_catalog))
    assert (replica.dest / ".cvmfs_last_snapshot").read_text() != "before\n"  # marked done
    assert "last_snapshot" in json.loads((replica.dest / ".cvmfs_status.json").read_text())


def test_a_renewed_whitelist_goes_the_verified_way(replica: Replica, no_verified_path):
    old = (replica.dest / ".cvmfswhitelist").read_bytes()
    replica.source_repo.resign(days=20)
    assert (replica.storage / ".cvmfswhitelist").read_bytes() != old
    assert not replica.snapshot().changed and no_verified_path == [1]
    assert replica.serves(".cvmfswhitelist")
    replica.snapshot()
    assert no_verified_path == [1]  # the renewed one was remembered


def test_a_new_revision_goes_the_verified_way(replica: Replica, no_verified_path):
    with replica.source_repo.transaction() as txn:
        txn.add_file("/later.txt", b"later\n")
    assert replica.snapshot().changed and no_verified_path == [1]
    assert replica.serves(".cvmfspublished")


def test_other_keys_go_the_verified_way(replica: Replica, golden_keys: Path, no_verified_path):
    with pytest.raises(IntegrityError):
        replica.snapshot(keys=golden_keys)  # not the source's key: refused as before
    assert no_verified_path == [1] and not (replica.state / RECORD).exists()
    replica.snapshot()
    replica.snapshot()
    assert no_verified_path == [1, 1]  # verified again, then remembered


def test_a_changed_key_set_goes_the_verified_way(replica: Replica, golden_keys: Path,
                                                 tmp_path: Path, no_verified_path):
    key = tmp_path / "keys" / "source.pub"
    key.parent.mkdir()
    key.write_bytes(replica.source_repo.config.key_path("pub").read_bytes())
    replica.snapshot(keys=key.parent)
    assert no_verified_path == []  # the same key material (from another place)
    other = next(golden_keys.glob("*.pub")) if golden_keys.is_dir() else golden_keys
    (key.parent / "other.pub").write_bytes(other.read_bytes())
    replica.snapshot(keys=key.parent)
    assert no_verified_path == [1]
    replica.snapshot(keys=key.parent)
    assert no_verified_path == [1]


def test_an_expired_whitelist_is_refused_as_before(replica: Replica, no_verified_path):
    later = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(WhitelistError, match="expired"):
        replica.snapshot(now=lambda: later)
    assert no_verified_path == [1]


def _expiry(replica: Replica) -> dt.datetime:
    seconds = json.loads((replica.state / RECORD).read_text())["whitelist_expires"]
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@pytest.mark.parametrize("aware", [True, False], ids=["aware", "naive-utc"])
def test_the_noop_ends_exactly_at_the_whitelist_expiry(replica: Replica, no_verified_path,
                                                        aware: bool):
    expires = _expiry(replica)
    if not aware:  # a naive clock reading is UTC
        expires = expires.replace(tzinfo=None)
    assert not replica.snapshot(now=lambda: expires - dt.timedelta(seconds=1)).changed
    assert no_verified_path == []
    with pytest.raises(WhitelistError, match="expired"):
        replica.snapshot(now=lambda: expires)
    assert no_verified_path == [1]


def test_a_whitelist_expiring_during_the_fetches_goes_the_verified_way(replica: Replica,
                                                                       no_verified_path):
    expires = _expiry(replica)
    readings = iter([expires - dt.timedelta(seconds=5)])  # then the clock passes the expiry

    def clock() -> dt.datetime:
        return next(readings, expires + dt.timedelta(seconds=1))

    with pytest.raises(WhitelistError, match="expired"):
        replica.snapshot(now=clock)
    assert no_verified_path == [1]


@pytest.mark.parametrize("field", ["fqrn", "whitelist_expires"])
def test_a_record_of_another_repository_or_a_forged_expiry_is_not_used(
        replica: Replica, no_verified_path, field: str):
    path = replica.state / RECORD
    record = json.loads(path.read_text())
    forged = "other.example.org" if field == "fqrn" else float("inf")
    path.write_text(json.dumps({**record, field: forged}))
    replica.snapshot()
    assert no_verified_path == [1]


def test_an_older_valid_manifest_on_the_replica_goes_the_verified_way(replica: Replica,
                                                                      no_verified_path):
    older = {n: (replica.dest / n).read_bytes() for n in (".cvmfspublished", ".cvmfswhitelist")}
    with replica.source_repo.transaction() as txn:
        txn.add_file("/newer.txt", b"newer\n")
    assert replica.snapshot().changed and no_verified_path == [1]
    for name, data in older.items():  # the replica rolled back to a signed older state
        (replica.dest / name).write_bytes(data)
    assert replica.snapshot().changed and no_verified_path == [1, 1]
    assert replica.serves(".cvmfspublished")


def test_a_replica_changed_behind_its_back_goes_the_verified_way(replica: Replica,
                                                                 no_verified_path):
    (replica.dest / ".cvmfspublished").write_bytes(b"garbage\n")
    assert replica.snapshot().changed and no_verified_path == [1]
    assert replica.serves(".cvmfspublished")
    (replica.dest / ".cvmfswhitelist").write_bytes(b"garbage\n")
    assert not replica.snapshot().changed and no_verified_path == [1, 1]
    assert replica.serves(".cvmfswhitelist")
    (replica.dest / ".cvmfs_last_snapshot").unlink()
    replica.snapshot()
    assert no_verified_path == [1, 1, 1]


@pytest.mark.parametrize("damage", ["garbage", "other manifest", "no all tags"])
def test_a_damaged_record_goes_the_verified_way(replica: Replica, damage: str,
                                                no_verified_path):
    path = replica.state / RECORD
    record = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "other manifest":
        path.write_text(json.dumps({**record, "manifest": "0" * 64}))
    else:
        path.write_text(json.dumps({**record, "all_tags": False}))
        replica.snapshot(all_tags=False)
        assert no_verified_path == []  # the trunk alone is what it recorded
    replica.snapshot()
    assert no_verified_path == [1]


def test_a_failed_snapshot_leaves_no_record_and_older_bytes_are_refused(replica: Replica):
    old = {n: (replica.storage / n).read_bytes() for n in (".cvmfspublished", ".cvmfswhitelist")}
    before = data_files(replica.storage)
    with replica.source_repo.transaction() as txn:
        txn.add_file("/new.txt", b"new content\n" * 10)
    new = sorted(p for p in data_files(replica.storage) - before if p[-1] not in "CHXM")
    path = replica.storage / new[0]
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(HashMismatchError):
        replica.snapshot()
    assert not (replica.state / RECORD).exists()
    for name, data in old.items():  # a mirror replaying the revision the replica serves
        (replica.storage / name).write_bytes(data)
    with pytest.raises(OutdatedManifestError):  # it has seen a newer one: refused, as before
        replica.snapshot()
