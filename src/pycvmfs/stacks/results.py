"""The results of one build run of a stack (a release or a nightly slot on one platform): what
happened to every package (built, reused from the cache, failed, skipped because a dependency
failed), its test step, and where the logs are.

The scheduler fills a :class:`RunResults`; from it come the JSON feed the browsing site reads
(:func:`results_feed`, schema ``pycvmfs-stack-results/1``, read back with
:func:`results_from_feed`) and the CTest XML CDash reads (:mod:`pycvmfs.stacks.ctest`).

Conventions:

- times are epoch seconds in memory and ISO 8601 UTC (``2026-12-08T01:00:00Z``, microseconds
  when not whole) in the feed; durations are seconds in both;
- ``PackageResult.error`` is a short message on its first line, then the last lines of the log
  (:func:`error_summary` makes one from a log file);
- text from logs may hold bytes that are not UTF-8 or control characters (colour codes):
  :func:`clean_text` turns everything neither JSON nor XML 1.0 can carry into U+FFFD, and both
  writers apply it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pycvmfs.errors import StackError

__all__ = [
    "BUILD_STATUSES",
    "FEED_SCHEMA",
    "TEST_OUTPUT_LIMIT",
    "TEST_STATUSES",
    "PackageResult",
    "RunResults",
    "clean_text",
    "error_summary",
    "log_tail",
    "merged_results",
    "read_feed",
    "results_feed",
    "results_from_feed",
    "write_feed",
]

FEED_SCHEMA = "pycvmfs-stack-results/1"
BUILD_STATUSES = ("built", "reused", "failed", "skipped")
TEST_STATUSES = ("passed", "failed", "notrun")
RUN_KINDS = ("release", "slot")
#: the most of a test log a result carries (its tail)
TEST_OUTPUT_LIMIT = 64 * 1024

# Lone surrogates (undecodable bytes read with surrogateescape) and the characters XML 1.0
# forbids (C0 controls but tab/newline/carriage return, U+FFFE, U+FFFF).
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean_text(text: str) -> str:
    """``text`` with every character JSON/XML cannot carry safely replaced by U+FFFD."""
    return _UNSAFE.sub("\ufffd", text)


def log_tail(path: str | os.PathLike[str], *, max_bytes: int = TEST_OUTPUT_LIMIT,
             max_lines: int | None = None) -> str:
    """The end of a log file: at most ``max_bytes`` bytes (starting at a line boundary when
    the file is longer) and at most ``max_lines`` lines, decoded as UTF-8 with U+FFFD for
    bytes that are not, then :func:`clean_text`."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except OSError as e:
        raise StackError(f"cannot read the log {os.fspath(path)}: {e.strerror or e}") from e
    if start > 0:
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data = data[cut + 1:]
    text = data.decode("utf-8", errors="replace")
    if max_lines is not None:
        lines = text.splitlines(keepends=True)
        text = "".join(lines[-max_lines:]) if max_lines > 0 else ""
    return clean_text(text)


def error_summary(message: str, log: str | os.PathLike[str] | None = None, *,
                  lines: int = 40) -> str:
    """What :attr:`PackageResult.error` holds: ``message`` (one line), then the last ``lines``
    lines of ``log`` when there is one to read."""
    head = clean_text(" ".join(message.split()))
    if log is None or not os.path.isfile(log):
        return head
    tail = log_tail(log, max_lines=lines).rstrip("\n")
    return f"{head}\n{tail}" if tail else head


@dataclass
class PackageResult:
    """What happened to one package in a run."""

    name: str
    version: str
    short: str                    # the display hash of the build (in its path)
    full_hash: str
    status: str                   # "built" | "reused" | "failed" | "skipped" (a dependency failed)
    duration: float = 0.0         # seconds of the build step (0 for reused)
    log: str | None = None        # where the build log is (path or URL as the caller gives it)
    error: str | None = None      # short message on the first line, then the log's last lines
    test_status: str = "notrun"   # "passed" | "failed" | "notrun"
    test_duration: float = 0.0
    test_log: str | None = None
    test_output: str = ""         # tail of the test log (at most TEST_OUTPUT_LIMIT bytes)
    is_generator: bool = False
    started: float | None = None  # epoch seconds
    finished: float | None = None
    has_test: bool = False        # the package has a test step (reported even when not run)

    def __post_init__(self) -> None:
        if self.status not in BUILD_STATUSES:
            raise StackError(f"{self.name}-{self.version}: build status {self.status!r} is not "
                             f"one of {', '.join(BUILD_STATUSES)}")
        if self.test_status not in TEST_STATUSES:
            raise StackError(f"{self.name}-{self.version}: test status {self.test_status!r} is "
                             f"not one of {', '.join(TEST_STATUSES)}")

    @property
    def reports_test(self) -> bool:
        """The package has a test to report (one that ran, or a test step that could not)."""
        return self.has_test or self.test_status != "notrun"


@dataclass
class RunResults:
    """One build run of a stack on one platform."""

    stack: str                    # release (``LCG_900``) or slot (``dev4``)
    kind: str                     # "release" | "slot"
    platform: str
    day: str | None               # the nightly's day (``Mon``), None for a release
    site: str                     # the machine (CDash's site name)
    started: float                # epoch seconds
    finished: float
    packages: list[PackageResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in RUN_KINDS:
            raise StackError(f"run of {self.stack}: kind {self.kind!r} is not one of "
                             f"{', '.join(RUN_KINDS)}")

    @property
    def ok(self) -> bool:
        """Every package was built or reused (none failed or skipped)."""
        return all(p.status in ("built", "reused") for p in self.packages)

    @property
    def build_name(self) -> str:
        """CDash's build name, ``<LCG_VERSION>-<platform>`` (``dev4-x86_64-el9-gcc13-opt``)."""
        return f"{self.stack}-{self.platform}"

    @property
    def status(self) -> str:
        """``success``; ``unstable`` (all built, some test failed); ``failed``."""
        if not self.ok:
            return "failed"
        if any(p.test_status == "failed" for p in self.packages):
            return "unstable"
        return "success"

    def counts(self) -> dict[str, int]:
        """How many packages have each build status, and how many tests each test status."""
        out = {s: 0 for s in BUILD_STATUSES}
        out.update({f"tests_{s}": 0 for s in TEST_STATUSES})
        for p in self.packages:
            out[p.status] += 1
            if p.reports_test:
                out[f"tests_{p.test_status}"] += 1
        return out


# -- the JSON feed ---------------------------------------------------------------------------

def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _epoch(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise StackError(f"{where}: {value!r} is not an ISO 8601 time") from e
    if when.tzinfo is None:
        raise StackError(f"{where}: {value!r} has no time zone (expected UTC, ...Z)")
    return when.timestamp()


def _text(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def results_feed(run: RunResults) -> dict[str, Any]:
    """The run as a JSON-ready dict (schema :data:`FEED_SCHEMA`)."""
    packages = [{
        "name": p.name, "version": p.version, "short": p.short, "full_hash": p.full_hash,
        "status": p.status, "is_generator": p.is_generator,
        "started": _iso(p.started), "finished": _iso(p.finished), "duration": p.duration,
        "log": _text(p.log), "error": _text(p.error),
        "has_test": p.has_test, "test_status": p.test_status,
        "test_duration": p.test_duration, "test_log": _text(p.test_log),
        "test_output": clean_text(p.test_output),
    } for p in run.packages]
    return {
        "schema": FEED_SCHEMA,
        "stack": run.stack, "kind": run.kind, "platform": run.platform, "day": run.day,
        "site": run.site, "build_name": run.build_name,
        "started": _iso(run.started), "finished": _iso(run.finished),
        "status": run.status, "counts": run.counts(), "packages": packages,
    }


_MISSING = object()


def _field(doc: dict[str, Any], key: str, types: type | tuple[type, ...], where: str,
           default: Any = _MISSING) -> Any:
    value = doc.get(key, default)
    if value is _MISSING:
        raise StackError(f"{where}: field {key!r} is missing")
    if value is not default and not isinstance(value, types):
        raise StackError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _number(doc: dict[str, Any], key: str, where: str) -> float:
    value = _field(doc, key, (int, float), where, 0.0)
    if isinstance(value, bool):
        raise StackError(f"{where}: field {key!r} has the wrong type (bool)")
    return float(value)


def _package_from_feed(entry: Any, where: str) -> PackageResult:
    if not isinstance(entry, dict):
        raise StackError(f"{where}: a package entry is not an object")
    name = _field(entry, "name", str, where)
    here = f"{where}: package {name}"
    return PackageResult(
        name=name, version=_field(entry, "version", str, here),
        short=_field(entry, "short", str, here), full_hash=_field(entry, "full_hash", str, here),
        status=_field(entry, "status", str, here),
        duration=_number(entry, "duration", here),
        log=_field(entry, "log", str, here, None), error=_field(entry, "error", str, here, None),
        test_status=_field(entry, "test_status", str, here, "notrun"),
        test_duration=_number(entry, "test_duration", here),
        test_log=_field(entry, "test_log", str, here, None),
        test_output=_field(entry, "test_output", str, here, ""),
        is_generator=_field(entry, "is_generator", bool, here, False),
        started=_epoch(entry.get("started"), f"{here}: started"),
        finished=_epoch(entry.get("finished"), f"{here}: finished"),
        has_test=_field(entry, "has_test", bool, here, False),
    )


def results_from_feed(doc: Any, *, origin: str = "results feed") -> RunResults:
    """The run a feed describes (the inverse of :func:`results_feed`); ``origin`` (a file
    name) is named in the errors. Refuses documents of another schema."""
    if not isinstance(doc, dict):
        raise StackError(f"{origin}: not a JSON object")
    schema = doc.get("schema")
    if schema != FEED_SCHEMA:
        raise StackError(f"{origin}: schema {schema!r} is not {FEED_SCHEMA!r}")
    started = _epoch(_field(doc, "started", str, origin), f"{origin}: started")
    finished = _epoch(_field(doc, "finished", str, origin), f"{origin}: finished")
    packages = _field(doc, "packages", list, origin)
    return RunResults(
        stack=_field(doc, "stack", str, origin), kind=_field(doc, "kind", str, origin),
        platform=_field(doc, "platform", str, origin), day=_field(doc, "day", str, origin, None),
        site=_field(doc, "site", str, origin),
        started=started, finished=finished,  # type: ignore[arg-type]
        packages=[_package_from_feed(p, origin) for p in packages],
    )


def write_feed(run: RunResults, path: str | os.PathLike[str]) -> Path:
    """Write the feed as UTF-8 JSON at ``path`` (its folder is created); returns the path."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.write_text(json.dumps(results_feed(run), indent=1, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        tmp.replace(dest)
    except OSError as e:
        raise StackError(f"cannot write the results feed {dest}: {e.strerror or e}") from e
    return dest


def read_feed(path: str | os.PathLike[str]) -> RunResults:
    """The run in the feed file at ``path``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise StackError(f"cannot read the results feed {os.fspath(path)}: "
                         f"{e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StackError(f"results feed {os.fspath(path)} is not UTF-8 JSON: {e}") from e
    return results_from_feed(doc, origin=os.fspath(path))


def merged_results(where: Path, stack: str, platform: str, day: str | None,
                   names) -> RunResults | None:
    """One run made of the results feeds below ``where`` (a CI publish job's artifacts from
    its build jobs) for ``stack`` × ``platform``: per package the feed that built it (or
    failed it) beats one that reused it; None when there is none."""
    runs = []
    for path in sorted(Path(where).rglob("results.json")):
        try:
            run = read_feed(path)
        except (StackError, OSError, ValueError):
            continue
        if run.stack == stack and run.platform == platform and run.day == day:
            runs.append(run)
    if not runs:
        return None
    rank = {"failed": 3, "built": 2, "skipped": 1, "reused": 0}
    best: dict = {}
    for run in runs:
        for p in run.packages:
            if p.name in names and rank.get(p.status, 0) >= rank.get(
                    getattr(best.get(p.name), "status", ""), -1):
                best[p.name] = p
    merged = runs[0]
    merged.started = min(r.started for r in runs)
    merged.finished = max(r.finished for r in runs)
    merged.packages = [best[n] for n in names if n in best]
    return merged
