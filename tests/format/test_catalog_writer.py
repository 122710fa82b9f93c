"""Tests of the catalog writer: stock schema and header, reader round trips, counters."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from pycvmfs.errors import FormatError
from pycvmfs.format.catalog import COUNTER_NAMES, Catalog, Chunk, NestedRef
from pycvmfs.format.catalog_writer import DDL, CatalogWriter, EntryRow
from pycvmfs.format.compression import Compression, decompress
from pycvmfs.format.dirent import Flags, expand_symlink, make_flags
from pycvmfs.format.hashes import Algorithm, ContentHash, hash_bytes, md5_pair
from pycvmfs.format.xattr import encode_xattrs

GOLDEN_ROOT = "434e2742ad19baa1f5be5ffcb3c755ecabae7562"
GOLDEN_NESTED = "428ecd9b6fb54a4257cf72cebbf89af58e49799e"

DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644


@pytest.fixture(scope="module")
def spec_ddl(golden_dir: Path) -> list[str]:
    """The seven statements of a schema 2.5 catalog as the stock server writes them."""
    text = (golden_dir.parent / "catalog-schema-2.5.sql").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("--")]


def unpack_catalog(repo: Path, text_hash: str, dest: Path) -> Path:
    raw = (repo / "data" / text_hash[:2] / (text_hash[2:] + "C")).read_bytes()
    dest.write_bytes(decompress(raw))
    return dest


@pytest.fixture(scope="module")
def golden_catalogs(golden_repo: Path, tmp_path_factory) -> dict[str, Path]:
    """The three golden catalogs (/, /nested, /nested/deeper) decompressed."""
    d = tmp_path_factory.mktemp("golden-catalogs")
    out = {"": unpack_catalog(golden_repo, GOLDEN_ROOT, d / "root.db"),
           "/nested": unpack_catalog(golden_repo, GOLDEN_NESTED, d / "nested.db")}
    with Catalog.open(out["/nested"], what="golden /nested") as nested:
        (deeper,) = nested.nested_catalogs()
    assert deeper.path == b"/nested/deeper"
    out["/nested/deeper"] = unpack_catalog(golden_repo, str(deeper.hash), d / "deeper.db")
    return out


def master_rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    finally:
        conn.close()


def new_writer(tmp_path: Path, name: str = "cat.db", prefix: bytes = b"") -> CatalogWriter:
    return CatalogWriter.create(tmp_path / name, root_prefix=prefix, what=name)


def dir_row(**kw) -> EntryRow:
    return EntryRow(mode=DIR, flags=make_flags(mode=DIR, **kw), size=4096, mtime=1700000000,
                    linkcount=2)


def file_row(content: bytes, algo: Algorithm = Algorithm.SHA1,
             comp: Compression = Compression.ZLIB, **kw) -> EntryRow:
    return EntryRow(mode=REG, flags=make_flags(mode=REG, has_hash=True, algorithm=algo,
                                               compression=comp),
                    size=len(content), mtime=1700000001, hash=hash_bytes(content, algo), **kw)


# -- schema and header ------------------------------------------------------------------------
def test_ddl_is_the_format_document_text_verbatim(spec_ddl: list[str]) -> None:
    assert list(DDL) == spec_ddl
    assert "xattr BLOB,  CONSTRAINT" in DDL[1]  # the double spaces survived


def test_sqlite_master_equals_the_golden_root_catalog(tmp_path: Path, spec_ddl: list[str],
                                                      golden_catalogs: dict[str, Path]) -> None:
    new_writer(tmp_path).close()
    ours = master_rows(tmp_path / "cat.db")
    assert ours == master_rows(golden_catalogs[""])
    assert [r[3] for r in ours if r[3] is not None] == spec_ddl


def test_header_has_page_size_1024_and_rollback_journal(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    w.add(b"", dir_row())
    w.finalize(revision=1, last_modified=1)
    w.close()
    data = (tmp_path / "cat.db").read_bytes()
    assert data[:16] == b"SQLite format 3\0"
    assert int.from_bytes(data[16:18], "big") == 1024
    assert data[18:20] == b"\x01\x01"  # rollback journal, not WAL
    assert len(data) % 1024 == 0
    assert not (tmp_path / "cat.db-wal").exists() and not (tmp_path / "cat.db-journal").exists()
    conn = sqlite3.connect(tmp_path / "cat.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    conn.close()


def test_every_property_is_text_and_stock_keys_are_written(tmp_path: Path) -> None:
    w = new_writer(tmp_path, prefix=b"/sw/v1")
    w.add(b"/sw/v1", dir_row(nested_root=True))
    prev = hash_bytes(b"old catalog", Algorithm.SHAKE128)
    w.finalize(revision=3, last_modified=1795553323, previous_revision=prev,
               extra_properties={"volatile": 1})
    w.close()
    conn = sqlite3.connect(tmp_path / "cat.db")
    rows = conn.execute("SELECT key, value, typeof(key), typeof(value) FROM properties").fetchall()
    conn.close()
    assert {(t1, t2) for _, _, t1, t2 in rows} == {("text", "text")}
    assert {k: v for k, v, _, _ in rows} == {
        "schema": "2.5", "schema_revision": "7", "root_prefix": "/sw/v1",
        "last_modified": "1795553323", "revision": "3", "previous_revision": str(prev),
        "volatile": "1"}


def test_finalize_writes_null_previous_revision_and_ttl_only_when_given(tmp_path: Path) -> None:
    w = new_writer(tmp_path, "a.db")
    w.add(b"", dir_row())
    w.finalize(revision=1, last_modified=5, ttl=240)
    w.close()
    props = Catalog.open(tmp_path / "a.db", what="a").properties
    assert props["previous_revision"] == "0" * 40 and props["TTL"] == "240"
    assert "root_prefix" not in props

    w = new_writer(tmp_path, "mkfs.db")
    w.add(b"", dir_row())
    w.finalize(revision=0, last_modified=5, record_previous=False)
    w.close()
    props = Catalog.open(tmp_path / "mkfs.db", what="mkfs").properties
    assert set(props) == {"schema", "schema_revision", "revision", "last_modified"}


# -- round trip through the reader -------------------------------------------------------------
def build_every_kind(tmp_path: Path) -> tuple[Path, dict[bytes, EntryRow], dict]:
    """One root catalog with an entry of every kind; returns the rows and the chunk list."""
    rows: dict[bytes, EntryRow] = {}
    big = bytes(range(256)) * 40  # 10240 bytes in three chunks
    chunks = [Chunk(0, 4096, hash_bytes(big[:4096])), Chunk(4096, 4096, hash_bytes(big[4096:8192])),
              Chunk(8192, 2048, hash_bytes(big[8192:]))]
    xattrs = {b"user.comment": b"golden fixture", b"user.empty": b"", b"user.binary": bytes(16)}
    variant = b"$(ARCH:-x86_64)/lib/$(OS)"
    chr_mode = stat.S_IFCHR | 0o620
    rows[b""] = dir_row()
    rows[b"/dir"] = dir_row()
    rows[b"/dir/sub"] = dir_row()
    rows[b"/dir/file.txt"] = file_row(b"hello\n", uid=1000, gid=100)
    rows[b"/dir/rmd.bin"] = file_row(b"ripemd", Algorithm.RMD160, Compression.NONE)
    rows[b"/dir/shake.bin"] = file_row(b"shake", Algorithm.SHAKE128)
    rows[b"/dir/raw-none"] = file_row(b"plain", comp=Compression.NONE)
    rows[b"/big.dat"] = EntryRow(mode=REG, flags=make_flags(mode=REG, chunked=True),
                                 size=len(big), mtime=7)
    rows[b"/link"] = EntryRow(mode=stat.S_IFLNK | 0o777, flags=make_flags(mode=stat.S_IFLNK),
                              size=len(variant), symlink=variant, mtime=8)
    rows[b"/fifo"] = EntryRow(mode=stat.S_IFIFO | 0o644, flags=make_flags(mode=stat.S_IFIFO))
    rows[b"/tty0"] = EntryRow(mode=chr_mode, flags=make_flags(mode=chr_mode),
                              size=os.makedev(4, 64))
    rows[b"/.hidden"] = dir_row(hidden=True)
    rows[b"/hl"] = dir_row()
    rows[b"/hl/a"] = file_row(b"same", hardlink_group=1, linkcount=2)
    rows[b"/hl/b"] = file_row(b"same", hardlink_group=1, linkcount=2)
    rows[b"/xattr.txt"] = file_row(b"x", xattr=encode_xattrs(xattrs, what="t"))
    rows[b"/nested"] = dir_row(nested_mountpoint=True)
    rows[b"/ns"] = EntryRow(mode=REG, flags=make_flags(mode=REG, has_hash=True), size=1,
                            mtime=9, mtimens=123456789, hash=hash_bytes(b"n"))
    rows[b"/caf\xc3\xa9 \xff\xfe"] = file_row(b"raw name")  # not valid UTF-8: raw bytes
    w = new_writer(tmp_path)
    w.add_many(rows.items())
    w.set_chunks(b"/big.dat", chunks)
    w.add_nested(b"/nested", hash_bytes(b"nested catalog"), 16384)
    assert w.fix_directory_linkcounts() == 2  # "" (3 subdirs) and /dir (1 subdir)
    w.finalize(revision=2, last_modified=1700000100, ttl=240)
    w.close()
    return tmp_path / "cat.db", rows, {"chunks": chunks, "xattrs": xattrs, "variant": variant}


def test_every_entry_kind_round_trips_through_the_reader(tmp_path: Path) -> None:
    path, rows, extra = build_every_kind(tmp_path)
    with Catalog.open(path, what="round trip") as cat:
        for p, row in rows.items():
            e = cat.lookup(p)
            assert e is not None, p
            assert e.name == p.rsplit(b"/", 1)[-1]
            assert (e.mode, e.size, e.mtime, e.mtimens, e.flags, e.hash, e.symlink, e.uid,
                    e.gid, e.hardlink_group) == (
                row.mode, row.size, row.mtime, row.mtimens, row.flags, row.hash, row.symlink,
                row.uid, row.gid, row.hardlink_group), p
            assert e.md5path == md5_pair(p)
            assert e.parent == ((0, 0) if p == b"" else md5_pair(p[:p.rfind(b"/")]))
            assert e.xattr_blob == row.xattr
        assert cat.lookup(b"").linkcount == 2 + 4  # /dir, /.hidden, /hl, /nested
        assert cat.lookup(b"/dir").linkcount == 3
        assert cat.lookup(b"/hl/a").linkcount == 2 and cat.lookup(b"/fifo").linkcount == 1
        assert [e.name for e in cat.listing(b"")] == sorted(
            p[1:] for p in rows if p.count(b"/") == 1)
        assert cat.lookup(b"/.hidden").is_hidden
        assert cat.lookup(b"/dir/rmd.bin").hash.algorithm is Algorithm.RMD160
        assert cat.lookup(b"/dir/rmd.bin").compression is Compression.NONE
        assert cat.lookup(b"/dir/rmd.bin").flags == 2308
        assert cat.lookup(b"/dir/shake.bin").flags == 516
        assert cat.lookup(b"/dir/raw-none").flags == 2052
        assert cat.lookup(b"/big.dat").flags == 68 and cat.lookup(b"/big.dat").hash is None
        assert cat.chunks(b"/big.dat") == extra["chunks"]
        link = cat.lookup(b"/link")
        assert link.flags == 12 and link.symlink == extra["variant"]
        assert expand_symlink(link.symlink, {}) == b"x86_64/lib/"
        tty = cat.lookup(b"/tty0")
        assert tty.file_type == "chardev" and tty.rdev == os.makedev(4, 64) and tty.flags == 20
        assert cat.lookup(b"/fifo").file_type == "fifo"
        assert cat.lookup(b"/xattr.txt").xattrs(what="t") == extra["xattrs"]
        assert cat.lookup(b"/nested").is_nested_mountpoint
        assert cat.nested_catalogs() == [NestedRef(b"/nested", hash_bytes(b"nested catalog"),
                                                   16384)]
        assert cat.find_nested(b"/nested/x/y").path == b"/nested"
        assert cat.find_nested(b"/nestedx") is None
        assert cat.ttl == 240 and cat.revision == 2 and cat.previous_revision is None
        assert sorted(h.digest for h, _, _ in cat.all_chunk_hashes()) == sorted(
            c.hash.digest for c in extra["chunks"])
        file_hashes = {(h, c) for h, c, _ in cat.all_file_hashes()}
        assert (hash_bytes(b"ripemd", Algorithm.RMD160), Compression.NONE) in file_hashes
        assert (hash_bytes(b"shake", Algorithm.SHAKE128), Compression.ZLIB) in file_hashes
        assert cat.statistics() == {**dict.fromkeys(COUNTER_NAMES, 0),
                                    "self_regular": 10, "self_symlink": 1, "self_special": 2,
                                    "self_dir": 6, "self_nested": 1, "self_chunked": 1,
                                    "self_chunks": 3, "self_xattr": 1,
                                    "self_chunked_size": 10240,
                                    "self_file_size": 10240 + sum(
                                        len(x) for x in (b"hello\n", b"ripemd", b"shake",
                                                         b"plain", b"same", b"same", b"x",
                                                         b"n", b"raw name"))}
        assert cat.orphan_chunk_count() == 0


def test_columns_hold_stock_storage_types(tmp_path: Path) -> None:
    path, _, _ = build_every_kind(tmp_path)
    conn = sqlite3.connect(path)
    types = conn.execute(
        "SELECT DISTINCT typeof(md5path_1), typeof(md5path_2), typeof(parent_1), "
        "typeof(parent_2), typeof(hardlinks), typeof(size), typeof(mode), typeof(mtime), "
        "typeof(flags), typeof(name), typeof(symlink), typeof(uid), typeof(gid) "
        "FROM catalog").fetchall()
    assert types == [("integer",) * 9 + ("text", "text", "integer", "integer")]
    assert conn.execute("SELECT DISTINCT typeof(hash), length(hash) FROM catalog").fetchall() \
        in ([("null", None), ("blob", 20)], [("blob", 20), ("null", None)])
    assert conn.execute("SELECT count(*) FROM catalog WHERE mtimens IS NOT NULL").fetchone() \
        == (1,)
    assert conn.execute("SELECT name FROM catalog WHERE md5path_1=? AND md5path_2=?",
                        md5_pair(b"")).fetchone() == ("",)
    assert conn.execute("SELECT DISTINCT typeof(offset), typeof(size), typeof(hash), "
                        "length(hash) FROM chunks").fetchall() == [("integer", "integer",
                                                                     "blob", 20)]
    assert conn.execute("SELECT typeof(path), typeof(sha1), typeof(size) "
                        "FROM nested_catalogs").fetchall() == [("text", "text", "integer")]
    assert conn.execute("SELECT DISTINCT typeof(value) FROM statistics").fetchall() == \
        [("integer",)]
    counters = [r[0] for r in conn.execute("SELECT counter FROM statistics")]
    assert counters == sorted(COUNTER_NAMES)  # std::map order, like stock
    conn.close()


def test_nested_catalog_root_entry_has_parent_of_its_mount_point(tmp_path: Path) -> None:
    w = new_writer(tmp_path, prefix=b"/a/b")
    w.add(b"/a/b", dir_row(nested_root=True))
    w.add(b"/a/b/.cvmfscatalog", file_row(b""))
    with pytest.raises(FormatError, match="outside the catalog's root"):
        w.add(b"/a/bc", file_row(b""))
    w.finalize(revision=1, last_modified=1)
    w.close()
    with Catalog.open(tmp_path / "cat.db", what="nested") as cat:
        root = cat.lookup(b"/a/b")
        assert root.parent == md5_pair(b"/a") and root.name == b"b" and root.is_nested_root
        assert cat.root_prefix == b"/a/b"
        assert [e.name for e in cat.listing(b"/a/b")] == [b".cvmfscatalog"]


# -- modifying ----------------------------------------------------------------------------------
def test_open_modifies_the_previous_revision_in_place(tmp_path: Path) -> None:
    path, _, _ = build_every_kind(tmp_path)
    before = Catalog.open(path, what="before")
    old_rowid = before.lookup(b"/dir/file.txt").rowid
    before.close()
    w = CatalogWriter.open(path, what="rev3")
    w.replace(b"/dir/file.txt", file_row(b"changed\n"))
    w.remove(b"/big.dat")
    w.remove(b"/dir/sub")
    w.update_nested(b"/nested", hash_bytes(b"nested v2"), 20480)
    w.fix_directory_linkcounts()
    assert w.get(b"/dir/file.txt") == file_row(b"changed\n")
    prev = hash_bytes(b"rev2 catalog")
    w.finalize(revision=3, last_modified=1700000200, previous_revision=prev, ttl=240,
               vacuum=False)
    w.close()
    with Catalog.open(path, what="after") as cat:
        e = cat.lookup(b"/dir/file.txt")
        assert e.hash == hash_bytes(b"changed\n") and e.rowid == old_rowid
        assert cat.lookup(b"/big.dat") is None and cat.lookup(b"/dir/sub") is None
        assert cat.lookup(b"/dir").linkcount == 2
        assert cat.orphan_chunk_count() == 0 and list(cat.all_chunk_hashes()) == []
        assert cat.revision == 3 and cat.previous_revision == prev
        assert cat.nested_catalogs()[0].hash == hash_bytes(b"nested v2")
        stats = cat.statistics()
        assert (stats["self_chunked"], stats["self_chunks"], stats["self_dir"]) == (0, 0, 5)


def test_vacuum_compacts_sparse_row_ids(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    w.add(b"", dir_row())
    w.add_many((b"/f%03d" % i, file_row(b"%d" % i)) for i in range(200))
    w.commit()
    for i in range(100):
        w.remove(b"/f%03d" % i)
    assert w.needs_vacuum()
    w.finalize(revision=1, last_modified=1)
    assert not w.needs_vacuum()
    w.close()
    with Catalog.open(tmp_path / "cat.db", what="vacuumed") as cat:
        assert cat.max_rowid() == 101
        assert cat.lookup(b"/f150").hash == hash_bytes(b"150")
        assert cat.statistics()["self_regular"] == 100


def test_abort_discards_uncommitted_rows(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    w.add(b"", dir_row())
    w.commit()
    w.add(b"/gone", file_row(b"x"))
    w.abort()
    with Catalog.open(tmp_path / "cat.db", what="aborted") as cat:
        assert cat.lookup(b"") is not None and cat.lookup(b"/gone") is None


# -- misuse -------------------------------------------------------------------------------------
def test_duplicate_add_fails_and_adds_nothing_of_the_batch(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    w.add(b"", dir_row())
    w.add(b"/a", file_row(b"a"))
    with pytest.raises(FormatError, match=r"'/a'.*already present"):
        w.add_many([(b"/b", file_row(b"b")), (b"/a", file_row(b"a"))])
    assert w.get(b"/b") is None
    w.close()


@pytest.mark.parametrize("bad", [b"a", b"/a/", b"//a", b"/a\0b"])
def test_malformed_paths_are_rejected(tmp_path: Path, bad: bytes) -> None:
    w = new_writer(tmp_path)
    with pytest.raises(FormatError, match="not a catalog path"):
        w.add(bad, file_row(b""))
    w.abort()


def test_misuse_raises_format_error_naming_the_path(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    w.add(b"", dir_row())
    w.add(b"/d", dir_row())
    w.add(b"/d/f", file_row(b"abc"))
    w.add(b"/c", EntryRow(mode=REG, flags=make_flags(mode=REG, chunked=True), size=10))
    h = hash_bytes(b"abc")
    with pytest.raises(FormatError, match="do not name the algorithm"):
        w.add(b"/x", EntryRow(mode=REG, flags=make_flags(mode=REG, has_hash=True), size=3,
                              hash=hash_bytes(b"abc", Algorithm.SHAKE128)))
    with pytest.raises(FormatError, match=r"'/d'.*still has entries"):
        w.remove(b"/d")
    with pytest.raises(FormatError, match="'/nope'"):
        w.remove(b"/nope")
    with pytest.raises(FormatError, match="'/nope'"):
        w.replace(b"/nope", file_row(b""))
    with pytest.raises(FormatError, match="cover 6 bytes"):
        w.set_chunks(b"/c", [Chunk(0, 3, h), Chunk(3, 3, h)])
    with pytest.raises(FormatError, match="do not tile"):
        w.set_chunks(b"/c", [Chunk(0, 3, h), Chunk(4, 6, h)])
    with pytest.raises(FormatError, match="not chunked"):
        w.set_chunks(b"/d/f", [Chunk(0, 3, h)])
    w.add_nested(b"/n", h, 1)
    with pytest.raises(FormatError, match="registered already"):
        w.add_nested(b"/n", h, 1)
    w.remove_nested(b"/n")
    with pytest.raises(FormatError, match="no nested catalog"):
        w.remove_nested(b"/n")
    with pytest.raises(FormatError, match="nested mount point"):
        w.recount_dir_links(b"/d/f")
    w.close()


def test_open_refuses_other_schemas(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    w.set_property("schema", "2.4")
    w.close()
    with pytest.raises(FormatError, match="cannot be modified"):
        CatalogWriter.open(tmp_path / "cat.db", what="old")


# -- link counts and nested catalogs ------------------------------------------------------------
def test_link_counts_of_mount_point_follow_the_child_catalog(tmp_path: Path) -> None:
    parent = new_writer(tmp_path, "parent.db")
    parent.add(b"", dir_row())
    parent.add(b"/p", dir_row(nested_mountpoint=True))
    child = new_writer(tmp_path, "child.db", prefix=b"/p")
    child.add(b"/p", dir_row(nested_root=True))
    child.add_many((b"/p/s%d" % i, dir_row()) for i in range(3))
    child.add(b"/p/s0/t", dir_row())
    child.fix_directory_linkcounts()
    assert child.recount_dir_links(b"/p") == 5 and child.recount_dir_links(b"/p/s0") == 3
    parent.fix_directory_linkcounts()
    assert parent.get(b"/p").linkcount == 2  # untouched: no children in the parent
    parent.replace(b"/p", child.get(b"/p").as_mountpoint())
    child_counters = child.finalize(revision=1, last_modified=1)
    parent.add_nested(b"/p", hash_bytes(b"child"), 4096)
    counters = parent.finalize(revision=1, last_modified=1, children=[child_counters])
    child.close()
    parent.close()
    mp = Catalog.open(tmp_path / "parent.db", what="parent").lookup(b"/p")
    root = Catalog.open(tmp_path / "child.db", what="child").lookup(b"/p")
    assert mp.linkcount == root.linkcount == 5
    assert (mp.flags, root.flags) == (Flags.DIR | Flags.NESTED_MOUNTPOINT,
                                      Flags.DIR | Flags.NESTED_ROOT)
    assert (counters["self_dir"], counters["subtree_dir"], counters["self_nested"]) == (2, 5, 1)


# -- counters against the golden repository -----------------------------------------------------
def rebuild(catalog: Catalog, dest: Path) -> CatalogWriter:
    """Copy every row, chunk list and nested reference of ``catalog`` with the writer."""
    entries = list(catalog.entries())
    by_key = {e.md5path: e for e in entries}
    paths: dict[tuple[int, int], bytes] = {}

    def path_of(e) -> bytes:
        if e.md5path not in paths:
            up = by_key.get(e.parent)
            paths[e.md5path] = (catalog.root_prefix if up is None
                                else path_of(up) + b"/" + e.name)
        return paths[e.md5path]

    items = [(path_of(e), EntryRow.from_entry(e)) for e in entries]
    assert all(md5_pair(p) == e.md5path for (p, _), e in zip(items, entries, strict=True))
    w = CatalogWriter.create(dest, root_prefix=catalog.root_prefix, what=str(dest))
    w.add_many(items)
    for p, row in items:
        if row.flags & Flags.CHUNKED:
            w.set_chunks(p, catalog.chunks(p))
    for ref in catalog.nested_catalogs():
        w.add_nested(ref.path, ref.hash, ref.size)
    return w


@pytest.mark.parametrize("mount", ["", "/nested", "/nested/deeper"])
def test_counters_reproduce_the_golden_catalogs(tmp_path: Path, golden_catalogs: dict[str, Path],
                                                mount: str) -> None:
    child = {"": "/nested", "/nested": "/nested/deeper"}.get(mount)
    children = []
    if child:
        with Catalog.open(golden_catalogs[child], what=f"golden {child}") as c:
            children.append(c.statistics())
    with Catalog.open(golden_catalogs[mount], what=f"golden {mount or '/'}") as golden:
        stored = golden.statistics()
        w = rebuild(golden, tmp_path / "rebuilt.db")
    counters = w.compute_statistics(children)
    assert counters == stored
    assert stored["self_regular"] > 0 and (stored["subtree_dir"] > 0) == bool(child)
    assert w.fix_directory_linkcounts() == 0  # stock link counts are what we compute
    w.close()


def test_golden_rebuild_round_trips_every_row(tmp_path: Path,
                                              golden_catalogs: dict[str, Path]) -> None:
    with Catalog.open(golden_catalogs[""], what="golden /") as golden:
        w = rebuild(golden, tmp_path / "rebuilt.db")
        w.finalize(revision=golden.revision, last_modified=golden.last_modified,
                   previous_revision=golden.previous_revision, ttl=golden.ttl,
                   children=[Catalog.open(golden_catalogs["/nested"], what="n").statistics()])
        w.close()
        with Catalog.open(tmp_path / "rebuilt.db", what="rebuilt") as ours:
            key = lambda e: (e.md5path, e.parent, e.name, e.mode, e.size, e.mtime,  # noqa: E731
                             e.mtimens, e.flags, e.hash, e.symlink, e.uid, e.gid,
                             e.hardlink_group, e.linkcount, e.xattr_blob)
            assert sorted(map(key, ours.entries())) == sorted(map(key, golden.entries()))
            assert ours.statistics() == golden.statistics()
            assert ours.properties == golden.properties
            assert ours.nested_catalogs() == golden.nested_catalogs()
            assert sorted(ours.all_chunk_hashes(), key=str) == sorted(
                golden.all_chunk_hashes(), key=str)


def test_entry_row_mount_point_and_root_swap_only_nested_flags() -> None:
    row = dir_row(hidden=True)
    assert row.as_mountpoint().flags == Flags.DIR | Flags.HIDDEN | Flags.NESTED_MOUNTPOINT
    assert row.as_mountpoint().as_nested_root().flags == (Flags.DIR | Flags.HIDDEN
                                                          | Flags.NESTED_ROOT)
    assert row.as_nested_root().as_mountpoint().size == row.size


def test_content_hash_and_get_round_trip(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    row = file_row(b"data", Algorithm.RMD160, hardlink_group=(1 << 32) - 1, linkcount=3)
    w.add(b"/f", row)
    assert w.get(b"/f") == row  # a group >= 2**31 is stored as a negative int64 and read back
    assert w.get(b"/missing") is None
    assert isinstance(w.get(b"/f").hash, ContentHash)
    w.close()
