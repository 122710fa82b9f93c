"""The records a finished build leaves in its install tree (design reference §3.4, §4.3, §4.4):

- ``logs/build.log`` and ``logs/test.log``, the step outputs;
- ``.buildinfo_<name>.txt``, lcgcmake's one-line record, in its later form, exactly::

     COMPILER: GNU 12.2.0, HOSTNAME: node1, GITHASH: '0.1.0', HASH: ab12c, DESTINATION: zlib, \
NAME: zlib, VERSION: 1.3.1, REVISION: 0123456789ab, DEPENDS: dep1-1a2b3,dep2-4c5d6,

  (a leading space, ``GITHASH`` = the pycvmfs version, ``REVISION`` = the first 12 hex digits of
  the full hash, the DIRECT dependencies as ``name-short`` sorted by name, each followed by a
  comma; no dependency gives ``DEPENDS: ,`` so the line always ends with a comma; then one
  newline);
- ``version.txt``, the sorted closure ``name=version`` joined by ``/`` (one newline after it);
- ``.pycvmfs-build.json``, the full build record (schema ``pycvmfs-build/1``: hashes, sources,
  patches, dependencies, compiler, builder, times, steps, metadata), sorted keys, indent 1.

:func:`parse_buildinfo` reads both lcgcmake forms: 2015 (dependencies as bare items after
``VERSION``) and later (``DEPENDS:``, quoted ``GITHASH``, ``REVISION``, ``ISET``, dependency
items that may carry a version).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pycvmfs.errors import StackError

__all__ = ["RECORD_FILE", "RECORD_SCHEMA", "buildinfo_name", "format_buildinfo",
           "parse_buildinfo", "parse_dependency", "read_record", "version_txt", "write_records"]

RECORD_FILE = ".pycvmfs-build.json"
RECORD_SCHEMA = "pycvmfs-build/1"

# `name-version-hash` or `name-hash`: the version is the part after the first '-' that is
# followed by a digit (so names with dashes such as powheg-box keep their dashes)
_DEP_VERSION = re.compile(r"^(?P<name>.+?)-(?P<version>[0-9].*)$")


def buildinfo_name(name: str) -> str:
    """``.buildinfo_<name>.txt``."""
    return f".buildinfo_{name}.txt"


def format_buildinfo(record: Mapping[str, Any]) -> str:
    """The ``.buildinfo_<name>.txt`` line (without its newline) of a build record."""
    try:
        compiler = record["compiler"]
        family = "Clang" if compiler["family"] == "clang" else "GNU"
        deps = sorted(record["depends"], key=lambda d: d["name"])
        fields = [
            ("COMPILER", f"{family} {compiler['version']}"),
            ("HOSTNAME", record["builder"]["host"]),
            ("GITHASH", f"'{record['builder']['pycvmfs']}'"),
            ("HASH", record["short"]),
            ("DESTINATION", record["name"]),
            ("NAME", record["name"]),
            ("VERSION", record["version"]),
            ("REVISION", record["hash"][:12]),
        ]
    except (KeyError, TypeError) as e:
        raise StackError(f"build record of {record.get('name', '?')} lacks {e} "
                         "(cannot write its .buildinfo file)") from e
    head = ", ".join(f"{k}: {v}" for k, v in fields)
    return f" {head}, DEPENDS: " + "".join(f"{d['name']}-{d['short']}," for d in deps) + (
        "" if deps else ",")


def parse_dependency(item: str) -> dict[str, str | None]:
    """A dependency item of a ``.buildinfo`` file: ``Boost-7d678`` or ``Boost-1.85.0-7d678``
    → name, version (None when absent) and hash (the last dash field)."""
    item = item.strip()
    rest, dash, short = item.rpartition("-")
    if not dash or not rest or not short:
        return {"name": item, "version": None, "hash": ""}
    m = _DEP_VERSION.match(rest)
    if m:
        return {"name": m["name"], "version": m["version"], "hash": short}
    return {"name": rest, "version": None, "hash": short}


def parse_buildinfo(text: str, *, what: str) -> dict[str, Any]:
    """The fields of a ``.buildinfo`` line (``what`` names the file in errors), keyed in lower
    case (``compiler``, ``hostname``, ``githash`` without quotes, ``svnrevision``, ``hash``,
    ``destination``, ``name``, ``version``, ``revision``, ``iset``, any other key as found),
    plus ``depends``: the dependency items as written (``name-hash`` or ``name-version-hash``),
    ``dependencies``: each parsed (:func:`parse_dependency`), and ``form``: ``"2015"`` or
    ``"later"`` (whether a ``DEPENDS:`` key is present)."""
    later = re.search(r"(^|,)\s*DEPENDS\s*:", text) is not None
    fields: dict[str, Any] = {}
    deps: list[str] = []
    listing = False       # bare items are dependencies once VERSION or DEPENDS was seen
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, colon, value = part.partition(":")
        if not colon:
            if not listing:
                raise StackError(f"{what}: field {part!r} is not 'KEY: value' (a .buildinfo "
                                 "line lists COMPILER, HOSTNAME, HASH, NAME, VERSION... then "
                                 "the dependencies)")
            deps.append(part)
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "depends":
            listing = True
            if value:
                deps.append(value)
            continue
        if key == "githash":
            value = value.strip("'\"")
        fields[key] = value
        if key == "version":
            listing = True
    for needed in ("name", "version", "hash"):
        if needed not in fields:
            raise StackError(f"{what}: no {needed.upper()} field in the .buildinfo line")
    fields.setdefault("destination", fields["name"])
    fields["depends"] = deps
    fields["dependencies"] = [parse_dependency(d) for d in fields["depends"]]
    fields["form"] = "later" if later else "2015"
    return fields


def _lcg_sort_key(item: tuple[str, str]) -> str:
    # lcgcmake sorts the target names `name-version` (ASCII), then writes `name=version`
    return f"{item[0]}-{item[1]}"


def version_txt(name: str, closure_versions: Mapping[str, str]) -> str:
    """§4.4: the transitive closure INCLUDING the package ``name`` itself, as ``name=version``
    sorted in lcgcmake's order and joined by ``/`` (no newline)."""
    if name not in closure_versions:
        raise StackError(f"version.txt of {name}: the closure does not list {name} itself")
    return "/".join(f"{n}={v}" for n, v in sorted(closure_versions.items(), key=_lcg_sort_key))


def write_records(install_dir: Path, record: Mapping[str, Any], *,
                  logs: Mapping[str, Path]) -> None:
    """Write the records of a finished build into ``install_dir``: the logs (``logs/<key>``,
    e.g. ``{"build.log": path}``; missing ones skipped), ``.buildinfo_<name>.txt``,
    ``version.txt`` and the JSON record."""
    install_dir = Path(install_dir)
    log_dir = install_dir / "logs"
    for target, source in logs.items():
        if Path(source).is_file():
            log_dir.mkdir(exist_ok=True)
            shutil.copyfile(source, log_dir / target)
    name = record["name"]
    (install_dir / buildinfo_name(name)).write_text(format_buildinfo(record) + "\n",
                                                    encoding="utf-8")
    (install_dir / "version.txt").write_text(version_txt(name, record["closure"]) + "\n",
                                             encoding="utf-8")
    (install_dir / RECORD_FILE).write_text(
        json.dumps(record, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8")


def read_record(install_dir: Path) -> dict[str, Any]:
    """The JSON build record of an install tree; StackError naming the file when it is
    missing, unreadable or of another schema."""
    path = Path(install_dir) / RECORD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise StackError(f"{path}: no build record (not a pycvmfs build?)") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StackError(f"{path}: unreadable build record: {e}") from e
    if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA:
        got = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise StackError(f"{path}: build record schema {got!r}, expected {RECORD_SCHEMA!r}")
    return record
