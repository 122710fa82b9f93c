"""Garbage collection keeps every preserved revision readable and deletes exactly the rest."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import zlib
from concurrent.futures import Future
from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError, RepositoryBusyError
from pycvmfs.format.catalog import Chunk
from pycvmfs.format.chunking import ChunkingParams
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind
from pycvmfs.publish.check import check_repository
from pycvmfs.publish.config import ServerSettings
from pycvmfs.publish.gc import collect_garbage
from pycvmfs.publish.ingest import Ingested
from pycvmfs.publish.repository import Publisher
from pycvmfs.publish.rows import Meta

from helpers.publishing import reader

DAY = 86400
FQRN = "gc.example.org"
SMALL_CHUNKS = ChunkingParams(65536, 131072, 262144)
REFLOG_TYPES = {0: "C", 1: "X", 2: "H", 3: "M"}


class Clock:
    """``time.time`` under the test's control, so that revisions lie days apart."""

    def __init__(self) -> None:
        self.base = time.time()
        self.now = self.base

    def at_day(self, day: float) -> None:
        self.now = self.base + day * DAY

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    return c


# -- an independent walk over the storage (plain sqlite3 and zlib) ------------------------
def _rel(name: str) -> str:
    return f"data/{name[:2]}/{name[2:]}"


def stored_objects(storage: Path) -> dict[str, int]:
    """Every object file (relative path -> size), writes in progress excluded."""
    out = {}
    for p in (storage / "data").rglob("*"):
        rel = p.relative_to(storage).as_posix()
        if p.is_file() and not rel.startswith("data/txn/"):
            out[rel] = p.stat().st_size
    return out


def tree_objects(storage: Path, root: str, tmp: Path) -> set[str]:
    """Relative paths of a root catalog, its nested catalogs and every object they name."""
    out: set[str] = set()
    todo = [root]
    while todo:
        text = todo.pop()
        rel = _rel(text + "C")
        if rel in out:
            continue
        out.add(rel)
        db = tmp / "walk.db"
        db.write_bytes(zlib.decompress((storage / rel).read_bytes()))
        conn = sqlite3.connect(db)
        try:
            for h, flags in conn.execute("SELECT hash, flags FROM catalog WHERE hash NOT NULL"):
                if not flags & 128:
                    out.add(_rel(h.hex()))
            for (h,) in conn.execute("SELECT chunks.hash FROM chunks JOIN catalog USING "
                                     "(md5path_1, md5path_2) WHERE catalog.flags & 128 = 0"):
                out.add(_rel(h.hex() + "P"))
            todo += [sha for (sha,) in conn.execute("SELECT sha1 FROM nested_catalogs")]
        finally:
            conn.close()
        db.unlink()
    return out


def reflog_rows(storage: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(f"file:{storage / '.cvmfsreflog'}?mode=ro", uri=True)
    try:
        return [(h, REFLOG_TYPES[t], ts) for h, t, ts in
                conn.execute("SELECT hash, type, timestamp FROM refs")]
    finally:
        conn.close()


def read_revision(pub, cache: Path, **selector) -> dict[str, bytes]:
    """Every regular file of a revision, read through the verified client (fresh cache)."""
    out = {}
    with reader(pub, cache) as r, r.open_revision(**selector) as view:
        for _d, _dirs, files in view.walk("/"):
            for s in files:
                if s.is_file:
                    out[s.path.lstrip("/")] = view.read_bytes(s.path)
    return out


# -- a repository with history ----------------------------------------------------------
def _blob(seed: int, size: int = 300_000) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _changes(n: int):
    """The n-th revision's edits: some content stays, some is replaced (old versions become
    garbage once no kept revision has them)."""
    big = bytearray(_blob(1))
    if n >= 3:
        big[150_000:150_200] = b"x" * 200  # most chunks stay the same
    return [
        ("shared.txt", b"the same in every revision\n"),
        ("a.txt", f"version {n} of a\n".encode()),
        ("big.bin", bytes(big)),
        ("sub/.cvmfscatalog", b""),
        ("sub/x.txt", f"x {n // 2}\n".encode()),
        ("sub/deep/.cvmfscatalog", b""),
        ("sub/deep/y.txt", f"y {n}\n".encode()),
    ] + ([("sub/old.txt", b"removed in revision 4\n")] if n < 4 else [])


def build(make_publisher, clock: Clock, days=(-10, -9, -8, -7, -6, -5), tag_at: int = 3):
    """mkfs at days[0], then revisions 2.. at the following days; revision ``tag_at`` gets the
    tag ``v-old``. Returns the publisher and each revision's files."""
    clock.at_day(days[0])
    pub = make_publisher(garbage_collection=True, auto_tag=False, include_xattrs=True)
    contents = {1: {"new_repository": f"New CernVM-FS repository for {pub.fqrn}\n".encode()}}
    for n, day in enumerate(days[1:], start=2):
        clock.at_day(day)
        files = dict(contents[n - 1])
        with pub.transaction(tag="v-old" if n == tag_at else None) as txn:
            if n == 4:
                txn.remove("/sub/old.txt")
                files.pop("sub/old.txt")
            for path, data in _changes(n):
                if path not in files or files[path] != data:
                    txn.add_file("/" + path, data)
                files[path] = data
        assert txn.summary.revision == n
        contents[n] = files
    # a tag in the same second: the history the last publish made is no longer the manifest's,
    # but it is as old as the newest revision, so it is not garbage
    pub.tag("release", message="the newest revision")
    clock.at_day(days[-1] + 0.01)
    return pub, contents


def preserved_set(pub, tmp: Path, *, trunk_roots: list[str]) -> set[str]:
    """What must survive: the trees of the kept trunk revisions and of every tag, the objects
    the manifest names, and auxiliary objects not older than the oldest kept trunk revision."""
    storage = pub.config.storage
    head = pub.head()
    roots = set(trunk_roots) | {str(t.root_hash) for t in pub.tags()}
    keep: set[str] = set()
    for root in roots:
        keep |= tree_objects(storage, root, tmp)
    keep |= {_rel(str(head.certificate) + "X"), _rel(str(head.history) + "H"),
             _rel(str(head.meta_info) + "M")}
    rows = reflog_rows(storage)
    oldest = min(ts for h, kind, ts in rows if kind == "C" and h in trunk_roots)
    keep |= {_rel(h + kind) for h, kind, ts in rows if kind != "C" and ts >= oldest}
    return keep


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict]:
    """The history of :func:`build`, made once per module (copied by :func:`repo`)."""
    base = tmp_path_factory.mktemp("gc-template")

    def make(**overrides):
        settings = ServerSettings(chunking=SMALL_CHUNKS).override(**overrides)
        return Publisher.mkfs(FQRN, base / "srv" / FQRN, config_dir=base / "etc",
                              settings=settings)

    with pytest.MonkeyPatch.context() as mp:
        clock = Clock()
        mp.setattr(time, "time", clock)
        _pub, contents = build(make, clock)
    return base, contents


@pytest.fixture
def repo(template, tmp_path):
    """A private copy of the template repository and the files of each revision."""
    base, contents = template
    dest = tmp_path / "repo"
    for path in base.rglob("*"):  # files only: empty data/XX folders cost time to copy
        if path.is_file():
            rel = path.relative_to(base)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
    conf = dest / "etc" / "repositories.d" / FQRN / "server.conf"
    conf.write_text(conf.read_text().replace(str(base), str(dest)))
    return Publisher.open(FQRN, config_dir=dest / "etc"), contents


# -- the tests ---------------------------------------------------------------------------
def test_gc_deletes_exactly_what_no_kept_revision_needs(repo, tmp_path):
    pub, contents = repo
    storage = pub.config.storage
    head = pub.head()
    manifest_bytes = (storage / ".cvmfspublished").read_bytes()
    before = stored_objects(storage)
    expected_kept = preserved_set(pub, tmp_path, trunk_roots=[str(head.root_catalog)])
    tags = {t.name: t for t in pub.tags()}
    assert sorted(tags) == ["release", "trunk", "trunk-previous", "v-old"]

    report = collect_garbage(pub, keep_revisions=0, keep_seconds=0, record_deleted=True)

    after = stored_objects(storage)
    deleted = set(report.deleted)
    assert len(deleted) == len(report.deleted) == report.objects
    assert deleted == set(before) - set(after)  # reported = gone
    assert deleted == set(before) - expected_kept  # gone = unreachable from what is kept
    assert report.bytes == sum(before[p] for p in deleted)
    assert {k for k, v in report.objects_deleted.items() if v} == {
        "catalog", "data object", "chunk", "history database"}
    assert report.revisions_kept == [6]
    assert sorted(report.tags_kept) == ["release", "trunk", "trunk-previous", "v-old"]
    # the reflog lost the swept roots and old histories; its checksum follows; the manifest
    # is not re-signed
    rows = reflog_rows(storage)
    assert {h for h, kind, _ in rows if kind == "C"} == {str(t.root_hash) for t in tags.values()}
    assert not set(report.root_catalogs_swept) & {h for h, _k, _t in rows}
    assert len(report.root_catalogs_swept) == 4  # revisions 0, 1, 2 and 4
    chksum = pub.config.reflog_checksum_path.read_text()
    assert chksum == hashlib.sha1((storage / ".cvmfsreflog").read_bytes()).hexdigest()
    assert (storage / ".cvmfspublished").read_bytes() == manifest_bytes
    # every kept revision reads back completely through the verified client
    assert read_revision(pub, tmp_path / "c1") == contents[6]
    assert read_revision(pub, tmp_path / "c2", tag="trunk-previous") == contents[5]
    assert read_revision(pub, tmp_path / "c3", tag="v-old") == contents[3]
    check = check_repository(pub, all_revisions=True)
    assert check.ok, [str(p) for p in check.problems]
    assert check.revisions == [6, 5, 3]
    # without the publisher's reflog.chksum the stale manifest key Y is only worth a note
    alone = check_repository(storage, all_revisions=True)
    assert alone.ok, [str(p) for p in alone.problems]
    assert any("Y stale" in n for n in alone.notes)


def test_dry_run_deletes_nothing_and_reports_the_same(repo):
    pub, _ = repo
    storage = pub.config.storage
    before = stored_objects(storage)
    reflog = (storage / ".cvmfsreflog").read_bytes()
    chksum = pub.config.reflog_checksum_path.read_text()

    dry = collect_garbage(pub, keep_revisions=0, keep_seconds=0, dry_run=True,
                          record_deleted=True)
    assert dry.dry_run and dry.objects > 0
    assert stored_objects(storage) == before
    assert (storage / ".cvmfsreflog").read_bytes() == reflog
    assert pub.config.reflog_checksum_path.read_text() == chksum

    real = collect_garbage(pub, keep_revisions=0, keep_seconds=0, record_deleted=True)
    assert sorted(real.deleted) == sorted(dry.deleted)
    assert (real.objects_deleted, real.bytes_deleted) == (dry.objects_deleted, dry.bytes_deleted)
    assert real.root_catalogs_swept == dry.root_catalogs_swept
    assert real.revisions_kept == dry.revisions_kept


def test_time_and_depth_bounds_choose_the_kept_revisions(make_publisher, clock):
    pub, _ = build(make_publisher, clock, days=(-10, -9, -8, -2.5, -1, -0.5), tag_at=0)

    def kept(**bounds) -> list[int]:
        return collect_garbage(pub, dry_run=True, **bounds).revisions_kept

    # default: three days; revision 3 (day -8) is the first older one and still kept
    assert kept() == [6, 5, 4, 3]
    assert kept(keep_revisions=1, keep_seconds=None) == [6, 5]
    assert kept(keep_revisions=5) == [6, 5, 4, 3]  # the time bound ends the walk first
    assert kept(keep_revisions=None, keep_seconds=None) == [6, 5, 4, 3, 2, 1, 0]
    report = collect_garbage(pub)
    assert report.revisions_kept == [6, 5, 4, 3]
    assert len(report.root_catalogs_swept) == 3  # revisions 0, 1, 2
    assert not (pub.config.storage / _rel(report.root_catalogs_swept[0] + "C")).exists()
    with pytest.raises(ConfigError):
        collect_garbage(pub, keep_revisions=-1)


def test_a_repository_without_garbage_collection_is_refused(make_publisher):
    pub = make_publisher()  # CVMFS_GARBAGE_COLLECTION off, manifest G=no
    with pub.transaction() as txn:
        txn.add_file("/a", b"1")
    with pub.transaction() as txn:
        txn.add_file("/a", b"2")
    before = stored_objects(pub.config.storage)
    with pytest.raises(ConfigError, match="CVMFS_GARBAGE_COLLECTION"):
        collect_garbage(pub, keep_revisions=0, keep_seconds=0)
    pub.settings.garbage_collection = True  # switched on, but not yet in a signed manifest
    with pytest.raises(ConfigError, match="G=no"):
        collect_garbage(pub, keep_revisions=0, keep_seconds=0)
    assert stored_objects(pub.config.storage) == before


def test_gc_holds_the_publish_lock(repo):
    pub, _ = repo
    with pub.lock(), pytest.raises(RepositoryBusyError):
        collect_garbage(pub, keep_revisions=0, keep_seconds=0)


def test_second_gc_deletes_nothing_and_publishing_continues(repo, tmp_path):
    pub, contents = repo
    first = collect_garbage(pub, keep_revisions=0, keep_seconds=0)
    assert first.objects > 0
    reflog = (pub.config.storage / ".cvmfsreflog").read_bytes()
    second = collect_garbage(pub, keep_revisions=0, keep_seconds=0, record_deleted=True)
    assert (second.objects, second.deleted, second.root_catalogs_swept) == (0, [], [])
    assert (pub.config.storage / ".cvmfsreflog").read_bytes() == reflog

    with pub.transaction() as txn:
        txn.add_file("/a.txt", b"after gc\n")
        txn.add_file("/sub/x.txt", b"after gc too\n")
    assert txn.summary.revision == 7
    files = dict(contents[6], **{"a.txt": b"after gc\n", "sub/x.txt": b"after gc too\n"})
    assert read_revision(pub, tmp_path / "c") == files
    third = collect_garbage(pub, keep_revisions=0, keep_seconds=0)
    assert third.root_catalogs_swept  # revision 5 lost its trunk-previous tag
    assert read_revision(pub, tmp_path / "c2") == files
    assert read_revision(pub, tmp_path / "c3", tag="trunk-previous") == contents[6]
    assert check_repository(pub).ok


# -- memory ------------------------------------------------------------------------------
_MEASURE = r"""
import json, sys, tracemalloc
from pycvmfs.publish.gc import collect_garbage
from pycvmfs.publish.repository import Publisher

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

pub = Publisher.open(sys.argv[1], config_dir=sys.argv[2])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    rss = status("VmRSS")
except OSError:  # no reset: only growth beyond the start-up peak is seen
    rss = status("VmHWM")
tracemalloc.start()
report = collect_garbage(pub, keep_revisions=0, keep_seconds=0)
peak_python = tracemalloc.get_traced_memory()[1]
print(json.dumps({"rss_growth": status("VmHWM") - rss, "python_peak": peak_python,
                  "deleted": report.objects_deleted.get("chunk", 0),
                  "preserved": report.catalogs_preserved}))
"""


def test_memory_stays_flat_for_many_objects(make_publisher, tmp_path):
    """Three revisions of one file of 7,000 distinct chunks each: 21,000 objects, of which the
    collection preserves 14,000 and sweeps 7,000. Only a sample of the swept chunks is written
    to disk — the collection never opens a preserved object, and a missing swept one costs it
    the same bookkeeping — which keeps the test fast on slow file systems."""
    pub = make_publisher(garbage_collection=True, auto_tag=False)
    n, written = 7_000, 300
    for rev in range(3):
        chunks = []
        for i in range(n):
            data = zlib.compress(b"%d:%09d" % (rev, i))
            h = ContentHash(Algorithm.SHA1, hashlib.sha1(data).digest())
            if rev == 0 and i < written:
                (pub.config.storage / h.object_path(ObjectKind.PARTIAL)).write_bytes(data)
            chunks.append(Chunk(i * 11, 11, h))
        done: Future = Future()
        done.set_result(Ingested(n * 11, None, tuple(chunks), Compression.ZLIB, Algorithm.SHA1))
        with pub.transaction() as txn:
            txn.add_content(b"/big", Meta(0o644, rev, 0, 0), done)
    proc = subprocess.run([sys.executable, "-c", _MEASURE, pub.fqrn,
                           str(pub.config.config_dir)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["deleted"] == written
    assert got["rss_growth"] < 60 << 20, got
    assert got["python_peak"] < 8 << 20, got
