"""The cache quota: LRU eviction under CVMFS_QUOTA_LIMIT, pins, processes sharing one cache."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pycvmfs.cli.main import cli
from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.quota import QuotaManager, quota_limit_from_env
from pycvmfs.client.repository import open_repository
from pycvmfs.errors import ConfigError
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.hashes import Algorithm, ObjectKind, hash_bytes

from helpers.synthetic import Node, build_repository

FQRN = "quota.example.org"
MB = 1024 * 1024
QUOTA = 20 * MB
N_FILES = 36  # 36 x 2.5 MB + 2 x 9 MB chunked = 108 MB of content
CHUNKS = ChunkingParams(3 * MB, 4 * MB, 6 * MB)  # only the 9 MB files are chunked


def _content(i: int, size: int) -> bytes:
    """Distinct per file, cheap to compress (a random 4 KiB period)."""
    block = random.Random(i).randbytes(4096)
    return (block * (size // 4096 + 1))[:size]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("quota")
    tree = {f"d/f{i:02d}": Node("file", _content(i, 5 * MB // 2)) for i in range(N_FILES)}
    tree["big/a"] = Node("file", _content(1000, 9 * MB))
    tree["big/b"] = Node("file", _content(1001, 9 * MB))
    b = build_repository(root / FQRN, FQRN, tree, chunking=CHUNKS)
    b.expected = {"/" + p: hashlib.sha1(n.data).hexdigest() for p, n in tree.items()}
    return b


def _disk_objects(cache: Path) -> dict[str, int]:
    out = {}
    for sub in cache.iterdir():
        if len(sub.name) == 2 and sub.is_dir():
            for f in sub.iterdir():
                out[sub.name + f.name] = f.stat().st_size
    return out


def _sha1_of(view, path: str) -> str:
    h = hashlib.sha1()
    with view.open(path) as f:
        while piece := f.read(MB):
            h.update(piece)
    return h.hexdigest()


def _assert_consistent(cache: Path, limit: int | None = QUOTA) -> None:
    """Rows and files agree exactly, and both stay under the quota."""
    disk = _disk_objects(cache)
    with QuotaManager(cache) as q:
        rows = {e.hash: e.size for e in q.list()}
    assert rows == disk
    if limit is not None:
        assert sum(disk.values()) <= limit


def test_reading_100mb_through_a_20mb_quota_stays_under_quota_with_correct_bytes(built, tmp_path):
    cache = tmp_path / "cache"
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=cache,
                           quota_limit=QUOTA)
    paths = sorted(built.expected)
    read = 0
    with repo, repo.open_revision() as view:
        for path in paths + paths[::-1]:
            assert _sha1_of(view, path) == built.expected[path], path
            read += view.stat(path).entry.size
            assert sum(_disk_objects(cache).values()) <= QUOTA
            _assert_consistent(cache)
    assert read > 200 * MB
    assert repo.cache.stats["bytes_downloaded"] > 0
    stats = repo.cache.quota.stats()
    assert stats.total_bytes <= QUOTA and stats.pinned_objects == 0  # every file was closed
    repo.cache.quota.close()


def test_an_open_file_stays_pinned_while_others_evict_around_it(built, tmp_path):
    cache = tmp_path / "cache"
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=cache,
                           quota_limit=QUOTA)
    with repo, repo.open_revision() as view:
        held = view.open("/d/f00")
        assert held.read(10) == _content(0, 10)
        h = str(view.stat("/d/f00").entry.hash)
        for path in sorted(built.expected)[1:]:
            assert _sha1_of(view, path) == built.expected[path]
            assert h in _disk_objects(cache)  # never evicted while open
        assert repo.cache.quota.is_pinned(h)
        assert held.read() == _content(0, 5 * MB // 2)[10:]
        held.close()
        assert not repo.cache.quota.is_pinned(h)
        repo.cache.quota.clean()
        assert h not in _disk_objects(cache)
    repo.cache.quota.close()


def test_catalogs_of_an_open_view_are_pinned_until_it_closes(built, tmp_path):
    cache = tmp_path / "cache"
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=cache,
                           quota_limit=QUOTA)
    root = str(repo.manifest.root_catalog)
    with repo:
        with repo.open_revision() as view:
            assert view.read_bytes("/d/f07") == _content(7, 5 * MB // 2)
            repo.cache.quota.clean()
            assert list(_disk_objects(cache)) == [root]
            assert [e.type for e in repo.cache.quota.list()] == ["catalog"]
        repo.cache.quota.clean()
        assert _disk_objects(cache) == {}
    repo.cache.quota.close()


def _fake_object(cache: Path, i: int, size: int) -> str:
    h = str(hash_bytes(b"object %d" % i, Algorithm.SHA1))
    p = cache / h[:2] / h[2:]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * size)
    return h


def test_cleanup_evicts_least_recently_used_first_and_never_pinned(tmp_path):
    q = QuotaManager(tmp_path, 10 * MB)
    hs = []
    for i in range(8):
        h = _fake_object(tmp_path, i, MB)
        q.insert(h, MB, ObjectKind.FILE)
        hs.append(h)
    q.pin(hs[0])
    q.touch(hs[1])  # now the most recently used
    freed = q.cleanup(4 * MB)
    left = set(_disk_objects(tmp_path))
    assert freed == 4 * MB
    assert left == {hs[0], hs[1], hs[6], hs[7]}
    assert q.clean() == 3 * MB
    assert set(_disk_objects(tmp_path)) == {hs[0]}
    assert [(e.hash, e.pinned) for e in q.list()] == [(hs[0], 1)]
    q.unpin(hs[0])
    q.clean()
    assert _disk_objects(tmp_path) == {}
    q.close()


def test_touches_stay_in_memory_until_flushed(tmp_path):
    q = QuotaManager(tmp_path, None, touch_interval=3600)
    a, b = _fake_object(tmp_path, 1, 10), _fake_object(tmp_path, 2, 10)
    q.insert(a, 10, ObjectKind.FILE)
    q.insert(b, 10, ObjectKind.CATALOG)
    q.touch(a)
    with QuotaManager(tmp_path) as other:  # what other processes see
        assert [e.hash for e in other.list()] == [a, b]
        q.flush()
        assert [e.hash for e in other.list()] == [b, a]
        assert other.stats().catalogs == 1
    q.close()


def test_insert_over_the_quota_cleans_down_to_half_the_limit(tmp_path):
    q = QuotaManager(tmp_path, 10 * MB)
    for i in range(10):
        q.insert(_fake_object(tmp_path, i, MB), MB, ObjectKind.FILE)
    assert q.stats().total_bytes == 10 * MB
    q.insert(_fake_object(tmp_path, 99, MB), MB, ObjectKind.FILE)
    assert q.stats().total_bytes == 5 * MB + MB  # cleaned to 5 MB, then the new one
    assert sum(_disk_objects(tmp_path).values()) == 6 * MB
    q.close()


def test_object_larger_than_the_quota_is_still_served(built, tmp_path):
    cache = tmp_path / "cache"
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=cache,
                           quota_limit=MB)
    with repo, repo.open_revision() as view:
        assert _sha1_of(view, "/d/f03") == built.expected["/d/f03"]
        assert _sha1_of(view, "/big/a") == built.expected["/big/a"]
        assert _sha1_of(view, "/d/f04") == built.expected["/d/f04"]
        # the too-large object evicted everything else and is evicted by the next insertion;
        # the root catalog stays as the open view pins it
        disk = _disk_objects(cache)
        assert disk.pop(str(repo.manifest.root_catalog)) > 0
        assert list(disk.values()) == [5 * MB // 2]
    repo.cache.quota.close()


def test_pins_of_a_dead_process_are_dropped(tmp_path):
    h = _fake_object(tmp_path, 1, 100)
    with QuotaManager(tmp_path, MB) as q:
        q.insert(h, 100, ObjectKind.FILE)
    code = (f"import os; from pycvmfs.client.quota import QuotaManager as Q\n"
            f"Q({str(tmp_path)!r}).pin({h!r}); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    with QuotaManager(tmp_path, MB) as q:
        assert not q.is_pinned(h)  # dropped when the cache was opened
        assert q.clean() == 100
        assert not q.is_pinned(h)
    assert _disk_objects(tmp_path) == {}


def test_a_zombie_counts_as_dead_for_its_pins_and_temporary_files(tmp_path):
    """A killed mount whose parent has not reaped it (in a container, maybe never) is a
    zombie: its pins and half-written files must not stay forever."""
    h = _fake_object(tmp_path, 1, 100)
    (tmp_path / "txn").mkdir()
    with QuotaManager(tmp_path, MB) as q:
        q.insert(h, 100, ObjectKind.FILE)
    code = (f"import os; from pycvmfs.client.quota import QuotaManager as Q\n"
            f"Q({str(tmp_path)!r}).pin({h!r})\n"
            f"open(os.path.join({str(tmp_path / 'txn')!r}, f'obj.{{os.getpid()}}.x.0'), 'w')\n"
            "print('ready', flush=True); os._exit(0)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        state = ""
        for _ in range(500):  # exited, not reaped: a zombie (we are its parent and wait not)
            with open(f"/proc/{child.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.01)
        assert state == "Z"
        assert (tmp_path / "txn" / f"obj.{child.pid}.x.0").exists()
        with QuotaManager(tmp_path, MB) as q:
            assert not q.is_pinned(h)
        assert not (tmp_path / "txn" / f"obj.{child.pid}.x.0").exists()
    finally:
        child.wait(timeout=30)


_READER = """
import hashlib, json, os, sys
from pycvmfs.client.repository import open_repository
from pycvmfs.client.quota import QuotaManager
storage, pub, cache, limit = sys.argv[1:5]
paths = sys.argv[5:]
repo = open_repository(storage, keys=[pub], cache_dir=cache, quota_limit=int(limit))
out, peak = {}, 0
with repo, repo.open_revision() as view:
    for p in paths:
        h = hashlib.sha1()
        with view.open(p) as f:
            while piece := f.read(1 << 20):
                h.update(piece)
        out[p] = h.hexdigest()
        disk = 0
        for d in os.scandir(cache):
            if len(d.name) == 2 and d.is_dir():
                for e in os.scandir(d.path):
                    try:
                        disk += e.stat().st_size
                    except FileNotFoundError:
                        pass
        peak = max(peak, disk)
repo.cache.quota.close()
print(json.dumps({"sha1": out, "peak": peak}))
"""


def test_two_processes_reading_through_one_cache_get_correct_bytes(built, tmp_path):
    cache = tmp_path / "cache"
    paths = sorted(built.expected)
    orders = [paths, paths[::-1]]
    procs = [subprocess.Popen([sys.executable, "-c", _READER, str(built.storage), str(built.pub),
                               str(cache), str(QUOTA), *order], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for order in orders]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        result = json.loads(out)
        assert result["sha1"] == {k: built.expected[k] for k in paths}
        assert result["peak"] <= QUOTA
    _assert_consistent(cache)
    with QuotaManager(cache) as q:
        assert q.rebuild() == {"added": 0, "dropped": 0, "resized": 0, "dead_pins": 0,
                               "temp_files": 0}
        assert q.stats().pinned_objects == 0


_STALLER = """
import os, sys, time
from pycvmfs.client.repository import open_repository
storage, pub, cache = sys.argv[1:4]

class Stalling:
    def __init__(self, inner):
        self.inner = inner
    def describe(self, relpath=""):
        return self.inner.describe(relpath)
    def close(self):
        self.inner.close()
    def fetch(self, relpath, consume, *, what, fresh=False):
        def blocks(it):
            for b in it:
                yield b
                if relpath.startswith("data/") and stall[0]:
                    print("STALLED", flush=True)
                    time.sleep(60)
        return self.inner.fetch(relpath, lambda it: consume(blocks(it)), what=what, fresh=fresh)

stall = [False]
repo = open_repository(storage, keys=[pub], cache_dir=cache, quota_limit=20 << 20)
with repo.open_revision() as view:
    repo.source = Stalling(repo.source)
    view.read_bytes("/d/f01")
    view.read_bytes("/d/f02")
    stall[0] = True
    view.read_bytes("/d/f03")
"""


def test_kill_9_mid_download_serves_nothing_half_written_and_rebuild_recovers(built, tmp_path):
    cache = tmp_path / "cache"
    p = subprocess.Popen([sys.executable, "-c", _STALLER, str(built.storage), str(built.pub),
                          str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "STALLED", p.stderr.read()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    temps = list((cache / "txn").iterdir())
    assert [t.name.split(".")[:2] for t in temps] == [["obj", str(p.pid)]]
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=cache,
                           quota_limit=QUOTA)
    assert list((cache / "txn").iterdir()) == []  # the dead download's temp file, on open
    with repo, repo.open_revision() as view:
        h3 = str(view.stat("/d/f03").entry.hash)
        h1 = str(view.stat("/d/f01").entry.hash)
        assert h3 not in _disk_objects(cache)  # the killed download left only its temp file
        assert not repo.cache.contains(view.stat("/d/f03").entry.hash)
        # simulate a lost database row and a lost file as well
        repo.cache.quota.remove(h1)
        h2 = view.stat("/d/f02").entry.hash
        repo.cache.path_for(h2).unlink()
        counts = repo.cache.quota.rebuild()
        assert counts["added"] == 1 and counts["temp_files"] == 0
        assert counts["dropped"] == 1  # f02, whose file is gone
        assert list((cache / "txn").iterdir()) == []
        _assert_consistent(cache)
        for path in ("/d/f01", "/d/f02", "/d/f03"):
            assert _sha1_of(view, path) == built.expected[path]
    _assert_consistent(cache)
    repo.cache.quota.close()


def test_cache_cli_stat_list_and_clean(built, tmp_path):
    cache = tmp_path / "cache"
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=cache)
    with repo, repo.open_revision() as view:
        view.read_bytes("/d/f05")
    # a cache filled without quota has no cachedb yet: the CLI builds it from the directory
    assert not (cache / "cachedb").exists()
    runner = CliRunner()
    env = {"CVMFS_QUOTA_LIMIT": "20"}
    r = runner.invoke(cli, ["cache", "stat", "--cache-dir", str(cache), "--json"], env=env)
    assert r.exit_code == 0, r.output
    stat = json.loads(r.output)
    disk = _disk_objects(cache)
    assert stat["total_bytes"] == sum(disk.values()) > 5 * MB // 2
    assert stat["objects"] == len(disk) and stat["limit"] == QUOTA
    r = runner.invoke(cli, ["cache", "list", "--cache-dir", str(cache), "--json"])
    assert r.exit_code == 0, r.output
    assert {e["hash"]: e["size"] for e in json.loads(r.output)} == disk
    r = runner.invoke(cli, ["cache", "list", "--cache-dir", str(cache)])
    assert len(r.output.splitlines()) == len(disk)
    r = runner.invoke(cli, ["cache", "stat", "--cache-dir", str(cache)])
    assert "Quota" in r.output and "unlimited" in r.output
    r = runner.invoke(cli, ["cache", "clean", "--cache-dir", str(cache), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["freed_bytes"] == sum(disk.values())
    assert _disk_objects(cache) == {}


def test_quota_limit_comes_from_cvmfs_quota_limit_in_megabytes():
    assert quota_limit_from_env({"CVMFS_QUOTA_LIMIT": "20"}.get) == QUOTA
    assert quota_limit_from_env({"CVMFS_QUOTA_LIMIT": "-1"}.get) is None
    assert quota_limit_from_env({}.get) is None
    with pytest.raises(ConfigError, match="CVMFS_QUOTA_LIMIT"):
        quota_limit_from_env({"CVMFS_QUOTA_LIMIT": "lots"}.get)


def test_cache_without_quota_behaves_as_before(built, tmp_path):
    cache = ObjectCache(tmp_path / "c")
    assert cache.quota is None
    repo = open_repository(str(built.storage), keys=[built.pub], cache_dir=tmp_path / "c")
    with repo, repo.open_revision() as view:
        assert _sha1_of(view, "/big/b") == built.expected["/big/b"]
    assert not (tmp_path / "c" / "cachedb").exists()


def _kept_total(db_path: Path) -> tuple[int, int]:
    import sqlite3

    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        kept = db.execute("SELECT size FROM totals WHERE id = 1").fetchone()[0]
        summed = db.execute("SELECT COALESCE(SUM(size), 0) FROM cache_catalog").fetchone()[0]
    finally:
        db.close()
    return kept, summed


def test_the_kept_total_follows_every_change_of_the_catalog(tmp_path):
    q = QuotaManager(tmp_path, 10 * MB)
    hs = [_fake_object(tmp_path, i, MB) for i in range(12)]
    for h in hs[:10]:
        q.insert(h, MB, ObjectKind.FILE)
    assert _kept_total(q.db_path) == (10 * MB, 10 * MB)
    q.insert(hs[0], MB // 2, ObjectKind.FILE)  # the same object again, another size
    assert _kept_total(q.db_path) == (9 * MB + MB // 2,) * 2
    q.insert(hs[10], MB, ObjectKind.FILE)  # over the limit: evicts down to half, then adds
    q.remove(hs[10])
    q.cleanup(2 * MB)
    kept, summed = _kept_total(q.db_path)
    assert kept == summed <= 2 * MB and q.stats().total_bytes == kept
    q.close()


def test_a_cache_database_from_before_the_kept_total_gets_it_filled(tmp_path):
    import sqlite3

    q = QuotaManager(tmp_path, None)
    for i in range(3):
        q.insert(_fake_object(tmp_path, i, MB), MB, ObjectKind.FILE)
    q.close()
    db = sqlite3.connect(tmp_path / "cachedb", isolation_level=None)
    for trigger in ("cache_catalog_added", "cache_catalog_removed", "cache_catalog_resized"):
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute("DROP TABLE totals")
    db.close()
    q = QuotaManager(tmp_path, 10 * MB)
    assert _kept_total(q.db_path) == (3 * MB, 3 * MB)
    q.insert(_fake_object(tmp_path, 7, MB), MB, ObjectKind.FILE)
    assert _kept_total(q.db_path) == (4 * MB, 4 * MB)
    q.close()
