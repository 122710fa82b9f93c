"""Tests of the reflog: the golden ``.cvmfsreflog`` and our writer."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from pycvmfs.errors import FormatError
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.history import History
from pycvmfs.format.reflog import KIND_CODES, RefEntry, Reflog, reflog_hash

FQRN = "golden.example.org"
STOCK_SQL = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER, CONSTRAINT pk_refs PRIMARY "
    "KEY (hash))",
]


def manifest_fields(golden_repo: Path) -> dict[str, str]:
    body = (golden_repo / ".cvmfspublished").read_bytes().split(b"\n--\n")[0]
    return {line[:1].decode(): line[1:].decode() for line in body.split(b"\n") if line}


def catalog_property(golden_repo: Path, h: ContentHash, key: str, tmp_path: Path) -> str:
    path = tmp_path / f"{h}.catalog"
    stored = golden_repo / h.object_path(ObjectKind.CATALOG)
    path.write_bytes(zlib.decompress(stored.read_bytes()))
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("SELECT value FROM properties WHERE key = ?", (key,)).fetchone()[0])
    finally:
        conn.close()


def history_chain(golden_repo: Path, head: ContentHash, tmp_path: Path) -> list[ContentHash]:
    chain: list[ContentHash] = []
    h: ContentHash | None = head
    while h is not None:
        chain.append(h)
        path = tmp_path / f"{h}.history"
        path.write_bytes(zlib.decompress(
            (golden_repo / h.object_path(ObjectKind.HISTORY)).read_bytes()))
        with History.open(path) as hist:
            h = hist.previous_revision
    return chain


@pytest.fixture
def golden_reflog(golden_repo: Path):
    with Reflog.open(golden_repo / ".cvmfsreflog", what="golden reflog") as reflog:
        yield reflog


def test_reflog_hash_is_manifest_y(golden_repo: Path) -> None:
    y = manifest_fields(golden_repo)["Y"]
    assert y.startswith("5bdaaaa0")
    path = golden_repo / ".cvmfsreflog"
    assert str(reflog_hash(path, Algorithm.SHA1)) == y
    assert str(reflog_hash(path.read_bytes())) == y
    other = reflog_hash(path, Algorithm.SHAKE128)
    assert str(other).endswith("-shake128") and other.digest != bytes.fromhex(y)


def test_golden_reflog_lists_exactly_the_root_catalogs_and_auxiliary_objects(
        golden_reflog: Reflog, golden_repo: Path, golden_expected: dict,
        tmp_path: Path) -> None:
    manifest = manifest_fields(golden_repo)
    tag_roots = {ContentHash.parse(t["root_hash"]) for t in golden_expected["published"]["tags"]}
    assert len(tag_roots) == 3
    first = min(tag_roots, key=lambda h: int(catalog_property(golden_repo, h, "revision",
                                                             tmp_path)))
    rev0 = ContentHash.parse(catalog_property(golden_repo, first, "previous_revision", tmp_path))
    assert catalog_property(golden_repo, rev0, "revision", tmp_path) == "0"
    histories = history_chain(golden_repo, ContentHash.parse(manifest["H"]), tmp_path)
    expected = ({(h, ObjectKind.CATALOG) for h in (*tag_roots, rev0)}
                | {(h, ObjectKind.HISTORY) for h in histories}
                | {(ContentHash.parse(manifest["X"]), ObjectKind.CERTIFICATE),
                   (ContentHash.parse(manifest["M"]), ObjectKind.METAINFO)})
    entries = golden_reflog.entries()
    assert {(e.hash, e.kind) for e in entries} == expected
    assert len(entries) == len(expected) == len(golden_reflog) == 11
    assert all(1795553299 <= e.timestamp <= int(manifest["T"]) for e in entries)
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)


def test_golden_reflog_lookups(golden_reflog: Reflog, golden_repo: Path) -> None:
    manifest = manifest_fields(golden_repo)
    root = ContentHash.parse(manifest["C"])
    assert golden_reflog.fqrn == FQRN
    assert golden_reflog.contains(root, ObjectKind.CATALOG)
    assert not golden_reflog.contains(root, ObjectKind.HISTORY)
    assert not golden_reflog.contains(hash_bytes(b"absent"), ObjectKind.CATALOG)
    assert golden_reflog.timestamp(root, ObjectKind.CATALOG) == int(manifest["T"])
    assert golden_reflog.timestamp(hash_bytes(b"absent"), ObjectKind.CATALOG) is None
    with pytest.raises(ValueError, match="read-only"):
        golden_reflog.add(root, ObjectKind.CATALOG, 1)
    with pytest.raises(ValueError):
        golden_reflog.contains(root, ObjectKind.FILE)


def test_golden_reflog_schema_text(golden_repo: Path) -> None:
    conn = sqlite3.connect(golden_repo / ".cvmfsreflog")
    try:
        sql = [r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")]
    finally:
        conn.close()
    assert sql == STOCK_SQL


def test_created_reflog_has_the_stock_schema_and_header(tmp_path: Path) -> None:
    path = tmp_path / ".cvmfsreflog"
    with Reflog.create(path, FQRN) as reflog:
        assert len(reflog) == 0
    assert not (tmp_path / ".cvmfsreflog-journal").exists()
    header = path.read_bytes()[:100]
    assert header[16:18] == b"\x04\x00" and header[18:20] == b"\x01\x01"
    conn = sqlite3.connect(path)
    try:
        assert [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid")] == STOCK_SQL
        assert conn.execute("SELECT key, value, typeof(value) FROM properties ORDER BY rowid"
                            ).fetchall() == [("schema", "1.0", "text"),
                                             ("schema_revision", "0", "text"),
                                             ("fqrn", FQRN, "text")]
    finally:
        conn.close()


def test_add_replace_remove_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / ".cvmfsreflog"
    cat, cert = hash_bytes(b"catalog"), hash_bytes(b"cert", Algorithm.SHAKE128)
    hist, meta = hash_bytes(b"history", Algorithm.RMD160), hash_bytes(b"meta")
    with Reflog.create(path, FQRN) as reflog:
        reflog.add(cat, ObjectKind.CATALOG, 100)
        reflog.add(cert, ObjectKind.CERTIFICATE, 101)
        reflog.add(hist, ObjectKind.HISTORY, 102)
        reflog.add(meta, ObjectKind.METAINFO, 103)
        reflog.add(cat, ObjectKind.CATALOG, 200)  # re-adding refreshes the timestamp
        assert len(reflog) == 4
        assert reflog.remove(meta, ObjectKind.CATALOG) is False
        assert reflog.remove(meta) is True
        assert reflog.remove(meta) is False
        reflog.add(meta, ObjectKind.METAINFO)  # timestamp: now
    with Reflog.open(path) as reflog:
        entries = reflog.entries()
    assert entries[:3] == [RefEntry(cert, ObjectKind.CERTIFICATE, 101),
                           RefEntry(hist, ObjectKind.HISTORY, 102),
                           RefEntry(cat, ObjectKind.CATALOG, 200)]
    assert entries[3].hash == meta and entries[3].timestamp > 1_700_000_000
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT rowid, hash, type FROM refs ORDER BY rowid").fetchall()
    finally:
        conn.close()
    # INSERT OR REPLACE gives the refreshed row a new row id; texts carry the algorithm suffix
    assert [(r[1], r[2]) for r in rows] == [(str(cert), 1), (str(hist), 2), (str(cat), 0),
                                            (str(meta), 3)]
    assert str(cert).endswith("-shake128") and rows[2][0] == 5
    assert reflog_hash(path) == hash_bytes(path.read_bytes())


def test_kind_codes() -> None:
    assert KIND_CODES == {ObjectKind.CATALOG: 0, ObjectKind.CERTIFICATE: 1,
                          ObjectKind.HISTORY: 2, ObjectKind.METAINFO: 3}


def test_writable_open_of_golden_copy_keeps_rollback_journal(tmp_path: Path,
                                                            golden_repo: Path) -> None:
    path = tmp_path / ".cvmfsreflog"
    path.write_bytes((golden_repo / ".cvmfsreflog").read_bytes())
    new = hash_bytes(b"new root")
    with Reflog.open(path, writable=True) as reflog:
        reflog.add(new, ObjectKind.CATALOG, 1795560000)
    assert path.read_bytes()[18:20] == b"\x01\x01"
    assert not (tmp_path / ".cvmfsreflog-journal").exists()
    with Reflog.open(path) as reflog:
        assert len(reflog) == 12 and reflog.contains(new, ObjectKind.CATALOG)


@pytest.mark.parametrize(("script", "message"), [
    ("INSERT INTO properties VALUES ('schema', '1.0'), ('schema_revision', '0');", "no fqrn"),
    ("INSERT INTO properties VALUES ('schema_revision', '1'), ('fqrn', 'x');", "revision 1"),
    ("INSERT INTO properties VALUES ('fqrn', 'x'); "
     "INSERT INTO refs VALUES ('" + "ab" * 20 + "', 7, 1);", "unknown reference type 7"),
    ("INSERT INTO properties VALUES ('fqrn', 'x'); "
     "INSERT INTO refs VALUES ('nothex', 0, 1);", "not a textual content hash"),
    ("INSERT INTO properties VALUES ('fqrn', 'x'); "
     "INSERT INTO refs VALUES ('" + "ab" * 20 + "', 0, 'soon');", "not an integer"),
])
def test_malformed_reflogs_are_format_errors(tmp_path: Path, script: str, message: str) -> None:
    path = tmp_path / "bad"
    conn = sqlite3.connect(path)
    conn.executescript(f"{STOCK_SQL[0]}; {STOCK_SQL[1]}; {script}")
    conn.close()
    with pytest.raises(FormatError, match=message), \
            Reflog.open(path, what="bad reflog") as reflog:
        reflog.entries()


def test_not_a_database_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x00" * 2048)
    with pytest.raises(FormatError, match="junk reflog"):
        Reflog.open(path, what="junk reflog")
