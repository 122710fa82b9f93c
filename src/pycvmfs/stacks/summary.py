"""Release summary files: ``LCG_externals_<platform>.txt`` and ``LCG_generators_<platform>.txt``
(the public, widely parsed lcgcmake format) and their JSON twin.

The text format, written byte for byte as lcgcmake writes it::

    PLATFORM: x86_64-el9-gcc13-opt
    VERSION: 107
    COMPILER: gcc;13.1.0
    Boost; 7d678; 1.85.0; ./Boost/1.85.0/x86_64-el9-gcc13-opt; Python-9a0d2,zlib-507fd
    zlib; 507fd; 1.3.1; ./zlib/1.3.1/x86_64-el9-gcc13-opt;␣

Three header lines, then one line per package: ``NAME; HASH; VERSION; DIRECTORY; DEPENDS``
joined by ``"; "`` (an empty DEPENDS leaves the line ending in ``"; "``, trailing space
included; shown as ``␣`` above), DEPENDS the comma-separated *direct* dependencies as
``name-hash``. DIRECTORY is ``./<dir>/<version>/<platform>`` in a release (it resolves through
the release's symlink) and absolute in a nightly manifest. Every line ends in a newline.

The reader is tolerant, as the consumers of these files are: headers may be missing, blank and
``#`` comment lines are ignored, fields are split on ``;`` and stripped (with or without the
space), a line of four fields (the ``LCG_contrib`` form) has no dependencies, and a line that
cannot be split into a package is skipped and counted in :attr:`Summary.skipped`.

Summaries are derived from build records (the JSON the builder writes next to each package):
packages whose directory has an ``MCGenerators`` component go to the generators summary, the
rest to the externals summary; lines are sorted by (name, hash); the COMPILER header is the
compiler family with the highest compiler version among the records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pycvmfs.errors import StackError
from pycvmfs.stacks.platform import Platform

__all__ = [
    "SCHEMA",
    "Summary",
    "SummaryEntry",
    "parse_summary",
    "render_summary",
    "summaries_for",
    "summary_from_json",
    "summary_json",
    "version_key",
]

#: the ``schema`` value of the JSON twin
SCHEMA = "pycvmfs-summary/1"

_HEADERS = ("PLATFORM", "VERSION", "COMPILER")
_FIELD_FORBIDDEN = re.compile(r"[;\n\r]")
_DEP_FORBIDDEN = re.compile(r"[;,\s]")


@dataclass(frozen=True)
class SummaryEntry:
    """One package line: its short hash, the directory of its prefix and its direct
    dependencies as ``name-hash``."""

    name: str
    hash: str
    version: str
    directory: str
    depends: tuple[str, ...] = ()

    @property
    def is_generator(self) -> bool:
        return "MCGenerators" in self.directory.split("/")


@dataclass
class Summary:
    """A whole summary file: the three headers (``None`` when a file lacks one) and the lines."""

    platform: str | None
    version: str | None
    compiler: tuple[str, str] | None
    entries: list[SummaryEntry] = field(default_factory=list)
    skipped: int = 0  # lines the reader could not split into a package


def split_dependency(item: str) -> tuple[str, str]:
    """``name-hash`` → (name, hash); names may contain ``-`` (``powheg-box``), hashes never do."""
    name, sep, short = item.rpartition("-")
    if not sep or not name or not short:
        return item, ""
    return name, short


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key for version strings: numeric parts compare as numbers (``13.10`` > ``13.9``),
    and numbers sort after words, so ``13.1.0`` > ``13.1.rc1``."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


# -- the text format ------------------------------------------------------------------------------
def _check_field(value: str, what: str, package: str) -> None:
    if _FIELD_FORBIDDEN.search(value) or value != value.strip():
        raise StackError(f"summary line of package {package!r}: {what} {value!r} cannot be "
                         "written (it holds ';', a line break or surrounding spaces)")


def _render_entry(e: SummaryEntry) -> str:
    if not e.name:
        raise StackError(f"summary line with an empty package name (hash {e.hash!r})")
    for what, value in (("name", e.name), ("hash", e.hash), ("version", e.version),
                        ("directory", e.directory)):
        _check_field(value, what, e.name)
    for dep in e.depends:
        if not dep or _DEP_FORBIDDEN.search(dep):
            raise StackError(f"summary line of package {e.name!r}: dependency {dep!r} cannot be "
                             "written (empty, or holds ';', ',' or a space)")
    return "; ".join((e.name, e.hash, e.version, e.directory, ",".join(e.depends))) + "\n"


def render_summary(s: Summary) -> str:
    """The text of a summary file, byte for byte as lcgcmake writes it (headers that are
    ``None`` are left out; lines in the order of ``s.entries``)."""
    out: list[str] = []
    if s.platform is not None:
        _check_field(s.platform, "PLATFORM header", "-")
        out.append(f"PLATFORM: {s.platform}\n")
    if s.version is not None:
        _check_field(s.version, "VERSION header", "-")
        out.append(f"VERSION: {s.version}\n")
    if s.compiler is not None:
        family, version = s.compiler
        _check_field(family, "COMPILER family", "-")
        _check_field(version, "COMPILER version", "-")
        out.append(f"COMPILER: {family};{version}\n")
    out.extend(_render_entry(e) for e in s.entries)
    return "".join(out)


def _parse_compiler(value: str) -> tuple[str, str]:
    """``gcc;13.1.0`` (and, tolerated, ``GNU 13.1.0`` of the 2015 files) → (family, version)."""
    if ";" in value:
        family, _, version = value.partition(";")
    else:
        family, _, version = value.partition(" ")
    return family.strip(), version.strip()


def parse_summary(text: str, *, what: str) -> Summary:
    """Read a summary file (``what`` names it in errors: a path or URL). Tolerant, see the
    module docstring; a header given twice with two different values is an error."""
    headers: dict[str, str] = {}
    entries: list[SummaryEntry] = []
    skipped = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, colon, value = stripped.partition(":")
        if colon and key.strip().upper() in _HEADERS and ";" not in key:
            key = key.strip().upper()
            value = value.strip()
            if key in headers and headers[key] != value:
                raise StackError(f"{what}: header {key} given twice ({headers[key]!r} and "
                                 f"{value!r})")
            headers[key] = value
            continue
        fields = [f.strip() for f in stripped.split(";")]
        while len(fields) > 5 and not fields[-1]:
            fields.pop()  # a stray trailing ';'
        if len(fields) not in (4, 5) or not all(fields[:3]):
            skipped += 1
            continue
        deps = tuple(d.strip() for d in fields[4].split(",") if d.strip()) if len(
            fields) == 5 else ()
        entries.append(SummaryEntry(fields[0], fields[1], fields[2], fields[3], deps))
    compiler = _parse_compiler(headers["COMPILER"]) if "COMPILER" in headers else None
    return Summary(platform=headers.get("PLATFORM"), version=headers.get("VERSION"),
                   compiler=compiler, entries=entries, skipped=skipped)


# -- from build records ---------------------------------------------------------------------------
def _require(record: Mapping[str, Any], key: str) -> Any:
    value = record.get(key)
    if value is None or value == "":
        name = record.get("name", "?")
        raise StackError(f"build record of package {name!r} has no {key!r}")
    return value


def _directory_of(record: Mapping[str, Any]) -> str:
    return str(record.get("directory") or _require(record, "name"))


def _is_generator_record(record: Mapping[str, Any]) -> bool:
    return "MCGenerators" in _directory_of(record).split("/")


def _compiler_header(records: list[Mapping[str, Any]], platform: str) -> tuple[str, str] | None:
    """(family, highest version among the records of that family); the family is the
    platform's compiler token without digits when it parses, else the records' first family."""
    compilers = [r["compiler"] for r in records if isinstance(r.get("compiler"), Mapping)
                 and r["compiler"].get("family") and r["compiler"].get("version")]
    try:
        family = Platform.parse(platform).compiler_family
    except StackError:
        family = compilers[0]["family"] if compilers else ""
    versions = [str(c["version"]) for c in compilers if c["family"] == family]
    if not family or not versions:
        return None
    return family, max(versions, key=version_key)


def _entry_for(record: Mapping[str, Any], platform: str, base: str) -> SummaryEntry:
    name = str(_require(record, "name"))
    version = str(_require(record, "version"))
    short = str(_require(record, "short"))
    package_platform = str(record.get("platform") or platform)
    directory = f"{base}/{_directory_of(record)}/{version}/{package_platform}"
    deps = []
    for dep in record.get("depends") or ():
        if not isinstance(dep, Mapping) or not dep.get("name") or not dep.get("short"):
            raise StackError(f"build record of package {name!r}: a dependency without name "
                             f"or short hash: {dep!r}")
        deps.append(f"{dep['name']}-{dep['short']}")
    return SummaryEntry(name, short, version, directory, tuple(sorted(set(deps))))


def summaries_for(records: Iterable[Mapping[str, Any]], *, platform: str, version_label: str,
                  directory_base: str | None = None) -> dict[str, Summary]:
    """``{"externals": ..., "generators": ...}`` for the build records of one stack × platform.

    DIRECTORY is ``./<dir>/<version>/<platform>`` (release form) or, with ``directory_base``,
    ``<directory_base>/<dir>/<version>/<platform>`` (nightly form, absolute). A record's own
    ``platform`` (the naked one of a non-ISET package) is used when it has one. A record given
    twice (same name and short hash) is listed once. Both summaries always exist, possibly
    without lines (consumers require both files)."""
    recs = list(records)
    if directory_base is None:
        base = "."
    else:
        if not directory_base.startswith("/"):
            raise StackError(f"summary directory base {directory_base!r} is not absolute")
        base = directory_base.rstrip("/") or ""
    compiler = _compiler_header(recs, platform)
    groups: dict[str, dict[tuple[str, str], SummaryEntry]] = {"externals": {}, "generators": {}}
    for record in recs:
        entry = _entry_for(record, platform, base)
        group = groups["generators" if _is_generator_record(record) else "externals"]
        key = (entry.name, entry.hash)
        if key in group and group[key] != entry:
            raise StackError(f"two different build records for package {entry.name!r} with "
                             f"hash {entry.hash}: {group[key].directory} and {entry.directory}")
        group[key] = entry
    return {kind: Summary(platform=platform, version=version_label, compiler=compiler,
                          entries=[group[k] for k in sorted(group)])
            for kind, group in groups.items()}


# -- the JSON twin --------------------------------------------------------------------------------
def summary_json(s: Summary, records: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The JSON twin of a summary; ``records`` (matched by name and short hash) add the full
    hash, the generator flag and the package metadata."""
    by_key = {(str(r.get("name")), str(r.get("short"))): r for r in records}
    packages = []
    for e in s.entries:
        record = by_key.get((e.name, e.hash), {})
        packages.append({
            "name": e.name,
            "version": e.version,
            "hash": e.hash,
            "full_hash": record.get("hash"),
            "directory": e.directory,
            "depends": [dict(zip(("name", "hash"), split_dependency(d), strict=True))
                        for d in e.depends],
            "is_generator": bool(record.get("is_generator", e.is_generator)),
            "metadata": dict(record.get("metadata") or {}),
        })
    compiler = ({"family": s.compiler[0], "version": s.compiler[1]}
                if s.compiler is not None else None)
    return {"schema": SCHEMA, "platform": s.platform, "version": s.version,
            "compiler": compiler, "packages": packages}


def summary_from_json(doc: Mapping[str, Any]) -> Summary:
    """The :class:`Summary` a JSON twin describes (the inverse of :func:`summary_json`)."""
    if not isinstance(doc, Mapping) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, Mapping) else type(doc).__name__
        raise StackError(f"summary JSON: schema {got!r}, expected {SCHEMA!r}")
    compiler = doc.get("compiler")
    entries = []
    for i, p in enumerate(doc.get("packages") or ()):
        try:
            deps = tuple(f"{d['name']}-{d['hash']}" for d in p.get("depends") or ())
            entries.append(SummaryEntry(str(p["name"]), str(p["hash"]), str(p["version"]),
                                        str(p["directory"]), deps))
        except (KeyError, TypeError, AttributeError) as exc:
            raise StackError(f"summary JSON: package #{i} "
                             f"({p.get('name', '?') if isinstance(p, Mapping) else p!r}) "
                             f"is missing {exc}") from None
    return Summary(
        platform=doc.get("platform"), version=doc.get("version"),
        compiler=(str(compiler["family"]), str(compiler["version"])) if compiler else None,
        entries=entries)
