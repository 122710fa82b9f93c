"""Tests of the history (tag) database: the golden chain, our writer, undo tags and rollback."""

from __future__ import annotations

import sqlite3
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from pycvmfs.errors import ConfigError, FormatError, TagNotFoundError
from pycvmfs.format.hashes import ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.history import (
    TRUNK,
    TRUNK_PREVIOUS,
    History,
    Tag,
    is_auto_tag_name,
)

FQRN = "golden.example.org"
HEAD_HISTORY = "a34347b2c5cb584b634e2a5fd90c2ae2c8785577"

# What stock history databases hold in sqlite_master (spec section 5.1), verbatim.
STOCK_SQL = [
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,  CONSTRAINT "
    "pk_branch PRIMARY KEY (branch),   FOREIGN KEY (parent) REFERENCES branches (branch),   "
    "CHECK ((branch <> '') OR (parent IS NULL)),   CHECK ((branch = '') OR (parent IS NOT NULL)))",
    "CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER,   timestamp INTEGER, channel "
    "INTEGER, description TEXT, size INTEGER,   branch TEXT, CONSTRAINT pk_tags PRIMARY KEY "
    "(name),   FOREIGN KEY (branch) REFERENCES branches (branch))",
    "CREATE TABLE recycle_bin (hash TEXT, flags INTEGER,   CONSTRAINT pk_hash PRIMARY KEY (hash))",
]

H1 = ContentHash.parse("8590b9460e9131e6a996a6f822d6f46cc07fcaf0")
H2 = ContentHash.parse("94c073f20e6d79b3abea61eb44ffe1ad26a1bd90")
H3 = ContentHash.parse("434e2742ad19baa1f5be5ffcb3c755ecabae7562")
H4 = hash_bytes(b"rolled back catalog")
H5 = hash_bytes(b"next catalog")


def history_object(golden_repo: Path, h: ContentHash) -> bytes:
    data = (golden_repo / h.object_path(ObjectKind.HISTORY)).read_bytes()
    assert hash_bytes(data, h.algorithm) == h, "stored history object does not match its name"
    return zlib.decompress(data)


def decompress_history(golden_repo: Path, h: ContentHash, dest: Path) -> Path:
    path = dest / f"{h}.db"
    path.write_bytes(history_object(golden_repo, h))
    return path


@pytest.fixture(scope="module")
def golden_history_path(golden_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return decompress_history(golden_repo, ContentHash.parse(HEAD_HISTORY),
                              tmp_path_factory.mktemp("history"))


@pytest.fixture
def golden_history(golden_history_path: Path):
    with History.open(golden_history_path, what="golden history") as h:
        yield h


def table_sql(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
    finally:
        conn.close()


def tag_rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT rowid, * FROM tags ORDER BY rowid").fetchall()
    finally:
        conn.close()


def make_tag(name: str, h: ContentHash, revision: int, timestamp: int, description: str = "",
             size: int = 1000) -> Tag:
    return Tag(name=name, root_hash=h, revision=revision, timestamp=timestamp,
               description=description, size=size)


# -- the golden history ---------------------------------------------------------------------------
def test_golden_tags_equal_the_published_tags(golden_history: History,
                                               golden_expected: dict) -> None:
    expected = golden_expected["published"]["tags"]
    got = golden_history.tags()
    assert [t.name for t in got] == [e["name"] for e in expected]
    for tag, e in zip(got, expected, strict=True):
        assert str(tag.root_hash) == e["root_hash"]
        assert (tag.revision, tag.timestamp, tag.description, tag.size) == (
            e["revision"], e["timestamp"], e["description"], e["root_catalog_size"])
        assert (tag.channel, tag.branch) == (0, "")


def test_golden_properties(golden_history: History) -> None:
    assert golden_history.fqrn == FQRN
    assert golden_history.schema_revision == 3
    assert str(golden_history.previous_revision) == "292392f8c35a918e94073c034c79d2610588f58a"


def test_golden_lookups(golden_history: History) -> None:
    v1 = golden_history.get("v1")
    assert v1 is not None and v1.root_hash == H2 and v1.description == "fixture tree rev1"
    assert golden_history.get("v3") is None
    assert [t.name for t in golden_history.by_revision(2)] == [
        "generic-2026-11-24T20:48:42Z", "trunk-previous", "v1"]
    assert golden_history.by_revision(7) == []


@pytest.mark.parametrize(("date", "root"), [
    (1795553298, None),
    (1795553299, H1),
    (1795553321, H1),
    (1795553322, H2),
    (1795553323, H3),
    (4000000000, H3),
])
def test_tag_at_date_picks_the_newest_revision_not_after_the_date(
        golden_history: History, date: int, root: ContentHash | None) -> None:
    tag = golden_history.tag_at_date(date)
    assert (tag.root_hash if tag else None) == root


def test_previous_revision_chain_reaches_the_first_history(golden_repo: Path,
                                                           tmp_path: Path) -> None:
    chain: list[ContentHash] = []
    h: ContentHash | None = ContentHash.parse(HEAD_HISTORY)
    while h is not None:
        assert h not in chain, "cycle in the previous_revision chain"
        chain.append(h)
        with History.open(decompress_history(golden_repo, h, tmp_path), what=str(h)) as hist:
            assert hist.fqrn == FQRN
            h = hist.previous_revision
            first_tags = [t.name for t in hist.tags()]
    stored = {p.parent.name + p.name[:-1] for p in golden_repo.glob("data/*/*H")}
    assert {str(c) for c in chain} == stored
    assert len(chain) == 5
    # the first history (made by the first commit) holds only trunk and the auto tag
    assert first_tags == ["generic-2026-11-24T20:48:19Z", "trunk"]
    conn = sqlite3.connect(tmp_path / f"{chain[-1]}.db")
    assert conn.execute("SELECT value FROM properties WHERE key = 'previous_revision'"
                        ).fetchone() == ("0" * 40,)
    conn.close()


def test_read_only_history_refuses_changes_and_leaves_file_unchanged(
        golden_history_path: Path) -> None:
    before = golden_history_path.read_bytes()
    with History.open(golden_history_path, what="golden") as hist:
        with pytest.raises(ValueError, match="read-only"):
            hist.insert(make_tag("x", H1, 1, 1))
        assert len(hist.tags()) == 7
    assert golden_history_path.read_bytes() == before


def test_auto_tag_names(golden_history: History) -> None:
    assert golden_history.auto_tag_name(1795553299) == "generic_1-2026-11-24T20:48:19Z"
    assert golden_history.auto_tag_name(1795553300) == "generic-2026-11-24T20:48:20Z"
    assert is_auto_tag_name("generic_12-2026-11-24T20:48:19Z")
    assert is_auto_tag_name("generic-2026-11-24T20:48:19.123Z")
    assert not is_auto_tag_name("v1")
    assert not is_auto_tag_name("generic-2026-11-24")
    assert [t.name for t in golden_history.expired_auto_tags(1795553323)] == [
        "generic-2026-11-24T20:48:42Z", "generic-2026-11-24T20:48:19Z"]


# -- our writer -----------------------------------------------------------------------------------
def test_created_history_has_the_stock_schema_and_header(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with History.create(path, FQRN) as hist:
        hist.insert(make_tag("v1", H1, 1, 100, "first"))
    assert not (tmp_path / "h.db-journal").exists()
    assert table_sql(path) == STOCK_SQL
    header = path.read_bytes()[:100]
    assert header[16:18] == b"\x04\x00"  # page size 1024
    assert header[18:20] == b"\x01\x01"  # rollback journal, not WAL
    assert path.stat().st_size % 1024 == 0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT key, value, typeof(value) FROM properties ORDER BY rowid"
                            ).fetchall() == [
            ("schema", "1.0", "text"), ("schema_revision", "3", "text"), ("fqrn", FQRN, "text"),
            ("previous_revision", "0" * 40, "text")]
        assert conn.execute("SELECT branch, parent, initial_revision FROM branches"
                            ).fetchall() == [("", None, 0)]
        assert conn.execute("SELECT count(*) FROM recycle_bin").fetchone() == (0,)
        assert conn.execute("SELECT typeof(revision), typeof(timestamp), typeof(channel), "
                            "typeof(size), typeof(branch), typeof(name) FROM tags").fetchall() == [
            ("integer", "integer", "integer", "integer", "text", "text")]
    finally:
        conn.close()


def test_create_insert_reopen_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    tags = [make_tag("v1", H1, 1, 100, "first", 2048), make_tag("ünïcode", H2, 2, 200, "δ", 4096)]
    with History.create(path, FQRN, previous=H3) as hist:
        for t in tags:
            hist.insert(t)
    with History.open(path, what="ours") as hist:
        assert hist.fqrn == FQRN
        assert hist.previous_revision == H3
        assert hist.tags() == list(reversed(tags))
        assert hist.get("ünïcode") == tags[1]


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "h.db").write_bytes(b"x")
    with pytest.raises(FormatError, match="exists"):
        History.create(tmp_path / "h.db", FQRN)


def test_insert_and_remove_rules(tmp_path: Path) -> None:
    with History.create(tmp_path / "h.db", FQRN) as hist:
        hist.insert(make_tag("v1", H1, 1, 100))
        with pytest.raises(ConfigError, match="exists already"):
            hist.insert(make_tag("v1", H2, 2, 200))
        for bad in (TRUNK, TRUNK_PREVIOUS, "with space", ""):
            with pytest.raises(ConfigError):
                hist.insert(make_tag(bad, H1, 1, 100))
        with pytest.raises(ConfigError, match="branch"):
            hist.insert(replace(make_tag("b", H1, 1, 100), branch="nonexistent"))
        with pytest.raises(ConfigError, match="revision"):
            hist.insert(make_tag("neg", H1, -1, 100))
        with pytest.raises(ConfigError):
            hist.remove(TRUNK)
        assert hist.remove("v1") is True
        assert hist.remove("v1") is False
        assert hist.tags() == []


def replay_golden_publishes(tmp_path: Path) -> Path:
    """Build the golden history chain with our writer, operation by operation as stock did."""
    first = tmp_path / "1.db"
    with History.create(first, FQRN) as hist:  # commit of mkfs: revision 1
        tag = make_tag("generic-2026-11-24T20:48:19Z", H1, 1, 1795553299, size=16384)
        hist.insert(tag)
        hist.update_undo_tags(tag)
    previous, prev_hash = first, hash_bytes(b"1")
    steps = [  # (auto tag of a publish) or (user tag without undo tags)
        (make_tag("generic-2026-11-24T20:48:42Z", H2, 2, 1795553322, size=185344), True),
        (make_tag("generic-2026-11-24T20:48:43Z", H3, 3, 1795553323, size=185344), True),
        (make_tag("v1", H2, 2, 1795553322, "fixture tree rev1", 185344), False),
        (make_tag("v2", H3, 3, 1795553323, "fixture tree rev2 (current)", 185344), False),
    ]
    for i, (tag, publish) in enumerate(steps, start=2):
        path = tmp_path / f"{i}.db"
        with History.derive(previous, path, previous=prev_hash) as hist:
            assert hist.previous_revision == prev_hash
            hist.insert(tag)
            if publish:
                hist.update_undo_tags(tag)
        previous, prev_hash = path, hash_bytes(str(i).encode())
    return previous


def test_replayed_publishes_give_the_golden_rows_and_row_ids(tmp_path: Path,
                                                             golden_history_path: Path) -> None:
    ours = replay_golden_publishes(tmp_path)
    assert tag_rows(ours) == tag_rows(golden_history_path)
    assert table_sql(ours) == table_sql(golden_history_path) == STOCK_SQL
    conn = sqlite3.connect(ours)
    golden = sqlite3.connect(golden_history_path)
    try:
        query = "SELECT rowid, key FROM properties ORDER BY rowid"
        assert conn.execute(query).fetchall() == golden.execute(query).fetchall()
    finally:
        conn.close()
        golden.close()


def test_derive_keeps_the_old_file_and_refuses_to_overwrite(tmp_path: Path,
                                                            golden_history_path: Path) -> None:
    before = golden_history_path.read_bytes()
    new = tmp_path / "next.db"
    with History.derive(golden_history_path, new, previous=ContentHash.parse(HEAD_HISTORY)) as h:
        h.insert(make_tag("v3", H3, 3, 1795553323, "third"))
    assert golden_history_path.read_bytes() == before
    with History.open(new) as h:
        assert str(h.previous_revision) == HEAD_HISTORY
        assert h.get("v3") is not None and len(h.tags()) == 8
    with pytest.raises(FormatError, match="exists"):
        History.derive(golden_history_path, new, previous=H1)


# -- undo tags and rollback ------------------------------------------------------------------------
@pytest.fixture
def three_revisions(tmp_path: Path) -> Path:
    """A golden-like history: revisions 1-3 published, v1 on revision 2, v2 on revision 3."""
    return replay_golden_publishes(tmp_path)


def names(hist: History) -> dict[str, tuple[ContentHash, int]]:
    return {t.name: (t.root_hash, t.revision) for t in hist.tags()}


def test_publish_moves_trunk_to_trunk_previous(three_revisions: Path) -> None:
    with History.open(three_revisions, writable=True) as hist:
        hist.update_undo_tags(make_tag("ignored", H4, 4, 1795559999, "ignored"))
        trunk, previous = hist.get(TRUNK), hist.get(TRUNK_PREVIOUS)
    assert trunk == make_tag(TRUNK, H4, 4, 1795559999, "current HEAD")
    assert previous == make_tag(TRUNK_PREVIOUS, H3, 3, 1795553323, "default undo target", 185344)


def test_named_rollback(three_revisions: Path) -> None:
    with History.open(three_revisions, writable=True) as hist:
        affected = [t.name for t in hist.tags_affected_by_rollback("v1")]
        assert affected == ["generic-2026-11-24T20:48:43Z", "trunk", "v2", "v1"]
        updated = hist.rollback_to(hist.get("v1"), H4, 4, 1795560000, 5555)
        assert updated == make_tag("v1", H4, 4, 1795560000, "fixture tree rev1", 5555)
        assert names(hist) == {
            "v1": (H4, 4),
            TRUNK: (H4, 4),
            "generic-2026-11-24T20:48:42Z": (H2, 2),  # same revision: survives, old hash
            "generic-2026-11-24T20:48:19Z": (H1, 1),
        }
        assert hist.get(TRUNK).description == "current HEAD"
        assert hist.get(TRUNK).size == 5555
    assert not three_revisions.with_name(three_revisions.name + "-journal").exists()
    assert three_revisions.read_bytes()[18:20] == b"\x01\x01"


def test_undo_rollback_leaves_no_trunk_previous_until_the_next_publish(
        three_revisions: Path) -> None:
    with History.open(three_revisions, writable=True) as hist:
        hist.rollback_to(TRUNK_PREVIOUS, H4, 4, 1795560000, 5555)
        assert names(hist) == {
            TRUNK: (H4, 4),
            "v1": (H2, 2),
            "generic-2026-11-24T20:48:42Z": (H2, 2),
            "generic-2026-11-24T20:48:19Z": (H1, 1),
        }
        with pytest.raises(TagNotFoundError, match="trunk-previous"):
            hist.rollback_to(TRUNK_PREVIOUS, H5, 5, 1795560001, 1)
        # the next publish brings trunk-previous back, pointing at the rollback catalog
        hist.update_undo_tags(make_tag("generic-x", H5, 5, 1795560100))
        assert hist.get(TRUNK_PREVIOUS).root_hash == H4
        assert hist.get(TRUNK).root_hash == H5


def test_rollback_refusals(three_revisions: Path) -> None:
    with History.open(three_revisions, writable=True) as hist:
        before = hist.tags()
        with pytest.raises(TagNotFoundError):
            hist.rollback_to("nope", H4, 4, 1, 1)
        with pytest.raises(ConfigError, match="current head"):
            hist.rollback_to("v2", H4, 4, 1, 1)
        with pytest.raises(ConfigError, match="not newer"):
            hist.rollback_to("v1", H4, 3, 1, 1)
        assert hist.tags() == before


# -- older schemas and broken files ----------------------------------------------------------------
def make_legacy(path: Path, revision: int) -> None:
    conn = sqlite3.connect(path)
    size_col = ", size INTEGER" if revision >= 1 else ""
    conn.executescript(f"""
        CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key));
        CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER, timestamp INTEGER,
          channel INTEGER, description TEXT{size_col}, CONSTRAINT pk_tags PRIMARY KEY (name));
        INSERT INTO properties VALUES ('schema', '1.0'), ('schema_revision', '{revision}'),
          ('fqrn', 'old.example.org');
        INSERT INTO tags (name, hash, revision, timestamp, channel, description)
          VALUES ('old', '{H1}', 5, 1000, 4, 'legacy'), ('older', '{H2}', 4, 900, 4, '');
    """)
    conn.close()


@pytest.mark.parametrize("revision", [0, 1, 2])
def test_legacy_schema_reads_with_defaults(tmp_path: Path, revision: int) -> None:
    path = tmp_path / "old.db"
    make_legacy(path, revision)
    with History.open(path) as hist:
        assert hist.schema_revision == revision
        assert hist.previous_revision is None
        assert hist.tags() == [Tag("old", H1, 5, 1000, 4, "legacy", 0, ""),
                               Tag("older", H2, 4, 900, 4, "", 0, "")]
        assert hist.tag_at_date(950).name == "older"


def test_legacy_schema_is_upgraded_when_opened_writable(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_legacy(path, 0)
    with History.open(path, writable=True) as hist:
        assert hist.schema_revision == 3
        hist.insert(make_tag("new", H3, 6, 2000, "after upgrade", 77))
    with History.open(path) as hist:
        assert hist.schema_revision == 3
        assert hist.get("new").size == 77
        assert hist.get("old").branch == ""
        assert hist.tag_at_date(5000).name == "new"


@pytest.mark.parametrize(("props", "message"), [
    ("('schema', '1.0'), ('schema_revision', '3')", "no fqrn"),
    ("('schema', '2.0'), ('schema_revision', '3'), ('fqrn', 'x')", "unsupported history schema"),
    ("('schema', '1.0'), ('schema_revision', '4'), ('fqrn', 'x')", "schema revision 4"),
    ("('schema', 'one'), ('schema_revision', '3'), ('fqrn', 'x')", "unreadable"),
])
def test_bad_properties_are_rejected(tmp_path: Path, props: str, message: str) -> None:
    path = tmp_path / "bad.db"
    conn = sqlite3.connect(path)
    conn.executescript(f"CREATE TABLE properties (key TEXT, value TEXT); "
                       f"INSERT INTO properties VALUES {props};")
    conn.close()
    with pytest.raises(FormatError, match=message):
        History.open(path, what="bad history")


def test_non_database_and_bad_rows_are_format_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(FormatError, match="junk history"):
        History.open(junk, what="junk history")
    path = tmp_path / "bad.db"
    make_legacy(path, 2)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE tags SET hash = 'xyz' WHERE name = 'old'")
    conn.commit()
    conn.close()
    with History.open(path, what="bad rows") as hist, pytest.raises(FormatError, match="'old'"):
        hist.tags()
