"""Snapshot progress: objects and their bytes done of the totals found so far, with the walk's
end (the totals final) told by a "catalogs" report that has a total."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

from helpers.progress import ProgressRecorder
from helpers.replica import GOLDEN_FQRN


def referenced_objects(replica: Path, tmp_path: Path) -> dict[tuple[bytes, int, str], int]:
    """Every data object and chunk the replica's catalogs reference (external files left out):
    (digest, algorithm code, kind) -> its size as the catalog records it."""
    out: dict[tuple[bytes, int, str], int] = {}
    for n, obj in enumerate(sorted((replica / "data").glob("*/*C"))):
        db = tmp_path / f"catalog{n}.db"
        db.write_bytes(zlib.decompress(obj.read_bytes()))
        conn = sqlite3.connect(db)
        try:
            rows = [(d, a, "", s) for d, a, s in conn.execute(
                "SELECT hash, (flags >> 8) & 7, size FROM catalog "
                "WHERE hash IS NOT NULL AND (flags & 128) = 0")]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "chunks" in tables:
                rows += [(d, a, "P", s) for d, a, s in conn.execute(
                    "SELECT c.hash, (k.flags >> 8) & 7, c.size FROM chunks AS c JOIN catalog AS k"
                    " ON c.md5path_1 = k.md5path_1 AND c.md5path_2 = k.md5path_2"
                    " WHERE (k.flags & 128) = 0")]
        finally:
            conn.close()
        for digest, algorithm, kind, size in rows:
            if len(digest) == 20 and digest != bytes(20):
                out[(digest, algorithm, kind)] = size
    return out


def assert_grows_to(seen: list[tuple[int, int | None]], total: int) -> None:
    assert seen, "no progress reported"
    done = [d for d, _t in seen]
    totals = [t for _d, t in seen]
    assert done == sorted(done) and totals == sorted(totals)
    assert all(d <= t for d, t in seen)
    assert seen[-1] == (total, total)


def test_snapshot_reports_objects_and_bytes_of_totals_found_so_far(golden_server, replicate,
                                                                   tmp_path):
    rec = ProgressRecorder()
    dest = tmp_path / GOLDEN_FQRN
    report = replicate(f"{golden_server.url}/{GOLDEN_FQRN}", dest, tmp_path / "state",
                       all_tags=True, progress=rec)
    objects = referenced_objects(dest, tmp_path)
    assert report.objects_fetched == len(objects)  # (the replica started empty)
    assert_grows_to(rec.stage("objects"), len(objects))
    assert_grows_to(rec.stage("bytes"), sum(objects.values()))

    # the walk's end is told once, and no total changes after it
    catalogs = rec.stage("catalogs")
    assert catalogs[0][1] is None  # reported while catalogs were still being read
    final_at = next(i for i, c in enumerate(rec.calls) if c[0] == "catalogs" and c[2])
    assert rec.calls[final_at][1] == report.catalogs_fetched
    after = rec.calls[final_at:]
    assert {t for s, _d, t in after if s == "objects"} == {len(objects)}
    assert {t for s, _d, t in after if s == "bytes"} == {sum(objects.values())}
