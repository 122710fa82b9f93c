"""Hostile and corrupt catalogs (and history/reflog files): one clear CatalogError, nothing run."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from pycvmfs.errors import CatalogError, FormatError
from pycvmfs.format.catalog import Catalog
from pycvmfs.format.catalog_writer import CatalogWriter, EntryRow
from pycvmfs.format.dirent import make_flags
from pycvmfs.format.hashes import Algorithm, hash_bytes, md5_pair
from pycvmfs.format.history import History
from pycvmfs.format.reflog import Reflog

DIR, REG, LNK = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777
FILE_FLAGS = make_flags(mode=REG, has_hash=True)
CHILD = hash_bytes(b"child catalog")


def write_catalog(path: Path, *, root_prefix: str = "", sql: tuple[str, ...] = (),
                  params: tuple = ()) -> Path:
    """A small valid catalog (``/d/f``, ``/d/g``, ``/n`` a nested mount point), then ``sql``."""
    top = root_prefix.encode()
    w = CatalogWriter.create(path, what="base", root_prefix=top)
    w.add(top, EntryRow(mode=DIR, flags=1 | (32 if top else 0), size=4096, linkcount=4))
    w.add(top + b"/d", EntryRow(mode=DIR, flags=1, size=4096, linkcount=2))
    for name in (b"f", b"g"):
        w.add(top + b"/d/" + name, EntryRow(mode=REG, flags=FILE_FLAGS, size=3,
                                            hash=hash_bytes(name)))
    w.add(top + b"/n", EntryRow(mode=DIR, flags=3, size=4096, linkcount=2))
    w.add_nested(top + b"/n", CHILD, 4096)
    w.finalize(revision=1, last_modified=1, ttl=240, vacuum=False)
    w.close()
    if sql:
        conn = sqlite3.connect(path)
        for statement in sql:
            conn.execute(statement, params if "?" in statement else ())
        conn.commit()
        conn.close()
    return path


def test_base_catalog_reads_cleanly(tmp_path: Path) -> None:
    """What the hostile variants start from: every call below succeeds on it."""
    with Catalog.open(write_catalog(tmp_path / "c.db"), what="base catalog") as cat:
        assert [e.name for e in cat.listing(b"/d")] == [b"f", b"g"]
        assert cat.lookup(b"/d/f").name == b"f"
        assert [r.path for r in cat.nested_catalogs()] == [b"/n"]
        cat.check_mounted(b"")


# -- schema objects: refused before the first query runs ----------------------------------------
SCHEMA_OBJECTS = {
    "view": "CREATE VIEW v AS SELECT * FROM catalog",
    "trigger": "CREATE TRIGGER t AFTER INSERT ON properties BEGIN DELETE FROM catalog; END",
    "virtual-table": "CREATE VIRTUAL TABLE catalog2 USING rtree(id, a, b)",
    "unknown-table": "CREATE TABLE extra (x)",
    "expression-index": "CREATE INDEX idx_x ON catalog (abs(size))",
    "partial-index": "CREATE INDEX idx_p ON catalog (size) WHERE size > 0",
    "generated-column": "ALTER TABLE statistics ADD COLUMN g INTEGER AS (value * 2)",
}


@pytest.mark.parametrize("kind", sorted(SCHEMA_OBJECTS))
def test_schema_objects_the_format_lacks_are_refused(tmp_path: Path, kind: str) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(SCHEMA_OBJECTS[kind],))
    with pytest.raises(CatalogError, match=r"^hostile catalog 1234C: .*(not part of the format|"
                                           r"not a plain table|plain columns|generated)"):
        Catalog.open(path, what="hostile catalog 1234C")


def test_a_view_never_runs_its_sql(tmp_path: Path) -> None:
    """A view shadowing nothing still costs a query if SQLite ever ran it: refused first."""
    path = write_catalog(tmp_path / "c.db", sql=(
        "CREATE VIEW slow AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
        "SELECT i FROM n",))
    with pytest.raises(CatalogError, match="view 'slow'"):
        Catalog.open(path, what="c")


def test_the_stock_index_and_autoindexes_are_accepted(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(
        "CREATE INDEX IF NOT EXISTS idx_two ON chunks (md5path_1, md5path_2 DESC)",))
    with Catalog.open(path, what="c") as cat:
        assert cat.lookup(b"/d/g") is not None


def test_corrupt_pages_give_a_catalog_error_naming_the_catalog(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db")
    data = bytearray(path.read_bytes())
    data[1024 * 2:1024 * 4] = b"\xa5" * 2048  # two b-tree pages of tables or indexes
    path.write_bytes(bytes(data))
    with pytest.raises(CatalogError, match=r"^broken catalog 99C: "), \
            Catalog.open(path, what="broken catalog 99C") as cat:
        for p in (b"", b"/d", b"/n"):
            cat.listing(p)
            cat.lookup(p)
        cat.nested_catalogs()
        cat.max_rowid()
        cat.statistics()


@pytest.mark.parametrize("database", ["history", "reflog"])
def test_history_and_reflog_refuse_triggers(tmp_path: Path, database: str) -> None:
    path = tmp_path / f"{database}.db"
    if database == "history":
        History.create(path, fqrn="x.example.org").close()
        opener = History.open
    else:
        Reflog.create(path, fqrn="x.example.org").close()
        opener = Reflog.open
    conn = sqlite3.connect(path)
    conn.execute("CREATE TRIGGER t BEFORE DELETE ON properties BEGIN SELECT 1; END")
    conn.commit()
    conn.close()
    for writable in (False, True):
        with pytest.raises(FormatError, match=f"^{database} x: trigger 't'"):
            opener(path, what=f"{database} x", writable=writable)


# -- entries ------------------------------------------------------------------------------------
def _set(column: str, value: object, path: bytes = b"/d/f") -> str:
    m1, m2 = md5_pair(path)
    return (f"UPDATE catalog SET {column} = {value} WHERE md5path_1 = {m1} AND "
            f"md5path_2 = {m2}")


BAD_ENTRIES = {  # (change, message) for /d/f, read through listing("/d") and lookup("/d/f")
    "nul-in-name": (_set("name", "CAST(X'66006F' AS TEXT)"), "not one path component"),
    "slash-in-name": (_set("name", "'x/y'"), "not one path component"),
    "dot-dot-name": (_set("name", "'..'"), "not one path component"),
    "dot-name": (_set("name", "'.'"), "not one path component"),
    "mode-out-of-range": (_set("mode", 0o100644 | 1 << 20), "mode 0o4100644"),
    "mode-unknown-type": (_set("mode", 0o644), "mode 0o644, which is not a regular file mode"),
    "mode-dir-for-file": (_set("mode", DIR), "which is not a regular file mode"),
    "mode-negative": (_set("mode", -1), "mode -0o1"),
    "size-negative": (_set("size", -5), "negative size -5"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_malformed_entries_are_refused_naming_catalog_and_path(tmp_path: Path, kind: str) -> None:
    change, message = BAD_ENTRIES[kind]
    path = write_catalog(tmp_path / "c.db", sql=(change,))
    with Catalog.open(path, what="catalog 77C") as cat:
        with pytest.raises(CatalogError, match=f"^catalog 77C: .*{message}.*in directory '/d'"):
            cat.listing(b"/d")
        with pytest.raises(CatalogError, match=f"^catalog 77C: .*{message}.*at '/d/f'"):
            cat.lookup(b"/d/f")
        assert cat.lookup(b"/d/g").name == b"g"  # the rest of the catalog still reads


def test_an_entry_whose_name_is_not_its_path_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(_set("name", "'other'"),))
    with Catalog.open(path, what="c") as cat, \
            pytest.raises(CatalogError, match=r"^c: entry '/d/f' is named 'other'"):
        cat.lookup(b"/d/f")


def test_a_name_twice_in_one_listing_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(_set("name", "'f'", b"/d/g"),))
    with Catalog.open(path, what="c") as cat, \
            pytest.raises(CatalogError, match=r"^c: directory '/d' lists 'f' twice"):
        cat.listing(b"/d")


def test_an_unnamed_child_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(_set("name", "''", b"/d/g"),))
    with Catalog.open(path, what="c") as cat, \
            pytest.raises(CatalogError, match=r"^c: directory '/d' has an entry without a name"):
        cat.listing(b"/d")


# -- nested catalogs ----------------------------------------------------------------------------
BAD_REFS = {  # root_prefix, nested_catalogs path, message
    "own-mount-point": ("/top", "/top", "not a canonical path below the catalog's own root"),
    "ancestor": ("/top/sub", "/top", "not a canonical path below"),
    "repository-root": ("/top", "/", "not a canonical path below"),
    "outside-subtree": ("/top", "/other/n", "not a canonical path below"),
    "sibling-prefix": ("/top", "/topx/n", "not a canonical path below"),
    "dot-dot": ("/top", "/top/n/../..", "not a canonical path below"),
    "empty-component": ("/top", "/top//n", "not a canonical path below"),
    "nul": ("/top", "/top/a\0b", "not a canonical path below"),
}


@pytest.mark.parametrize("kind", sorted(BAD_REFS))
def test_nested_catalogs_outside_the_subtree_are_refused(tmp_path: Path, kind: str) -> None:
    prefix, ref, message = BAD_REFS[kind]
    path = write_catalog(tmp_path / "c.db", root_prefix=prefix, sql=(
        "INSERT INTO nested_catalogs VALUES (CAST(? AS TEXT), 'ab', 0)",),
        params=(ref.encode(),))
    with Catalog.open(path, what="nested catalog 5C") as cat:
        with pytest.raises(CatalogError, match=f"^nested catalog 5C: nested_catalogs .*{message}"):
            cat.nested_catalogs()
        with pytest.raises(CatalogError, match=r"^nested catalog 5C: "):
            cat.find_nested(prefix.encode() + b"/n/x")


def test_a_nested_catalog_referencing_itself_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", root_prefix="/top")
    with Catalog.open(path, what="c", hash=CHILD) as cat, \
            pytest.raises(CatalogError, match=r"^c: nested_catalogs '/top/n' references the "
                                              "catalog itself"):
        cat.nested_catalogs()


def test_a_mount_point_listed_twice_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(
        f"INSERT INTO nested_catalogs VALUES ('/n/', '{hash_bytes(b'x', Algorithm.SHA1)}', 1)",))
    with Catalog.open(path, what="c") as cat, \
            pytest.raises(CatalogError, match=r"^c: nested_catalogs lists '/n' twice"):
        cat.nested_catalogs()


def test_a_mount_point_below_another_is_refused(tmp_path: Path) -> None:
    """It belongs to the catalog mounted above it: listed by both, walks would double."""
    path = write_catalog(tmp_path / "c.db", sql=(
        f"INSERT INTO nested_catalogs VALUES ('/n/m', '{hash_bytes(b'x', Algorithm.SHA1)}', 1)",
        f"INSERT INTO nested_catalogs VALUES ('/n-m', '{hash_bytes(b'y', Algorithm.SHA1)}', 1)"))
    with Catalog.open(path, what="c") as cat, \
            pytest.raises(CatalogError, match=r"^c: nested_catalogs '/n/m' is below '/n', "
                                              "another of its mount points"):
        cat.nested_catalogs()


@pytest.mark.parametrize("prefix", ["top", "/top/../x", "/a//b"])
def test_a_malformed_root_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    path = write_catalog(tmp_path / "c.db", sql=(
        "INSERT OR REPLACE INTO properties VALUES ('root_prefix', ?)",), params=(prefix,))
    with Catalog.open(path, what="c") as cat, \
            pytest.raises(CatalogError, match=r"^c: root_prefix .* is not a canonical path"):
        cat.check_mounted(b"/top")


def test_a_catalog_mounted_elsewhere_than_its_root_prefix_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path / "c.db", root_prefix="/top")
    with Catalog.open(path, what="c") as cat:
        cat.check_mounted(b"/top")
        with pytest.raises(CatalogError, match=r"^c: root_prefix '/top' does not match its "
                                               "mount point '/top/n'"):
            cat.check_mounted(b"/top/n")
