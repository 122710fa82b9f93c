"""FUSE mounts that share: a real Squid in front of the server (and DIRECT once it stops), and
one cache directory with a quota used by two mount processes at once (one of them killed)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycvmfs.client.quota import QuotaManager
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.repository import Publisher
from pycvmfs.server.http import RepositoryServer

from helpers.fuse import CLI, needs_fuse, pid_alive
from helpers.mount_walk import assert_matches_expected, walk_mount
from helpers.squid import Squid

GOLDEN = "golden.example.org"
BIG = "big.example.org"
MB = 1 << 20
QUOTA_MB = 20
# small chunks: an open file pins at most a few of them, far below the quota (see _bound)
CHUNKING = ChunkingParams(256 << 10, 512 << 10, 1 << 20)


def _cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False,
                         env={**os.environ, **(env or {})})
    if check:
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res


def _config(etc: Path, **variables: str) -> Path:
    """A CernVM-FS configuration directory whose default.local sets ``variables``."""
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "default.local").write_text("".join(f'{k}="{v}"\n' for k, v in variables.items()))
    return etc


def _mounted(mp: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(mp) for line in f)


class Mounts:
    """``mount(fqrn, name, *options)`` -> mount point (``pycvmfs mount`` in the background);
    everything still mounted is unmounted at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.points: list[Path] = []

    def mount(self, fqrn: str, name: str, *options: str, env: dict | None = None) -> Path:
        mp = self.root / name
        mp.mkdir()
        _cli("mount", fqrn, str(mp), "--log-file", str(self.root / f"{name}.log"), *options,
             env=env)
        self.points.append(mp)
        return mp

    def umount(self, mp: Path) -> None:
        """``pycvmfs umount``; the mount process must exit."""
        pid = int(os.getxattr(mp, "user.pid"))
        _cli("umount", str(mp))
        deadline = time.monotonic() + 10
        while pid_alive(pid):
            assert time.monotonic() < deadline, f"mount process {pid} of {mp} did not exit"
            time.sleep(0.05)
        assert not os.path.ismount(mp)

    def cleanup(self) -> None:
        for mp in self.points:
            if _mounted(mp):  # also a dead one (os.path.ismount says False: ENOTCONN)
                subprocess.run(["fusermount3", "-u", str(mp)], check=False, capture_output=True)
            if _mounted(mp):
                subprocess.run(["fusermount3", "-uz", str(mp)], check=False,
                               capture_output=True)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(tmp_path)
    yield m
    m.cleanup()


# -- through a real Squid ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden_origin(golden_repo: Path) -> Iterator[RepositoryServer]:
    with RepositoryServer({GOLDEN: golden_repo}) as srv:
        yield srv


def _object_urls(squid: Squid, start: int, base: str) -> list[tuple[str, str]]:
    return [(code, url) for code, url in squid.log_lines()[start:]
            if url.startswith(f"{base}/data/")]


@needs_fuse
def test_mount_through_squid_is_served_from_its_cache_and_falls_back_to_direct_when_it_stops(
        golden_origin: RepositoryServer, golden_keys: Path, golden_expected: dict,
        mounts: Mounts, tmp_path: Path) -> None:
    entries = golden_expected["trees"]["rev2"]["entries"]
    base = golden_origin.repository_url(GOLDEN)
    squid = Squid()
    try:
        settings = {"CVMFS_SERVER_URL": f"{golden_origin.url}/cvmfs/@fqrn@",
                    "CVMFS_KEYS_DIR": str(golden_keys),
                    "CVMFS_HTTP_PROXY": squid.url}
        etc = _config(tmp_path / "etc-squid", **settings)
        # first mount: the configuration directory from the environment, like a user's shell
        mp = mounts.mount(GOLDEN, "mnt-squid1", "--cache-dir", str(tmp_path / "cache1"),
                          env={"PYCVMFS_CONFIG_DIR": str(etc)})
        assert os.getxattr(mp, "user.proxy").decode() == squid.url
        assert_matches_expected(walk_mount(mp), entries)
        assert int(os.getxattr(mp, "user.nioerr")) == 0
        mounts.umount(mp)
        first = _object_urls(squid, 0, base)
        # certificate, catalogs and every file object went through the proxy
        assert len({url for _, url in first}) > 100
        assert any(code == "TCP_MISS" for code, _ in first)
        assert all(code in ("TCP_MISS", "TCP_HIT", "TCP_MEM_HIT") for code, _ in first), first
        seen = len(squid.log_lines())

        # a second mount with an empty cache: the same objects, now all from Squid's cache
        mp = mounts.mount(GOLDEN, "mnt-squid2", "--config-dir", str(etc),
                          "--cache-dir", str(tmp_path / "cache2"))
        assert_matches_expected(walk_mount(mp), entries)
        mounts.umount(mp)
        second = _object_urls(squid, seen, base)
        assert {url for _, url in second} == {url for _, url in first}
        assert all(code in ("TCP_HIT", "TCP_MEM_HIT") for code, _ in second), second

        # Squid goes away: with "proxy;DIRECT" a fresh mount fails over to DIRECT
        squid.stop()
        etc = _config(tmp_path / "etc-direct",
                      **{**settings, "CVMFS_HTTP_PROXY": f"{squid.url};DIRECT",
                         "CVMFS_BACKOFF_INIT": "1", "CVMFS_BACKOFF_MAX": "1"})
        mp = mounts.mount(GOLDEN, "mnt-direct", "--config-dir", str(etc),
                          "--cache-dir", str(tmp_path / "cache3"))
        assert_matches_expected(walk_mount(mp), entries)
        assert os.getxattr(mp, "user.proxy") == b"DIRECT"
        assert int(os.getxattr(mp, "user.nioerr")) >= 1  # the failed proxy was counted
        shown = json.loads(_cli("status", str(mp), "--json").stdout)
        assert shown["proxy"] == "DIRECT" and int(shown["nioerr"]) >= 1
        assert shown["host"].startswith(golden_origin.url)
        mounts.umount(mp)
    finally:
        squid.remove()


# -- one cache, a quota, several mounts ---------------------------------------------------------

@dataclass
class BigRepository:
    storage: Path
    key: Path
    url: str
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (size, sha1)
    chunked: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(size for size, _ in self.files.values())


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigRepository]:
    """About 100 MB of random (incompressible) files: 40 whole objects of 0.25-1.5 MB and
    10 chunked files of 6.5-8 MB in 0.25-1 MB chunks."""
    root = tmp_path_factory.mktemp("big")
    pub = Publisher.mkfs(BIG, root / "srv" / BIG, config_dir=root / "etc",
                         settings=ServerSettings(chunking=CHUNKING, use_chunking=False))
    rng = random.Random(20250611)
    files: dict[str, tuple[int, str]] = {}

    def add(txn, path: str, size: int) -> None:
        data = rng.randbytes(size)
        txn.add_file(path, data)
        files[path.lstrip("/")] = (size, hashlib.sha1(data).hexdigest())

    with pub.transaction() as txn:
        for i in range(40):
            add(txn, f"/plain/p{i:02d}.bin", rng.randrange(256 << 10, 1536 << 10))
    pub.settings.use_chunking = True
    with pub.transaction() as txn:
        for i in range(10):
            add(txn, f"/chunked/c{i}.bin", rng.randrange(6656 << 10, 8 << 20))
    with RepositoryServer({BIG: pub.config.storage}) as srv:
        repo = BigRepository(pub.config.storage, pub.config.key_path("pub"),
                             srv.repository_url(BIG), files,
                             {p for p in files if p.startswith("chunked/")})
        assert repo.total >= 100 * MB
        yield repo


def _big_config(etc: Path, repo: BigRepository, cache_base: Path) -> Path:
    return _config(etc, CVMFS_SERVER_URL=repo.url.rsplit("/", 1)[0] + "/@fqrn@",
                   CVMFS_PUBLIC_KEY=str(repo.key), CVMFS_HTTP_PROXY="DIRECT",
                   CVMFS_QUOTA_LIMIT=str(QUOTA_MB), CVMFS_CACHE_BASE=str(cache_base))


def _mount_big(repo: BigRepository, mounts: Mounts, tmp_path: Path,
               *names: str) -> tuple[Path, Path, list[Path]]:
    """``repo`` mounted at each of ``names``, all on one cache under the quota: (configuration
    directory, shared cache directory, mount points)."""
    etc = _big_config(tmp_path / "etc", repo, tmp_path / "cache")
    return etc, tmp_path / "cache" / "shared", [mounts.mount(BIG, name, "--config-dir", str(etc))
                                                for name in names]


def _objects_on_disk(cache: Path) -> dict[str, int]:
    """textual hash -> size of every object under its final name."""
    out = {}
    for sub in cache.glob("[0-9a-f][0-9a-f]"):
        for f in sub.iterdir():
            with contextlib.suppress(FileNotFoundError):  # evicted meanwhile
                out[sub.name + f.name] = f.stat().st_size
    return out


def _family(pids: set[int]) -> set[int]:
    """``pids`` and their descendants (the mounts and their download processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    family = {p for p in pids if p in parents}
    while True:
        more = {p for p, pp in parents.items() if pp in family} - family
        if not more:
            return family
        family |= more


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (or the process is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            if stat[stat.rindex(")") + 2] not in "tTZX":
                return False
    return True


class DiskWatch:
    """Samples the cache directory's object bytes every few milliseconds in a thread.

    A walk over the cache's 256 folders is not one instant: while it goes, the mounts evict
    and insert, and a walk that counts a folder before an eviction and another after an
    insertion adds up to more than was ever there at once (under a heavy load, 21.9 MB against
    a 20 MB quota). So each sample is taken with every process of the mounts (``mounts``, and
    their download processes) stopped: the files then stand still.
    """

    def __init__(self, cache: Path, mounts: list[Path]) -> None:
        self.cache = cache
        self.samples: list[int] = []
        self._pids = {int(os.getxattr(mp, "user.pid")) for mp in mounts}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, mountpoint: Path) -> None:
        """A mount made after the watch started: its processes are stopped for samples too."""
        self._pids = self._pids | {int(os.getxattr(mountpoint, "user.pid"))}

    def _sample(self) -> int:
        frozen = []
        try:
            for pid in _family(self._pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
            deadline = time.monotonic() + 10
            while not all(_stopped(pid) for pid in frozen):
                assert time.monotonic() < deadline, "the mount processes did not stop"
                time.sleep(0.001)
            return sum(_objects_on_disk(self.cache).values())
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(0.02)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _bound(readers: int) -> int:
    """What the cache directory may hold: the quota (``CVMFS_QUOTA_LIMIT``). Objects pinned by
    open files and loaded catalogs cannot be evicted; an insertion evicts down to half the quota
    (or less) but never a pinned object, so the total after it is at most
    ``max(quota / 2, pinned) + object``. Here an open file pins at most 4 chunks of at most 1 MB
    or one whole object of at most 1.5 MB, so with few readers that stays under the quota."""
    pinned = readers * 4 * MB + 256 * 1024  # + the catalogs
    assert max(QUOTA_MB * MB // 2, pinned) + 1536 * 1024 <= QUOTA_MB * MB
    return QUOTA_MB * MB


def _read_and_check(path: Path, size: int, sha1: str) -> None:
    """``cat``-like sequential read in 1 MB blocks; the SHA-1 must be the source's."""
    h = hashlib.sha1()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(MB):
            h.update(block)
            n += len(block)
    assert (n, h.hexdigest()) == (size, sha1), path


def _check_cache(cache: Path, storage: Path, limit: int) -> dict:
    """After the mounts: ``cache stat`` agrees with the directory, nothing is left in txn/,
    nothing is pinned, and every cached object is exactly the decompressed stored object."""
    on_disk = _objects_on_disk(cache)
    stats = json.loads(_cli("cache", "stat", "--cache-dir", str(cache), "--json").stdout)
    assert stats["total_bytes"] == sum(on_disk.values()) <= limit, (stats, len(on_disk))
    assert stats["objects"] == len(on_disk) and stats["pinned_objects"] == 0, stats
    assert list((cache / "txn").iterdir()) == []
    db = sqlite3.connect(f"file:{cache / 'cachedb'}?mode=ro", uri=True)
    try:
        rows = dict(db.execute("SELECT hash, size FROM cache_catalog"))
        assert db.execute("SELECT COUNT(*) FROM pins").fetchone()[0] == 0
    finally:
        db.close()
    assert rows == on_disk
    for text, size in on_disk.items():
        stored = [p for p in (storage / "data" / text[:2]).glob(text[2:] + "*")
                  if p.name[len(text) - 2:] in ("", "P", "C", "X")]
        assert len(stored) == 1, text
        data = (cache / text[:2] / text[2:]).read_bytes()
        assert len(data) == size and data == zlib.decompress(stored[0].read_bytes()), text
    return stats


@needs_fuse
def test_a_20_mb_quota_holds_while_reading_100_mb_through_the_mount(
        big_repo: BigRepository, mounts: Mounts, tmp_path: Path) -> None:
    _etc, cache, [mp] = _mount_big(big_repo, mounts, tmp_path, "mnt")
    names = sorted(big_repo.files)
    random.Random(1).shuffle(names)  # chunked and whole files interleaved
    with DiskWatch(cache, [mp]) as watch:
        for rel in names:
            _read_and_check(mp / rel, *big_repo.files[rel])
            assert int(os.getxattr(mp / rel, "user.chunks")) > (1 if rel in big_repo.chunked
                                                                else 0)
    assert max(watch.samples) <= _bound(1), max(watch.samples)
    assert max(watch.samples) > QUOTA_MB * MB // 2  # the quota was really reached
    mounts.umount(mp)
    _check_cache(cache, big_repo.storage, QUOTA_MB * MB)


def _reader(mp: Path, names: list[str], repo: BigRepository, errors: list,
            done: list, started: threading.Event | None = None) -> None:
    """Read ``names`` from ``mp``; wrong bytes and errors are collected, not raised."""
    try:
        for rel in names:
            if started is not None and rel in repo.chunked:
                with open(mp / rel, "rb", buffering=0) as f:
                    f.read(MB)
                    started.set()  # in the middle of a chunked file: killed while reading on
                    while f.read(MB):
                        pass
            _read_and_check(mp / rel, *repo.files[rel])
            done.append(rel)
    except BaseException as e:
        errors.append((mp, e))


def _run_readers(jobs: list[tuple]) -> list[threading.Thread]:
    threads = [threading.Thread(target=_reader, args=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    return threads


def _join(threads: list[threading.Thread], limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
        assert not t.is_alive(), "a reader hangs"


@needs_fuse
def test_two_mounts_share_one_cache_under_a_quota_while_reading_at_once(
        big_repo: BigRepository, mounts: Mounts, tmp_path: Path) -> None:
    _etc, cache, [a, b] = _mount_big(big_repo, mounts, tmp_path, "mnt-a", "mnt-b")
    assert os.getxattr(a, "user.pid") != os.getxattr(b, "user.pid")
    names = sorted(big_repo.files)
    rng = random.Random(2)
    errors: list = []
    done: list[list[str]] = [[] for _ in range(4)]
    jobs = []
    for i, mp in enumerate((a, a, b, b)):  # two readers per mount, each over half the files
        mine = names[i % 2::2]
        rng.shuffle(mine)
        jobs.append((mp, mine, big_repo, errors, done[i]))
    with DiskWatch(cache, [a, b]) as watch:
        _join(_run_readers(jobs))
    assert errors == []
    assert sorted(done[0] + done[1]) == sorted(done[2] + done[3]) == names
    assert QUOTA_MB * MB // 2 < max(watch.samples) <= _bound(4), max(watch.samples)
    mounts.umount(a)
    mounts.umount(b)
    _check_cache(cache, big_repo.storage, QUOTA_MB * MB)


@needs_fuse
def test_a_mount_killed_mid_read_leaves_the_other_reading_and_the_cache_usable(
        big_repo: BigRepository, mounts: Mounts, tmp_path: Path) -> None:
    etc, cache, [a, b] = _mount_big(big_repo, mounts, tmp_path, "mnt-a", "mnt-b")
    victim = int(os.getxattr(a, "user.pid"))
    names = sorted(big_repo.files)
    a_errors: list = []
    b_errors: list = []
    a_done: list[str] = []
    b_done: list[str] = []
    mid_read = threading.Event()
    order = names[:]
    random.Random(3).shuffle(order)
    with DiskWatch(cache, [a, b]) as watch:
        threads = _run_readers([(a, order, big_repo, a_errors, a_done, mid_read),
                                (b, names, big_repo, b_errors, b_done),
                                (b, names[::-1], big_repo, b_errors, b_done)])
        assert mid_read.wait(120), a_errors
        os.kill(victim, signal.SIGKILL)
        _join(threads)
        assert b_errors == [] and sorted(b_done) == sorted(names * 2)
        # the killed mount's reader got errors (the connection is gone), nothing wrong
        assert len(a_errors) == 1 and isinstance(a_errors[0][1], OSError), a_errors
        assert a_errors[0][1].errno in (errno.ENOTCONN, errno.ECONNABORTED), a_errors
        deadline = time.monotonic() + 10
        while pid_alive(victim):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", str(a)], check=True, capture_output=True)

        # a new mount on the same cache, while b is still mounted
        c = mounts.mount(BIG, "mnt-c", "--config-dir", str(etc))
        watch.add(c)
        c_errors: list = []
        c_done: list[str] = []
        _join(_run_readers([(c, order, big_repo, c_errors, c_done),
                            (b, order[::-1], big_repo, b_errors, b_done)]))
        assert c_errors == [] and b_errors == [] and sorted(c_done) == names
    assert max(watch.samples) <= _bound(3), max(watch.samples)
    db = sqlite3.connect(f"file:{cache / 'cachedb'}?mode=ro", uri=True)
    try:  # the dead process's pins were dropped while the others went on
        assert db.execute("SELECT COUNT(*) FROM pins WHERE pid = ?",
                          (victim,)).fetchone()[0] == 0
    finally:
        db.close()
    assert not [f for f in (cache / "txn").iterdir() if f".{victim}." in f.name]
    mounts.umount(b)
    mounts.umount(c)
    _check_cache(cache, big_repo.storage, QUOTA_MB * MB)


def test_a_cache_database_opened_before_a_fork_keeps_the_childs_commits(tmp_path: Path) -> None:
    """``pycvmfs mount`` checks the repository, forks the mount process and exits: the parent's
    open cache database must not take the child's later commits with it."""
    parent = QuotaManager(tmp_path / "cache", 10 * MB)
    parent.insert("0" * 40, 100, ObjectKind.FILE)
    go, ready = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the mount process: its own database connection, like _open_for_mount
        code = 1
        try:
            child = QuotaManager(tmp_path / "cache", 10 * MB)
            child.insert("1" * 40, 10, ObjectKind.FILE)
            os.write(ready[1], b"x")
            os.read(go[0], 1)  # the parent has closed its connection (and exited)
            for i in range(2, 20):
                child.insert(f"{i:040x}", 10, ObjectKind.FILE)
            code = 0
        finally:
            os._exit(code)  # killed or unmounted: no orderly close
    assert os.read(ready[0], 1) == b"x"
    parent.close()
    os.write(go[1], b"x")
    assert os.waitpid(pid, 0)[1] == 0
    for fd in (*go, *ready):
        os.close(fd)
    with QuotaManager(tmp_path / "cache", 10 * MB) as again:
        assert again.stats().objects == 20
        assert {e.hash for e in again.list()} == {"0" * 40, "1" * 40} | {
            f"{i:040x}" for i in range(2, 20)}
