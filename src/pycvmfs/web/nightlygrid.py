"""The nightly page's data: a slot's package × platform × day grid from the index's tables.

Per cell: the build status, version, hash, durations and test status of the results feed,
where the feed says the logs are, and the portal URLs of the build and test logs published
with the build (``<prefix>/logs/``, served by :meth:`pycvmfs.web.browse.Browser.log`) when the
build is in that day's summary. Per column: the day's ``isDone`` marker and run. Per run: the
trend figures (wall, build and test time, outcome counts), per platform in start order.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from pycvmfs.stacks.layout import DAYS

__all__ = ["nightly_grid"]


def nightly_grid(db: sqlite3.Connection, slot: str) -> dict[str, Any] | None:
    """The grid of ``slot`` read from the index ``db`` (rows as :class:`sqlite3.Row`); None
    when no indexed repository has that slot."""
    days = db.execute("SELECT * FROM nightly_days WHERE slot=?", (slot,)).fetchall()
    runs = db.execute("SELECT * FROM runs WHERE kind='slot' AND stack=?",
                      (slot,)).fetchall()
    latest = db.execute("SELECT platform, day FROM latest WHERE slot=?",
                        (slot,)).fetchall()
    cells = db.execute(
        "SELECT r.day, r.platform, p.* FROM run_packages p JOIN runs r ON "
        "p.run_id=r.id WHERE r.kind='slot' AND r.stack=?", (slot,)).fetchall()
    prefixes = {(r["day"], r["platform"], r["name"], r["hash"]): (r["fqrn"], r["prefix"])
                for r in db.execute(
                    "SELECT s.day, s.platform, s.fqrn, p.name, p.hash, p.prefix "
                    "FROM packages p JOIN summaries s ON p.summary_id=s.id "
                    "WHERE s.kind='nightly' AND s.stack=?", (slot,))}
    if not days and not runs:
        return None
    run_of = {(r["day"], r["platform"]): r for r in runs}
    columns = sorted({(d["day"], d["platform"]) for d in days} | set(run_of),
                     key=lambda c: (c[1], DAYS.index(c[0]) if c[0] in DAYS else 99))
    marker = {(d["day"], d["platform"]): d["state"] for d in days}
    out_cols = []
    for day, plat in columns:
        run = run_of.get((day, plat))
        out_cols.append({
            "day": day, "platform": plat, "state": marker.get((day, plat), "unpublished"),
            "run_status": run["status"] if run else None,
            "started": run["started"] if run else None,
            "finished": run["finished"] if run else None,
            "counts": json.loads(run["counts"]) if run else {},
            "results": run["path"] if run else None})
    grid: dict[str, dict[str, Any]] = {}
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for c in cells:
        row = grid.setdefault(c["name"], {"name": c["name"], "cells": []})
        installed = prefixes.get((c["day"], c["platform"], c["name"], c["hash"]))
        total = totals.setdefault((c["day"], c["platform"]),
                                  {"build_seconds": 0.0, "test_seconds": 0.0})
        total["build_seconds"] += c["duration"] if c["status"] == "built" else 0.0
        total["test_seconds"] += c["test_duration"] if c["has_test"] else 0.0
        row["cells"].append({
            "log_url": _log_url(installed, "build.log"),
            "test_log_url": _log_url(installed, "test.log") if c["has_test"] else None,
            "day": c["day"], "platform": c["platform"], "version": c["version"],
            "hash": c["hash"], "status": c["status"], "duration": c["duration"],
            "test_status": c["test_status"] if c["has_test"] else None,
            "test_duration": c["test_duration"], "log": c["log"],
            "test_log": c["test_log"], "error": c["error"]})
    trends = [{"day": r["day"], "platform": r["platform"], "started": r["started"],
               "finished": r["finished"],
               "wall_seconds": round(max(0.0, r["finished"] - r["started"]), 3),
               **{k: round(v, 3) for k, v in totals.get(
                   (r["day"], r["platform"]),
                   {"build_seconds": 0.0, "test_seconds": 0.0}).items()},
               "counts": json.loads(r["counts"])}
              for r in sorted(runs, key=lambda r: (r["platform"], r["started"]))]
    return {"slot": slot, "columns": out_cols, "trends": trends,
            "latest": {r["platform"]: r["day"] for r in latest},
            "packages": [grid[n] for n in sorted(grid, key=str.lower)]}


def _log_url(installed: tuple[str, str] | None, name: str) -> str | None:
    """The portal URL of log ``name`` of a build installed at ``installed`` (fqrn, prefix):
    the builder publishes its logs in ``<prefix>/logs/`` (:mod:`pycvmfs.stacks.buildinfo`).
    None when the build is not in the day's summary (failed, skipped)."""
    if installed is None:
        return None
    fqrn, prefix = installed
    root = f"/cvmfs/{fqrn}/"
    if not prefix.startswith(root):
        return None  # a summary pointing outside its repository: nothing of ours to serve
    return f"/logs/{fqrn}/{prefix[len(root):]}/logs/{name}"
