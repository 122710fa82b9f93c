"""Fuzz tests of the catalog reader: malformed catalogs raise CvmfsError subclasses only."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycvmfs.errors import CatalogError, CvmfsError, FormatError
from pycvmfs.format.catalog import COUNTER_NAMES, Catalog, Chunk, is_path_component
from pycvmfs.format.catalog_writer import DDL, CatalogWriter, EntryRow
from pycvmfs.format.dirent import DirectoryEntry, make_flags
from pycvmfs.format.hashes import Algorithm, hash_bytes, md5_pair
from pycvmfs.format.xattr import encode_xattrs


@dataclass(frozen=True)
class KnownBug:
    """A reader defect found by these tests: which calls leak which exception types."""

    reason: str
    calls: frozenset[str]
    types: tuple[type[BaseException], ...]


_ENTRY_CALLS = frozenset({"lookup", "listing", "entries", "chunks"})
_REF_CALLS = frozenset({"nested_catalogs", "find_nested", "bind_mountpoints"})

#: Reader defects still open. Remove an entry once the reader is fixed: its reproducers below
#: stop being expected failures, and the fuzz strategies start generating its trigger values.
KNOWN_READER_BUGS: dict[str, KnownBug] = {}


INF = float("inf")


def known(bug: str) -> bool:
    return bug in KNOWN_READER_BUGS


def xfail_if_known(bug: str) -> tuple:
    if bug not in KNOWN_READER_BUGS:
        return ()
    return (pytest.mark.xfail(strict=True, reason=KNOWN_READER_BUGS[bug].reason),)


# -- building catalogs from raw values ----------------------------------------------------------
class RawText(bytes):
    """Bytes to store as TEXT (possibly not UTF-8), as a catalog name can be."""


COLUMNS = ("md5path_1", "md5path_2", "parent_1", "parent_2", "hardlinks", "hash", "size", "mode",
           "mtime", "mtimens", "flags", "name", "symlink", "uid", "gid", "xattr")
PATHS = (b"", b"/a", b"/a/b", b"/a/b/c", b"/n", b"/n/x", b"/z")
DIR, REG, LNK = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777


def _insert(conn: sqlite3.Connection, table: str, values: tuple) -> None:
    marks = ", ".join("CAST(? AS TEXT)" if isinstance(v, RawText) else "?" for v in values)
    conn.execute(f"INSERT OR IGNORE INTO {table} VALUES ({marks})",
                 [bytes(v) if isinstance(v, RawText) else v for v in values])


@dataclass
class RawCatalog:
    properties: list[tuple]
    catalog: list[tuple]
    chunks: list[tuple]
    nested: list[tuple]
    statistics: list[tuple]
    drop: str | None = None

    def write(self, path: Path) -> Path:
        """The exact stock DDL, filled with whatever values the fields hold."""
        conn = sqlite3.connect(":memory:")
        conn.execute("PRAGMA page_size = 1024")
        for statement in DDL:
            conn.execute(statement)
        for table, rows in (("properties", self.properties), ("catalog", self.catalog),
                            ("chunks", self.chunks), ("nested_catalogs", self.nested),
                            ("statistics", self.statistics)):
            for row in rows:
                _insert(conn, table, row)
        if self.drop:
            conn.execute(f"DROP TABLE {self.drop}")
        conn.commit()
        path.write_bytes(conn.serialize())
        conn.close()
        return path


# -- calling every reader function --------------------------------------------------------------
class Exerciser:
    """Runs every reader call; CvmfsError is fine, other exceptions propagate unless tolerated."""

    def __init__(self, tolerated: dict[str, tuple[type[BaseException], ...]] | None = None):
        self.tolerated = tolerated or {}
        self.entries: list[DirectoryEntry] = []

    def call(self, name: str, fn: Callable, *args):
        try:
            result = fn(*args)
            if isinstance(result, Iterator):
                result = list(result)
        except CvmfsError:
            return None
        except self.tolerated.get(name, ()):
            return None
        if isinstance(result, DirectoryEntry):
            self.entries.append(result)
        elif isinstance(result, list):
            self.entries += [r for r in result if isinstance(r, DirectoryEntry)]
        return result

    def run(self, path: Path) -> Catalog | None:
        cat = self.call("open", lambda: Catalog.open(path, what="fuzz"))
        if cat is None:
            return None
        with cat:
            for p in PATHS:
                entry = self.call("lookup", cat.lookup, p)
                self.call("listing", cat.listing, p)
                self.call("chunks", cat.chunks, p)
                if entry is not None:
                    self.call("chunks", cat.chunks, p, entry)
                self.call("find_nested", cat.find_nested, p)
            for name in ("entries", "nested_catalogs", "bind_mountpoints", "statistics",
                         "all_file_hashes", "all_chunk_hashes"):
                self.call(name, getattr(cat, name))
            for name in ("revision", "ttl", "last_modified", "previous_revision",
                         "root_prefix", "schema_revision"):
                self.call(name, getattr, cat, name)
            for e in self.entries:
                if known("xattr-non-blob") and not isinstance(e.xattr_blob, bytes | None):
                    continue  # bytes(2**40) would try to allocate a terabyte
                self.call("xattrs", lambda e=e: e.xattrs(what="fuzz"))
        return cat


def tolerated_known_bugs() -> dict[str, tuple[type[BaseException], ...]]:
    out: dict[str, tuple[type[BaseException], ...]] = {}
    for bug in KNOWN_READER_BUGS.values():
        for call in bug.calls:
            out[call] = out.get(call, ()) + bug.types
    if known("statistics-types"):
        out["statistics"] += (UnicodeDecodeError,)
    return out


# -- strategies ---------------------------------------------------------------------------------
int64 = st.integers(-(2**63), 2**63 - 1)
small = st.integers(-3, 70000)
reals = st.floats(allow_nan=True, allow_infinity=not known("nonfinite-real"))


def _infinite_text(text: str) -> bool:
    """Text that SQLite's INTEGER affinity would turn into a REAL ±Inf (e.g. '1e999')."""
    try:
        return float(text) in (INF, -INF)
    except ValueError:
        return False


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
if known("nonfinite-real"):
    texts = texts.filter(lambda t: not _infinite_text(t))
blobs = st.binary(max_size=24)
raw_texts = st.binary(max_size=12).map(RawText)
any_value = st.one_of(st.none(), int64, small, reals, texts, blobs, raw_texts,
                      st.sampled_from(["12", "-1", "1e300", "0x10", " 7 ", "1e999"][
                          :5 if known("nonfinite-real") else 6]))
numeric_or_null = st.one_of(st.none(), int64, small, reals)
numeric = st.one_of(int64, small, reals.filter(lambda r: r == r))  # NaN is stored as NULL
digests = st.binary(min_size=20, max_size=20)
valid_xattrs = st.sampled_from([None, encode_xattrs({b"user.a": b"1"}, what="s"),
                                encode_xattrs({b"user.k": bytes(255), b"user.e": b""}, what="s")])


#: Names that are not one path component, and modes that are no file type the format knows.
hostile_names = st.sampled_from([RawText(b"a\0b"), RawText(b"\0"), "x/y", "/", "..", ".", "",
                                 RawText(b"a/\0")])
hostile_modes = st.sampled_from([-1, 0, 0o644, 0o170644, 0o200000 | 0o644, 2**40, DIR | 2**16])


def garbage(column: str) -> st.SearchStrategy:
    """Arbitrary values for a column, minus the triggers of reader bugs still open."""
    if column == "name":
        return st.one_of(any_value, hostile_names)
    if column == "mode":
        return st.one_of(any_value, hostile_modes)
    if column == "flags" and known("scan-column-types"):
        return numeric
    if column == "size" and known("scan-column-types"):
        return numeric_or_null
    if column == "xattr" and known("xattr-non-blob"):
        return st.one_of(st.none(), texts, blobs, raw_texts)
    return any_value


KINDS = [  # (mode, flags, has hash)
    (DIR, 1, False), (DIR, 3, False), (DIR, 33, False), (DIR, 0x8001, False), (REG, 4, True),
    (REG, 68, False), (REG, 580, False), (REG, 2308, True), (REG, 516, True), (REG, 2180, True),
    (REG, 4 | 0x10000, True), (LNK, 12, False), (stat.S_IFIFO | 0o644, 20, False),
    (stat.S_IFCHR | 0o600, 20, False)]


@st.composite
def catalog_rows(draw) -> tuple:
    path = draw(st.sampled_from(PATHS))
    mode, flags, has_hash = draw(st.sampled_from(KINDS))
    good = {
        "md5path_1": md5_pair(path)[0], "md5path_2": md5_pair(path)[1],
        "parent_1": 0, "parent_2": 0, "hardlinks": draw(st.sampled_from([1, 2, 3, 1 << 32 | 2])),
        "hash": draw(digests) if has_hash else None, "size": draw(st.integers(0, 9)),
        "mode": mode, "mtime": draw(st.integers(0, 2**40)), "mtimens": None, "flags": flags,
        "name": RawText(path.rsplit(b"/", 1)[-1]), "symlink": "$(X:-y)" if flags == 12 else "",
        "uid": 0, "gid": 0, "xattr": draw(valid_xattrs)}
    if path:
        good["parent_1"], good["parent_2"] = md5_pair(path[:path.rfind(b"/")])
    for column in draw(st.sets(st.sampled_from(COLUMNS), max_size=3)):
        good[column] = draw(garbage(column))
    return tuple(good[c] for c in COLUMNS)


@st.composite
def chunk_rows(draw) -> list[tuple]:
    m1, m2 = md5_pair(draw(st.sampled_from(PATHS)))
    sizes = draw(st.lists(st.integers(-1, 5), min_size=1, max_size=3))
    rows, pos = [], draw(st.sampled_from([0, 0, 0, 1]))
    for s in sizes:
        rows.append([m1, m2, pos, s, draw(st.one_of(digests, digests, blobs))])
        pos += s
    size_values = numeric if known("chunk-size-type") or known("scan-column-types") \
        else any_value
    for row in rows:
        if draw(st.integers(0, 4)) == 0:
            column = draw(st.integers(0, 4))
            row[column] = draw(size_values if column == 3 else any_value)
    return [tuple(r) for r in rows]


nested_rows = st.tuples(
    st.one_of(st.sampled_from(["/n", "/a/b", "/n/", "", "/"]), texts, raw_texts, st.none()),
    st.one_of(st.sampled_from(["", "0" * 40, "0" * 40 + "-shake128"]),
              digests.map(lambda d: d.hex()), digests.map(lambda d: d.hex() + "-rmd160"),
              texts, blobs, st.none(), int64),
    numeric_or_null if known("nested-size-type") else any_value)

statistics_rows = st.lists(st.tuples(
    st.one_of(st.sampled_from(COUNTER_NAMES), texts,
              *(() if known("statistics-types") else (blobs, raw_texts))),
    numeric if known("statistics-types") else any_value), max_size=6)

schemas = st.sampled_from(["2.5", "2.5", "2.5", "2.4", "1.0", "2.2", "abc", "", "nan", "3", None])
properties = st.tuples(
    schemas, st.sampled_from(["7", "6", "x", None]),
    st.lists(st.tuples(st.sampled_from(["revision", "TTL", "last_modified", "previous_revision",
                                        "root_prefix", "volatile"]), any_value), max_size=3))


@st.composite
def raw_catalogs(draw) -> RawCatalog:
    schema, revision, extra = draw(properties)
    props = [("schema", schema), ("schema_revision", revision), *extra]
    return RawCatalog(
        properties=[p for p in props if p[1] is not None],
        catalog=draw(st.lists(catalog_rows(), max_size=8)),
        chunks=[r for rows in draw(st.lists(chunk_rows(), max_size=3)) for r in rows],
        nested=draw(st.lists(nested_rows, max_size=3)),
        statistics=draw(statistics_rows),
        drop=draw(st.sampled_from([None] * 12 + ["chunks", "nested_catalogs", "statistics",
                                                 "bind_mountpoints", "catalog", "properties"])))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("catalog-fuzz")


FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- fuzz tests ---------------------------------------------------------------------------------
@FUZZ
@given(raw=raw_catalogs())
def test_malformed_column_values_raise_only_cvmfs_errors(scratch: Path, raw: RawCatalog) -> None:
    Exerciser().run(raw.write(scratch / "values.db"))


def _assert_well_formed(cat: Catalog) -> None:
    """What the reader hands out obeys the format, whatever the file holds (or it raised)."""
    for p in PATHS:
        try:
            children = cat.listing(p)
        except CvmfsError:
            children = []
        names = [e.name for e in children]
        assert len(set(names)) == len(names), names
        for e in children:
            assert is_path_component(e.name), e
            assert stat.S_IFMT(e.mode) in _KNOWN_TYPES and 0 <= e.mode <= 0o177777, e
            assert e.size >= 0, e
        try:
            entry = cat.lookup(p)
        except CvmfsError:
            entry = None
        assert entry is None or entry.name == p.rsplit(b"/", 1)[-1], (p, entry)
    try:
        refs, prefix = cat.nested_catalogs(), cat.root_prefix
    except CvmfsError:
        return
    for ref in refs:
        below = ref.path[len(prefix) + 1:].split(b"/")
        assert ref.path.startswith(prefix + b"/") and all(map(is_path_component, below)), ref


_KNOWN_TYPES = {stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
                stat.S_IFCHR, stat.S_IFBLK}


@FUZZ
@given(raw=raw_catalogs())
def test_what_the_reader_returns_is_well_formed(scratch: Path, raw: RawCatalog) -> None:
    try:
        cat = Catalog.open(raw.write(scratch / "formed.db"), what="fuzz")
    except CvmfsError:
        return
    with cat:
        _assert_well_formed(cat)


identifiers = st.from_regex(r"x[a-z0-9_]{0,8}", fullmatch=True)
_TABLE_COLUMNS = {"catalog": ["size", "mode", "name", "parent_1"], "chunks": ["offset", "hash"],
                  "properties": ["key", "value"], "nested_catalogs": ["path", "sha1"],
                  "statistics": ["counter", "value"]}
SCHEMA_TEMPLATES = {  # statement template, whether the reader accepts it
    "plain-index": ("CREATE INDEX {n} ON {t} ({c})", True),
    "plain-desc": ("CREATE INDEX IF NOT EXISTS {n} ON {t} ({c} DESC)", True),
    "expression-index": ("CREATE INDEX {n} ON {t} ({c} || 'x')", False),
    "collated-index": ("CREATE INDEX {n} ON {t} ({c} COLLATE NOCASE)", False),
    "partial-index": ("CREATE INDEX {n} ON {t} ({c}) WHERE {c} IS NOT NULL", False),
    "view": ("CREATE VIEW {n} AS SELECT {c} FROM {t}", False),
    "trigger": ("CREATE TRIGGER {n} AFTER UPDATE ON {t} BEGIN SELECT 1; END", False),
    "table": ("CREATE TABLE {n} ({c})", False),
    "generated": ("ALTER TABLE {t} ADD COLUMN {n} AS ({c} IS NULL)", False),
}


@settings(FUZZ, max_examples=150)
@given(objects=st.lists(st.tuples(st.sampled_from(sorted(SCHEMA_TEMPLATES)),
                                  st.sampled_from(sorted(_TABLE_COLUMNS)), st.data()),
                        min_size=1, max_size=3),
       names=st.lists(identifiers, min_size=3, max_size=3, unique=True))
def test_schema_objects_are_checked_before_any_query(scratch: Path, objects: list,
                                                    names: list[str]) -> None:
    path = scratch / "schema-objects.db"
    path.write_bytes(valid_catalog_bytes(scratch))
    conn = sqlite3.connect(path)
    accepted = True
    for (kind, table, data), name in zip(objects, names, strict=False):
        template, ok = SCHEMA_TEMPLATES[kind]
        column = data.draw(st.sampled_from(_TABLE_COLUMNS[table]))
        conn.execute(template.format(n=name, t=table, c=column))
        accepted &= ok
    conn.commit()
    conn.close()
    if accepted:
        with Catalog.open(path, what="fuzz") as cat:
            assert cat.lookup(b"/a/b") is not None
    else:
        with pytest.raises(CatalogError, match=r"^fuzz: "):
            Catalog.open(path, what="fuzz")


@settings(FUZZ, max_examples=100)
@given(data=st.binary(max_size=3000),
       header=st.sampled_from([b"", b"SQLite format 3\0", b"SQLite format 3\0\x04\x00\x01\x01"]))
def test_files_that_are_not_catalogs_raise_format_error(scratch: Path, data: bytes,
                                                      header: bytes) -> None:
    path = scratch / "junk.db"
    path.write_bytes(header + data)  # an empty file opens as an empty database: no properties
    with pytest.raises(FormatError, match="fuzz"):
        Catalog.open(path, what="fuzz")


def valid_catalog_bytes(directory: Path) -> bytes:
    """A small but complete catalog (every table populated) made by the writer."""
    path = directory / "base.db"
    if not path.exists():
        w = CatalogWriter.create(path, what="base")
        w.add(b"", EntryRow(mode=DIR, flags=1, size=4096, linkcount=3))
        w.add(b"/a", EntryRow(mode=DIR, flags=1, size=4096,
                              xattr=encode_xattrs({b"user.x": b"y"}, what="base")))
        w.add(b"/n", EntryRow(mode=DIR, flags=3, size=4096))
        w.add(b"/a/b", EntryRow(mode=REG, flags=make_flags(mode=REG, has_hash=True), size=3,
                                hash=hash_bytes(b"abc")))
        w.add(b"/z", EntryRow(mode=REG, flags=make_flags(mode=REG, chunked=True), size=6))
        w.set_chunks(b"/z", [Chunk(0, 3, hash_bytes(b"abc")), Chunk(3, 3, hash_bytes(b"def"))])
        w.add(b"/a/b/c", EntryRow(mode=LNK, flags=12, size=3, symlink=b"abc"))
        w.add_nested(b"/n", hash_bytes(b"child", Algorithm.SHAKE128), 4096)
        w.finalize(revision=1, last_modified=1, ttl=240, vacuum=False)
        w.close()
    return path.read_bytes()


@settings(FUZZ, max_examples=250)
@given(how=st.sampled_from(["truncate", "page", "flip"]), where=st.floats(0, 1),
       junk=st.binary(min_size=1, max_size=1024), count=st.integers(1, 12))
def test_truncated_and_corrupted_files_raise_only_cvmfs_errors(
        scratch: Path, how: str, where: float, junk: bytes, count: int) -> None:
    data = bytearray(valid_catalog_bytes(scratch))
    pos = int(where * (len(data) - 1))
    if how == "truncate":
        del data[pos:]
    elif how == "page":
        start = pos // 1024 * 1024
        data[start:start + len(junk)] = junk
    else:
        step = max(1, len(junk) // count)
        for i in range(count):
            data[(pos + i * 7919) % len(data)] = junk[(i * step) % len(junk)]
    path = scratch / "corrupt.db"
    path.write_bytes(bytes(data))
    Exerciser(tolerated_known_bugs()).run(path)


def test_uncorrupted_base_catalog_reads_cleanly(scratch: Path) -> None:
    """The corruption test's base file passes every call, so corruption is what it tests."""
    path = scratch / "clean.db"
    path.write_bytes(valid_catalog_bytes(scratch))
    ex = Exerciser({})
    assert ex.run(path) is not None
    with Catalog.open(path, what="clean") as cat:
        assert [e.name for e in cat.listing(b"")] == [b"a", b"n", b"z"]
        assert len(cat.chunks(b"/z")) == 2 and len(list(cat.all_chunk_hashes())) == 2
    assert len(ex.entries) > 6


# -- named malformations: the reader reports them as FormatError --------------------------------
def base_raw() -> RawCatalog:
    rows = []
    for path, mode, flags, h, size in ((b"", DIR, 1, None, 4096), (b"/f", REG, 4, b"\1" * 20, 3),
                                       (b"/c", REG, 68, None, 4)):
        parent = (0, 0) if not path else md5_pair(b"")
        rows.append([*md5_pair(path), *parent, 1, h, size, mode, 0, None, flags,
                     path[1:].decode(), "", 0, 0, None])
    m1, m2 = md5_pair(b"/c")
    return RawCatalog(
        properties=[("schema", "2.5"), ("schema_revision", "7")], catalog=rows,
        chunks=[[m1, m2, 0, 2, b"\2" * 20], [m1, m2, 2, 2, b"\3" * 20]],
        nested=[["/n", "ab" * 20, 100]],
        statistics=[(name, 0) for name in COUNTER_NAMES])


def with_change(table: str, index: int, column: int, value) -> RawCatalog:
    raw = base_raw()
    getattr(raw, table)[index][column] = value
    return raw


def _lookup_f(c: Catalog):
    return c.lookup(b"/f")


MALFORMED = [  # (id, catalog, call that must raise FormatError naming the catalog)
    ("text-in-mode", with_change("catalog", 1, 7, "abc"), _lookup_f),
    ("null-flags", with_change("catalog", 1, 10, None), _lookup_f),
    ("hash-19-bytes", with_change("catalog", 1, 5, b"\1" * 19), _lookup_f),
    ("hash-as-integer", with_change("catalog", 1, 5, 12345), _lookup_f),
    ("flags-max-int64", with_change("catalog", 1, 10, 2**63 - 1), _lookup_f,
     "unnamed-algorithm-error"),
    ("flags-algorithm-7", with_change("catalog", 1, 10, 4 | 7 << 8), _lookup_f,
     "unnamed-algorithm-error"),
    ("dir-and-file-flags", with_change("catalog", 1, 10, 5), _lookup_f),
    ("file-without-hash", with_change("catalog", 1, 5, None), _lookup_f),
    ("xattr-bad-version", with_change("catalog", 1, 15, b"\2\0"), lambda c: c.lookup(b"/f")
     .xattrs(what="fuzz")),
    ("chunks-gap", with_change("chunks", 1, 2, 3), lambda c: c.chunks(b"/c")),
    ("chunks-short", with_change("chunks", 1, 3, 1), lambda c: c.chunks(b"/c")),
    ("chunks-zero-size", with_change("chunks", 0, 3, 0), lambda c: c.chunks(b"/c")),
    ("chunk-hash-wrong-length", with_change("chunks", 0, 4, b"\2" * 21),
     lambda c: c.chunks(b"/c")),
    ("chunk-hash-wrong-length-scan", with_change("chunks", 0, 4, b"\2" * 21),
     lambda c: list(c.all_chunk_hashes())),
    ("nested-garbage-hash", with_change("nested", 0, 1, "not a hash"),
     lambda c: c.nested_catalogs()),
    ("nested-garbage-hash-find", with_change("nested", 0, 1, "zz" * 20),
     lambda c: c.find_nested(b"/n/x")),
    ("file-hash-wrong-length-scan", with_change("catalog", 1, 5, b"\1" * 25),
     lambda c: list(c.all_file_hashes())),
]


@pytest.mark.parametrize(("raw", "call"), [
    pytest.param(r, c, id=i, marks=xfail_if_known(bug[0]) if bug else ())
    for i, r, c, *bug in MALFORMED])
def test_named_malformations_raise_format_error(scratch: Path, raw: RawCatalog,
                                                call: Callable) -> None:
    with Catalog.open(raw.write(scratch / "named.db"), what="fuzz") as cat, \
            pytest.raises(FormatError, match="fuzz"):
        call(cat)


@pytest.mark.parametrize("schema", ["2.2", "abc", "2.0", "2.3", "3", "2.6", "nan", "inf"])
def test_unsupported_schema_property_is_rejected(scratch: Path, schema: str) -> None:
    raw = base_raw()
    raw.properties = [("schema", schema), ("schema_revision", "7")]
    with pytest.raises(FormatError, match="schema"):
        Catalog.open(raw.write(scratch / "schema.db"), what="fuzz")


def test_missing_statistics_rows_read_as_zero(scratch: Path) -> None:
    raw = base_raw()
    raw.statistics = [("self_dir", 7)]
    with Catalog.open(raw.write(scratch / "stats.db"), what="fuzz") as cat:
        assert cat.statistics() == {**dict.fromkeys(COUNTER_NAMES, 0), "self_dir": 7}


def test_truncated_file_fails_with_format_error(scratch: Path) -> None:
    data = valid_catalog_bytes(scratch)
    path = scratch / "short.db"
    path.write_bytes(data[:3 * 1024 + 100])
    with pytest.raises(FormatError, match="fuzz"), Catalog.open(path, what="fuzz") as cat:
        for p in PATHS:  # any of the calls may notice
            cat.lookup(p)
            cat.listing(p)
        list(cat.entries())


# -- known reader bugs: minimal reproducers -----------------------------------------------------


def _corrupt_table_page(raw: RawCatalog, table: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        raw.write(path)
        conn = sqlite3.connect(path)
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?",
                               (table,)).fetchone()
        conn.close()
        data = bytearray(path.read_bytes())
        data[(root - 1) * 1024:root * 1024] = b"\x0d" + b"\xff" * 1023
        path.write_bytes(bytes(data))
        return path
    return make


def _patch_bytes(raw: RawCatalog, old: bytes, new: bytes) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        data = raw.write(path).read_bytes()
        assert data.count(old) == 1 and len(old) == len(new)
        path.write_bytes(data.replace(old, new))
        return path
    return make


def _writer(raw: RawCatalog) -> Callable[[Path], Path]:
    return raw.write


REPRODUCERS = [  # (bug id, case id, file maker, call)
    ("nonfinite-real", "lookup-mtime-inf", _writer(with_change("catalog", 1, 8, INF)), _lookup_f),
    ("nonfinite-real", "chunks-size-inf", _writer(with_change("chunks", 1, 3, INF)),
     lambda c: c.chunks(b"/c")),
    ("nonfinite-real", "nested-size-inf", _writer(with_change("nested", 0, 2, INF)),
     lambda c: c.nested_catalogs()),
    ("nonfinite-real", "statistics-inf",
     _writer(RawCatalog([("schema", "2.5")], [], [], [], [("self_dir", INF)])),
     lambda c: c.statistics()),
    ("chunk-size-type", "chunks-size-null", _writer(with_change("chunks", 1, 3, None)),
     lambda c: c.chunks(b"/c")),
    ("chunk-size-type", "chunks-size-text", _writer(with_change("chunks", 1, 3, "abc")),
     lambda c: c.chunks(b"/c")),
    ("scan-column-types", "chunk-scan-flags-null", _writer(with_change("catalog", 2, 10, None)),
     lambda c: list(c.all_chunk_hashes())),
    ("scan-column-types", "chunk-scan-size-text", _writer(with_change("chunks", 1, 3, "abc")),
     lambda c: list(c.all_chunk_hashes())),
    ("scan-column-types", "file-scan-flags-null", _writer(with_change("catalog", 1, 10, None)),
     lambda c: list(c.all_file_hashes())),
    ("scan-column-types", "file-scan-size-text", _writer(with_change("catalog", 1, 6, "abc")),
     lambda c: list(c.all_file_hashes())),
    ("nested-size-type", "nested-size-text", _writer(with_change("nested", 0, 2, "abc")),
     lambda c: c.nested_catalogs()),
    ("statistics-types", "statistics-null",
     _writer(RawCatalog([("schema", "2.5")], [], [], [], [("self_dir", None)])),
     lambda c: c.statistics()),
    ("statistics-types", "statistics-text",
     _writer(RawCatalog([("schema", "2.5")], [], [], [], [("self_dir", "many")])),
     lambda c: c.statistics()),
    ("statistics-types", "statistics-name-not-utf8",
     _writer(RawCatalog([("schema", "2.5")], [], [], [], [(RawText(b"\xff"), 1)])),
     lambda c: c.statistics()),
    ("xattr-non-blob", "xattr-real", _writer(with_change("catalog", 1, 15, 1.5)),
     lambda c: c.lookup(b"/f").xattrs(what="fuzz")),
    ("xattr-non-blob", "xattr-negative-int", _writer(with_change("catalog", 1, 15, -1)),
     lambda c: c.lookup(b"/f").xattrs(what="fuzz")),
    ("unwrapped-database-error", "corrupt-statistics-page",
     _corrupt_table_page(base_raw(), "statistics"), lambda c: c.statistics()),
    ("unwrapped-database-error", "corrupt-nested-page",
     _corrupt_table_page(base_raw(), "nested_catalogs"),
     lambda c: c.find_nested(b"/n/x")),
    ("column-name-utf8", "catalog-column-not-utf8",
     _patch_bytes(base_raw(), b"mtimens INTEGER", b"mtimen\xff INTEGER"),
     _lookup_f),
    ("column-name-utf8", "nested-column-not-utf8",
     _patch_bytes(base_raw(), b"sha1 TEXT, size INTEGER, CONSTRAINT pk_nested",
                  b"sha1 TEXT, siz\xff INTEGER, CONSTRAINT pk_nested"),
     lambda c: c.nested_catalogs()),
]


@pytest.mark.parametrize(("make", "call"), [
    pytest.param(m, c, id=f"{bug}:{case}", marks=xfail_if_known(bug))
    for bug, case, m, c in REPRODUCERS])
def test_former_reader_bug_reproducers_return_or_raise_cvmfs_errors(
        scratch: Path, make: Callable, call: Callable) -> None:
    """Each case once leaked another exception type; now the reader either tolerates the
    oddity (e.g. an unknown counter name, an unrecognised column) or names it."""
    path = make(scratch / "repro.db")
    try:
        with Catalog.open(path, what="fuzz") as cat:
            call(cat)
    except CvmfsError as e:
        assert "fuzz" in str(e)
