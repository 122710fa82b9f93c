"""The fields of a stack description, checked one value at a time, and one package entry.

Every key of a description goes through these checks: strings, booleans, mappings, lists of
package names, environment variables, relative folder paths, key sets (an unknown key is an
error naming the key, with a "did you mean" when a known key is close). :func:`package_spec`
checks one package entry (version, source, dependencies, recipe, patches, conditions) into a
:class:`~pycvmfs.stacks.model.PackageSpec`; layering the files is
:mod:`pycvmfs.stacks.description`'s business.

YAML numbers are a trap for versions (``1.10`` reads as ``1.1``): the description's YAML loader
reads numbers as :class:`YamlInt`/:class:`YamlFloat`, which keep their text, so integers are
taken exactly as written and floats are refused with a request to quote them. Patches are read
and hashed when the entry is checked; the mapping form ``{path, strip, sha256}`` may also pin
the patch's hash.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import Condition, PackageSpec, Patch, Source
from pycvmfs.stacks.setupscripts import reserved_variable

__all__ = ["PACKAGE_KEYS", "PACKAGE_NAME", "WHEN_KEYS", "YamlFloat", "YamlInt", "as_bool",
           "as_mapping", "as_text", "check_keys", "did_you_mean", "env_vars", "kind_of",
           "package_names", "package_spec", "rel_path", "str_list"]

PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_PATH_PART = re.compile(r"[A-Za-z0-9_.+-]+\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_COMMIT = re.compile(r"[0-9a-f]{40}\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+\Z")

PACKAGE_KEYS = ("version", "source", "depends", "build", "test", "directory", "patches", "env",
                "relocate", "iset", "metadata", "when", "view_env")
WHEN_KEYS = ("os", "arch", "compiler", "buildtype")
_SOURCE_KEYS = ("url", "sha256", "git", "commit")
_PATCH_KEYS = ("path", "strip", "sha256")


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean X?)`` when one of ``choices`` is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class YamlInt(int):
    """A YAML integer that remembers how it was written (``010`` stays ``010``)."""

    text: str


class YamlFloat(float):
    """A YAML float that remembers how it was written, for the "quote it" error."""

    text: str


# -- value checks -----------------------------------------------------------------------------

def kind_of(value: Any) -> str:
    """What ``value`` is, as messages say it (``a number``, ``a list``...)."""
    return {bool: "a boolean", YamlInt: "a number", int: "a number", YamlFloat: "a number",
            float: "a number", list: "a list", dict: "a mapping", str: "a string",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_keys(data: Mapping, allowed: tuple[str, ...], where: str, what: str) -> None:
    """Refuse a key of ``data`` not in ``allowed`` (with a "did you mean")."""
    for key in data:
        if key not in allowed:
            raise StackError(f"{where}: unknown {what} {key!r}{did_you_mean(str(key), allowed)}; "
                             f"known: {', '.join(allowed)}")


def as_text(value: Any, where: str, field: str, *, numbers: bool = True) -> str:
    """A string field; integers (as written) too when ``numbers``; floats refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        written = getattr(value, "text", repr(value))
        raise StackError(f"{where}: {field} {written} was read as the number {value!r}; "
                         f"quote it (\"{written}\") so it is kept as written")
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return value.text if isinstance(value, YamlInt) else str(value)
    raise StackError(f"{where}: {field} must be a string, not {kind_of(value)}")


def as_bool(value: Any, where: str, field: str) -> bool:
    if not isinstance(value, bool):
        raise StackError(f"{where}: {field} must be true or false, not {kind_of(value)}")
    return value


def as_mapping(value: Any, where: str, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise StackError(f"{where}: {field} must be a mapping, not {kind_of(value)}")
    return value


def str_list(value: Any, where: str, field: str) -> list[str]:
    """A list of strings; a single string counts as a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise StackError(f"{where}: {field} must be a list, not {kind_of(value)}")
    return [as_text(v, where, f"{field} entry") for v in value]


def package_names(value: Any, where: str, field: str) -> tuple[str, ...]:
    """Package names, checked, in order, without repeats."""
    out: dict[str, None] = {}
    for name in str_list(value, where, field):
        if not PACKAGE_NAME.match(name):
            raise StackError(f"{where}: {field} names {name!r}, which is not a package name")
        out[name] = None
    return tuple(out)


def env_vars(value: Any, where: str) -> dict[str, str]:
    """An ``env`` mapping: variable names checked, values strings."""
    out = {}
    for key, val in as_mapping(value, where, "env").items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise StackError(f"{where}: env variable name {key!r} is not a valid name")
        out[key] = as_text(val, where, f"env {key}", numbers=False)
    return out


def view_env(value: Any, where: str) -> dict[str, str]:
    """A ``view_env`` mapping (the package's hooks in the view's setup scripts, as data):
    ``VAR: $PREFIX[/relative/path]``, kept as the path below the prefix ("" for the prefix).
    Names the setup scripts set themselves (search paths, ``LCG_*``, ``<NAME>_HOME``, see
    :func:`~pycvmfs.stacks.setupscripts.reserved_variable`) are refused."""
    out = {}
    for key, val in as_mapping(value, where, "view_env").items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise StackError(f"{where}: view_env variable name {key!r} is not a valid name")
        taken = reserved_variable(key)
        if taken:
            raise StackError(f"{where}: view_env variable {key} is reserved ({taken})")
        text = as_text(val, where, f"view_env {key}", numbers=False)
        m = re.match(r"^(\$PREFIX|\$\{PREFIX\})(/.*)?$", text)
        if not m:
            raise StackError(f"{where}: view_env {key} = {text!r}: a path below the package, "
                             "written $PREFIX or $PREFIX/<path>")
        sub = (m.group(2) or "").strip("/")
        out[key] = rel_path(sub, where, f"view_env {key}") if sub else ""
    return out


def rel_path(value: Any, where: str, field: str) -> str:
    """A relative folder path: no leading ``/``, no ``..``/``.``, plain names only."""
    text = as_text(value, where, field)
    parts = text.rstrip("/").split("/")
    if text.startswith("/") or not all(p and p not in (".", "..") and _PATH_PART.match(p)
                                       for p in parts):
        raise StackError(f"{where}: {field} {text!r} must be a relative path of plain names "
                         "(no leading '/', no '..', letters, digits and _.+- only)")
    return "/".join(parts)


# -- packages ---------------------------------------------------------------------------------

def _version(value: Any, where: str) -> str:
    if value is None:
        raise StackError(f"{where}: version is missing")
    text = as_text(value, where, "version")
    if not text or re.search(r"[\s/]", text):
        raise StackError(f"{where}: version {text!r} must be non-empty, "
                         "without '/' or whitespace")
    return text


def _source(value: Any, where: str) -> Source | None:
    if value is None:
        return None
    data = as_mapping(value, where, "source")
    check_keys(data, _SOURCE_KEYS, f"{where}: source", "key")
    if "url" in data and "git" in data:
        raise StackError(f"{where}: source has both url and git; give one of them")
    if "url" in data:
        urls = tuple(dict.fromkeys(str_list(data["url"], where, "source url")))
        if not urls:
            raise StackError(f"{where}: source url list is empty")
        for url in urls:
            if not _URL.match(url):
                raise StackError(f"{where}: source url {url!r} is not a URL (scheme://...)")
        if "commit" in data:
            raise StackError(f"{where}: source commit goes with git, not with url")
        if "sha256" not in data:
            raise StackError(f"{where}: source url {urls[0]} needs a sha256")
        digest = as_text(data["sha256"], where, "source sha256").lower()
        if not _SHA256.match(digest):
            raise StackError(f"{where}: source sha256 {digest!r} is not 64 hex digits")
        return Source(urls=urls, sha256=digest)
    if "git" in data:
        repo = as_text(data["git"], where, "source git")
        if not repo or re.search(r"\s", repo):
            raise StackError(f"{where}: source git {repo!r} is not a repository URL")
        if "sha256" in data:
            raise StackError(f"{where}: source sha256 goes with url, not with git")
        if "commit" not in data:
            raise StackError(f"{where}: source git {repo} needs a commit (the full sha1)")
        commit = as_text(data["commit"], where, "source commit").lower()
        if not _COMMIT.match(commit):
            raise StackError(f"{where}: source commit {commit!r} is not a full sha1 "
                             "(40 hex digits; branches and tags move)")
        return Source(git=repo, commit=commit)
    if data:
        raise StackError(f"{where}: source needs url (with sha256) or git (with commit)")
    return None


def _script(value: Any, where: str, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return "\n".join(as_text(line, where, f"{field} line", numbers=False) for line in value)
    return as_text(value, where, field, numbers=False)


def _patch(entry: Any, where: str, base_dir: Path) -> Patch:
    pinned = None
    strip = 1
    if isinstance(entry, Mapping):
        check_keys(entry, _PATCH_KEYS, f"{where}: patch", "key")
        if "path" not in entry:
            raise StackError(f"{where}: patch entry without path")
        given = as_text(entry["path"], where, "patch path", numbers=False)
        if "strip" in entry:
            strip = entry["strip"]
            if isinstance(strip, bool) or not isinstance(strip, int) or strip < 0:
                raise StackError(f"{where}: patch {given} strip must be a whole number >= 0")
            strip = int(strip)
        if "sha256" in entry:
            pinned = as_text(entry["sha256"], where, "patch sha256").lower()
    else:
        given = as_text(entry, where, "patch", numbers=False)
    path = Path(os.path.abspath(base_dir / given))
    try:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise StackError(f"{where}: patch {given} cannot be read ({path}: "
                         f"{e.strerror})") from e
    if pinned is not None and pinned != digest:
        raise StackError(f"{where}: patch {path} has sha256 {digest}, the description "
                         f"says {pinned}")
    return Patch(path=str(path), sha256=digest, strip=strip)


def _condition(value: Any, where: str) -> Condition:
    if value is None:
        return Condition()
    data = as_mapping(value, where, "when")
    check_keys(data, WHEN_KEYS, f"{where}: when", "key")
    return Condition(**{k: tuple(str_list(v, where, f"when {k}")) for k, v in data.items()})


def _metadata(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    data = as_mapping(value, where, "metadata")
    return tuple(sorted((str(k), as_text(v, where, f"metadata {k}")) for k, v in data.items()))


def package_spec(name: str, body: Any, where: str, base_dir: Path) -> PackageSpec:
    """One package entry of one file, checked; patches read and hashed."""
    data = as_mapping(body, where, "a package")
    check_keys(data, PACKAGE_KEYS, where, "package field")
    directory = rel_path(data["directory"], where, "directory") if "directory" in data else ""
    return PackageSpec(
        name=name,
        version=_version(data.get("version"), where),
        source=_source(data.get("source"), where),
        depends=package_names(data.get("depends", []), where, "depends"),
        build=_script(data.get("build"), where, "build") or "",
        test=_script(data.get("test"), where, "test"),
        directory="" if directory == name else directory,
        patches=tuple(_patch(p, where, base_dir) for p in _plain_list(data.get("patches", []),
                                                                       where, "patches")),
        env=tuple(sorted(env_vars(data.get("env", {}), where).items())),
        relocate=as_bool(data.get("relocate", False), where, "relocate"),
        iset=as_bool(data.get("iset", False), where, "iset"),
        metadata=_metadata(data.get("metadata", {}), where),
        when=_condition(data.get("when"), where),
        view_env=tuple(sorted(view_env(data.get("view_env", {}), where).items())),
    )


def _plain_list(value: Any, where: str, field: str) -> list:
    if not isinstance(value, list):
        raise StackError(f"{where}: {field} must be a list, not {kind_of(value)}")
    return value
