"""The history (tag) database (``H`` objects): reading, creating, editing tags and rollback."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from pycvmfs.errors import ConfigError, FormatError, TagNotFoundError
from pycvmfs.format.hashes import ContentHash
from pycvmfs.format.sqlite import create_database, open_database, read_properties

__all__ = ["DDL", "SCHEMA", "SCHEMA_REVISION", "TABLES", "TRUNK", "TRUNK_DESCRIPTION",
           "TRUNK_PREVIOUS", "TRUNK_PREVIOUS_DESCRIPTION", "History", "Tag", "is_auto_tag_name"]

SCHEMA = "1.0"
SCHEMA_REVISION = 3

#: The undo tags the publisher maintains (users can neither create nor delete them).
TRUNK = "trunk"
TRUNK_PREVIOUS = "trunk-previous"
TRUNK_DESCRIPTION = "current HEAD"
TRUNK_PREVIOUS_DESCRIPTION = "default undo target"

_PROPERTIES_DDL = ("CREATE TABLE properties (key TEXT, value TEXT, "
                   "CONSTRAINT pk_properties PRIMARY KEY (key))")
_BRANCHES_DDL = ("CREATE TABLE branches (branch TEXT, parent TEXT, initial_revision INTEGER,"
                 "  CONSTRAINT pk_branch PRIMARY KEY (branch), "
                 "  FOREIGN KEY (parent) REFERENCES branches (branch), "
                 "  CHECK ((branch <> '') OR (parent IS NULL)), "
                 "  CHECK ((branch = '') OR (parent IS NOT NULL)))")
_TAGS_DDL = ("CREATE TABLE tags (name TEXT, hash TEXT, revision INTEGER, "
             "  timestamp INTEGER, channel INTEGER, description TEXT, size INTEGER, "
             "  branch TEXT, CONSTRAINT pk_tags PRIMARY KEY (name), "
             "  FOREIGN KEY (branch) REFERENCES branches (branch))")
_RECYCLE_BIN_DDL = ("CREATE TABLE recycle_bin (hash TEXT, flags INTEGER, "
                    "  CONSTRAINT pk_hash PRIMARY KEY (hash))")
_DEFAULT_BRANCH_ROW = "INSERT INTO branches (branch, parent, initial_revision) VALUES ('', NULL, 0)"

#: The table definitions in creation order; SQLite keeps these texts in ``sqlite_master``.
DDL = (_PROPERTIES_DDL, _BRANCHES_DDL, _TAGS_DDL, _RECYCLE_BIN_DDL)
#: The tables a history database may have; other schema objects are refused on open.
TABLES = ("properties", "branches", "tags", "recycle_bin")

_FIELDS = "name, hash, revision, timestamp, channel, description, {size}, {branch}"
_AUTO_TAG = re.compile(r"generic(_[0-9]+)?-[0-9]{4}-[0-9]{2}-[0-9]{2}"
                       r"T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?Z")
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Tag:
    """One row of ``tags``: a name for a root catalog (hash without object suffix)."""

    name: str
    root_hash: ContentHash
    revision: int
    timestamp: int
    channel: int = 0
    description: str = ""
    size: int = 0
    branch: str = ""


def is_auto_tag_name(name: str) -> bool:
    """Whether ``name`` looks like an automatic tag (``generic[_<n>]-<UTC time>Z``)."""
    return _AUTO_TAG.match(name) is not None


def _text(value: str) -> bytes:
    # Texts are bound as bytes and CAST to TEXT, so names read back as raw bytes round-trip.
    return value.encode("utf-8", "surrogateescape")


def _str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


class History:
    """A history database file. Obtain one with :meth:`open`, :meth:`create` or :meth:`derive`.

    Writable instances keep the file in rollback-journal mode and commit every change before
    the method returns; :meth:`close` (or leaving a ``with`` block) closes the file, which is
    then complete on disk and ready to be compressed and uploaded.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, what: str, writable: bool) -> None:
        self._conn = conn
        self.path = path
        self.what = what
        self.writable = writable
        props = read_properties(conn, what=what)
        try:
            schema = float(props.get("schema", SCHEMA))
            revision = int(props.get("schema_revision", "0"))
        except ValueError:
            raise FormatError(f"{what}: unreadable schema properties {props.get('schema')!r}/"
                              f"{props.get('schema_revision')!r}") from None
        if abs(schema - 1.0) > 1e-4:
            raise FormatError(f"{what}: unsupported history schema {schema} (expected {SCHEMA})")
        if not 0 <= revision <= SCHEMA_REVISION:
            raise FormatError(f"{what}: unsupported history schema revision {revision}")
        if "fqrn" not in props:
            raise FormatError(f"{what}: the history database has no fqrn property")
        self.schema_revision = revision
        self.fqrn: str = props["fqrn"]

    # -- opening and creating ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, what: str = "history database",
             writable: bool = False) -> History:
        """Open an existing (decompressed) history database.

        Read-only by default. ``writable=True`` upgrades an old schema revision to 3 the way
        stock does, so that tags can be edited.
        """
        conn = open_database(path, what=what, text_as_bytes=True, writable=writable,
                             tables=TABLES)
        try:
            if writable:
                conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("PRAGMA foreign_keys = ON")
            history = cls(conn, Path(path), what=what, writable=writable)
            if writable and history.schema_revision < SCHEMA_REVISION:
                history._upgrade_schema()
        except sqlite3.DatabaseError as e:
            conn.close()
            raise FormatError(f"{what}: cannot open the history database ({e})") from None
        except BaseException:
            conn.close()
            raise
        return history

    @classmethod
    def create(cls, path: str | os.PathLike, fqrn: str, *, previous: ContentHash | None = None,
               what: str = "history database") -> History:
        """Create an empty, writable history database with exactly the stock schema.

        ``previous`` is the hash of the preceding history object (``None``: the first one,
        recorded as 40 zeros).
        """
        conn = create_database(path, what=what)
        try:
            conn.text_factory = bytes
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("BEGIN")
            for statement in (_PROPERTIES_DDL, _BRANCHES_DDL, _DEFAULT_BRANCH_ROW, _TAGS_DDL,
                              _RECYCLE_BIN_DDL):
                conn.execute(statement)
            for key, value in (("schema", SCHEMA), ("schema_revision", str(SCHEMA_REVISION)),
                               ("fqrn", fqrn), ("previous_revision", _hash_text(previous))):
                conn.execute("INSERT INTO properties (key, value) VALUES (?, ?)", (key, value))
            conn.execute("COMMIT")
            return cls(conn, Path(path), what=what, writable=True)
        except BaseException:
            conn.close()
            with contextlib.suppress(OSError):
                Path(path).unlink()
            raise

    @classmethod
    def derive(cls, old_path: str | os.PathLike, new_path: str | os.PathLike, *,
               previous: ContentHash, what: str = "history database") -> History:
        """Start the next history object of the chain from a copy of the current one.

        ``old_path`` is the decompressed current history database, ``previous`` the hash of
        its object (manifest ``H``); the copy at ``new_path`` is opened writable with
        ``previous_revision`` = ``previous``. Like stock, the rows (and row ids) are kept.
        """
        src, dst = Path(old_path), Path(new_path)
        if dst.exists():
            raise FormatError(f"{what}: {dst} exists already")
        if not src.is_file():
            raise FormatError(f"{what}: {src} is not a file")
        shutil.copyfile(src, dst)
        try:
            history = cls.open(dst, what=what, writable=True)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
        history.set_previous_revision(previous)
        return history

    def close(self) -> None:
        """Commit anything pending and close the file (idempotent)."""
        if self._conn is None:
            return
        try:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")
        finally:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------
    @property
    def previous_revision(self) -> ContentHash | None:
        """The hash of the preceding history object; ``None`` for the first one."""
        value = self._properties().get("previous_revision")
        return ContentHash.parse_optional(value, what=f"{self.what}: previous_revision")

    def tags(self) -> list[Tag]:
        """All tags, newest revision first, then by name."""
        return self._select("ORDER BY revision DESC, name")

    def get(self, name: str) -> Tag | None:
        rows = self._select("WHERE name = CAST(? AS TEXT) LIMIT 1", (_text(name),))
        return rows[0] if rows else None

    def tag_at_date(self, timestamp: int) -> Tag | None:
        """The tag a client with ``CVMFS_REPOSITORY_DATE`` mounts: the one with the highest
        revision on the default branch whose timestamp is not after ``timestamp``."""
        rows = self._select(f"WHERE {self._branch} = '' AND timestamp <= ? "
                            "ORDER BY revision DESC, name LIMIT 1", (int(timestamp),))
        return rows[0] if rows else None

    def by_revision(self, revision: int) -> list[Tag]:
        """The tags pointing at catalog revision ``revision``, by name."""
        return self._select("WHERE revision = ? ORDER BY name", (int(revision),))

    def tags_affected_by_rollback(self, name: str) -> list[Tag]:
        """The tags a rollback to ``name`` deletes (the target row itself included)."""
        target = self._require_tag(name)
        return self._select(f"WHERE (revision > ? OR name = CAST(? AS TEXT)) AND "
                            f"{self._branch} = '' ORDER BY revision DESC, name",
                            (target.revision, _text(target.name)))

    def auto_tag_name(self, when: int) -> str:
        """The name stock's publisher picks for an automatic tag at ``when`` (UTC seconds)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        name, number = f"generic-{stamp}", 1
        while self.get(name) is not None:
            name, number = f"generic_{number}-{stamp}", number + 1
        return name

    def expired_auto_tags(self, before: int) -> list[Tag]:
        """Automatic tags older than ``before`` (``CVMFS_AUTO_TAG_TIMESPAN`` clean-up)."""
        return [t for t in self.tags() if is_auto_tag_name(t.name) and t.timestamp < before]

    # -- writing -------------------------------------------------------------------------------
    def insert(self, tag: Tag) -> None:
        """Add a new tag. The undo tags, names with spaces, an existing name or an unknown
        branch raise :class:`ConfigError`."""
        self._check_user_tag_name(tag.name)
        with self._transaction():
            if self.get(tag.name) is not None:
                raise ConfigError(f"{self.what}: tag {tag.name!r} exists already")
            known = self._conn.execute("SELECT 1 FROM branches WHERE branch = CAST(? AS TEXT)",
                                       (_text(tag.branch),)).fetchone()
            if known is None:
                raise ConfigError(f"{self.what}: tag {tag.name!r}: unknown branch {tag.branch!r}")
            self._insert_row(tag)

    def remove(self, name: str) -> bool:
        """Delete a tag; returns whether it existed. The undo tags cannot be removed."""
        self._check_user_tag_name(name)
        return self._delete_row(name)

    def set_previous_revision(self, previous: ContentHash | None) -> None:
        self._require_writable()
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)",
                               ("previous_revision", _hash_text(previous)))

    def update_undo_tags(self, new_trunk: Tag, *, keep_previous: bool = True) -> None:
        """Point ``trunk`` at ``new_trunk``'s catalog; the old ``trunk`` becomes
        ``trunk-previous`` (unless ``keep_previous`` is false), any older ``trunk-previous``
        goes. Only name and description of ``new_trunk`` are replaced."""
        self._require_writable()
        with self._transaction():
            self._delete_row(TRUNK_PREVIOUS)
            old = self.get(TRUNK)
            if old is not None:
                self._delete_row(TRUNK)
                if keep_previous:
                    self._insert_row(replace(old, name=TRUNK_PREVIOUS,
                                             description=TRUNK_PREVIOUS_DESCRIPTION))
            self._insert_row(replace(new_trunk, name=TRUNK, description=TRUNK_DESCRIPTION))

    def rollback_to(self, target: Tag | str, new_root_hash: ContentHash, new_revision: int,
                    new_timestamp: int, new_size: int) -> Tag:
        """Record a rollback to the tag ``target`` (default branch only) as stock does.

        The target's catalog was republished as ``new_root_hash`` with revision
        ``new_revision`` (current revision + 1), ``last_modified`` ``new_timestamp`` and
        uncompressed size ``new_size``. Every default-branch tag with a higher revision than the
        target, and the target row, are deleted; the target is re-inserted pointing at the new
        catalog; ``trunk`` is set to it and ``trunk-previous`` is gone (so a second anonymous
        undo is impossible). Other tags of the target's revision keep the old root hash.
        Returns the updated target tag.
        """
        self._require_writable()
        old = self._require_tag(target if isinstance(target, str) else target.name)
        if old.branch != "":
            raise ConfigError(f"{self.what}: tag {old.name!r} is on branch {old.branch!r}; "
                              "rollback is only supported on the default branch")
        newest = self._conn.execute("SELECT max(revision) FROM tags").fetchone()[0]
        if newest is not None and int(new_revision) <= int(newest):
            raise ConfigError(f"{self.what}: rollback revision {new_revision} is not newer "
                              f"than revision {int(newest)} in the history")
        if old.revision >= int(new_revision) - 1:
            raise ConfigError(f"{self.what}: tag {old.name!r} is the current revision "
                              f"{old.revision}; not rolling back to the current head")
        updated = replace(old, root_hash=new_root_hash, revision=int(new_revision),
                          timestamp=int(new_timestamp), size=int(new_size))
        with self._transaction():
            self._conn.execute("DELETE FROM tags WHERE (revision > ? OR name = CAST(? AS TEXT))"
                               " AND branch = ''", (old.revision, _text(old.name)))
            self._insert_row(updated)
            self.update_undo_tags(updated, keep_previous=False)
        self._conn.execute("VACUUM")
        return updated

    # -- internals -----------------------------------------------------------------------------
    @property
    def _branch(self) -> str:
        return "branch" if self.schema_revision >= 3 else "''"

    def _properties(self) -> dict[str, str]:
        self._require_open()
        return read_properties(self._conn, what=self.what)

    def _select(self, clause: str, params: tuple = ()) -> list[Tag]:
        self._require_open()
        fields = _FIELDS.format(size="size" if self.schema_revision >= 1 else "0",
                                branch=self._branch)
        try:
            rows = self._conn.execute(f"SELECT {fields} FROM tags {clause}", params).fetchall()
        except sqlite3.DatabaseError as e:
            raise FormatError(f"{self.what}: cannot read table tags ({e})") from None
        return [self._row_to_tag(row) for row in rows]

    def _row_to_tag(self, row: tuple) -> Tag:
        name = _str(row[0])
        where = f"{self.what}: tag {name!r}"

        def number(value: object, column: str, default: int | None = None) -> int:
            if value is None and default is not None:
                return default
            try:
                return int(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise FormatError(f"{where}: {column} {value!r} is not an integer") from None

        return Tag(name=name, root_hash=ContentHash.parse(_str(row[1]), what=f"{where}: hash"),
                   revision=number(row[2], "revision"), timestamp=number(row[3], "timestamp"),
                   channel=number(row[4], "channel", 0), description=_str(row[5]),
                   size=number(row[6], "size", 0), branch=_str(row[7]))

    def _require_open(self) -> None:
        if self._conn is None:
            raise ValueError(f"{self.what}: the history database is closed")

    def _require_writable(self) -> None:
        self._require_open()
        if not self.writable:
            raise ValueError(f"{self.what}: the history database is open read-only")

    def _require_tag(self, name: str) -> Tag:
        tag = self.get(name)
        if tag is None:
            raise TagNotFoundError(f"{self.what}: no tag named {name!r}")
        return tag

    def _check_user_tag_name(self, name: str) -> None:
        self._require_writable()
        if name in (TRUNK, TRUNK_PREVIOUS):
            raise ConfigError(f"{self.what}: tag {name!r} is maintained automatically")
        if not name or " " in name:
            raise ConfigError(f"{self.what}: invalid tag name {name!r} (empty or with spaces)")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._conn.in_transaction:  # nested: the outer block commits
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _insert_row(self, tag: Tag) -> None:
        for column in ("revision", "timestamp", "channel", "size"):
            value = getattr(tag, column)
            if not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
                raise ConfigError(f"{self.what}: tag {tag.name!r}: invalid {column} {value!r}")
        try:
            self._conn.execute(
                "INSERT INTO tags (name, hash, revision, timestamp, channel, description, size, "
                "branch) VALUES (CAST(? AS TEXT), ?, ?, ?, ?, CAST(? AS TEXT), ?, CAST(? AS TEXT))",
                (_text(tag.name), str(tag.root_hash), tag.revision, tag.timestamp, tag.channel,
                 _text(tag.description), tag.size, _text(tag.branch)))
        except sqlite3.IntegrityError as e:
            raise ConfigError(f"{self.what}: cannot insert tag {tag.name!r} ({e})") from None

    def _delete_row(self, name: str) -> bool:
        with self._transaction():
            cur = self._conn.execute("DELETE FROM tags WHERE name = CAST(? AS TEXT)",
                                     (_text(name),))
        return cur.rowcount > 0

    def _upgrade_schema(self) -> None:
        """Bring an old history (revision 0-2) to revision 3, the steps stock takes."""
        with self._transaction():
            if self.schema_revision < 1:
                self._conn.execute("ALTER TABLE tags ADD size INTEGER")
            if self.schema_revision < 2:
                self._conn.execute(_RECYCLE_BIN_DDL)
            self._conn.execute(_BRANCHES_DDL)
            self._conn.execute(_DEFAULT_BRANCH_ROW)
            self._conn.execute("ALTER TABLE tags ADD branch TEXT REFERENCES branches (branch)")
            self._conn.execute("UPDATE tags SET branch = ''")
            self._conn.execute("DELETE FROM recycle_bin")
            for key, value in (("schema", SCHEMA), ("schema_revision", str(SCHEMA_REVISION))):
                self._conn.execute("INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)",
                                   (key, value))
        self._conn.execute("VACUUM")
        self.schema_revision = SCHEMA_REVISION


def _hash_text(h: ContentHash | None) -> str:
    return "0" * 40 if h is None else str(h)
