"""Stack descriptions: ``stack.yaml`` (or ``stack.toml``) read into a :class:`Stack`.

A description names one release (``release: LCG_900``) or nightly slot (``slot: dev4``), the
platform, the repository folder (``prefix``), the stack-wide build environment, the roots of the
build (``top``), view settings and the packages (version, source, dependencies, recipe, patches,
conditions). Every key is checked; an unknown one is an error naming the file and the key, with
a "did you mean" when a known key is close.

Files are layered: ``include:`` names other descriptions (relative to the including file), read
first, in order, recursively (a cycle is an error; a file reached twice is read once). Later
files win: scalars silently, ``env``/``view`` key by key, ``top`` as a whole. A package defined
again replaces the earlier definition entirely and a ``null`` package removes it; both leave a
warning in :attr:`Stack.warnings`. ``overrides`` given to :func:`load_stack` are one more layer,
read last (relative paths in it are taken from the top file's folder).

Packages whose ``when`` does not match the platform are dropped; a remaining package depending
on one of them is an error naming both. Unknown dependencies and cycles are the graph's
business (:func:`pycvmfs.stacks.graph.resolve`).

YAML numbers are a trap for versions (``1.10`` reads as ``1.1``): integers are taken exactly as
written, floats are refused with a request to quote them. Patches are read and hashed when the
description is loaded; the mapping form ``{path, strip, sha256}`` may also pin the patch's hash
(:func:`dump_stack` writes it, so a dumped stack notices a patch that changed since).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import Condition, PackageSpec, Patch, Source, Stack, ViewSettings
from pycvmfs.stacks.platform import Platform, host_platform

__all__ = ["PACKAGE_NAME", "did_you_mean", "dump_stack", "load_stack", "stack_to_dict",
           "to_yaml"]

PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_STACK_NAME = re.compile(r"[A-Za-z0-9_.+-]+\Z")
_PATH_PART = re.compile(r"[A-Za-z0-9_.+-]+\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_COMMIT = re.compile(r"[0-9a-f]{40}\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+\Z")
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*)+\Z")

TOP_KEYS = ("release", "slot", "platform", "prefix", "repository", "include", "env", "top",
            "view", "packages")
PACKAGE_KEYS = ("version", "source", "depends", "build", "test", "directory", "patches", "env",
                "relocate", "iset", "metadata", "when")
_SOURCE_KEYS = ("url", "sha256", "git", "commit")
_VIEW_KEYS = ("enabled", "priority", "exclude", "pythonpath", "absolute_links")
_WHEN_KEYS = ("os", "arch", "compiler", "buildtype")
_PATCH_KEYS = ("path", "strip", "sha256")


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean X?)`` when one of ``choices`` is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# -- reading files ----------------------------------------------------------------------------

class _YamlInt(int):
    """A YAML integer that remembers how it was written (``010`` stays ``010``)."""

    text: str


class _YamlFloat(float):
    """A YAML float that remembers how it was written, for the "quote it" error."""

    text: str


class _Loader(yaml.SafeLoader):
    """Safe YAML, with numbers keeping their text and duplicate mapping keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} given twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    value = _YamlInt(yaml.SafeLoader.construct_yaml_int(loader, node))
    value.text = node.value
    return value


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    value = _YamlFloat(yaml.SafeLoader.construct_yaml_float(loader, node))
    value.text = node.value
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _read_file(path: Path, shown: str) -> dict:
    """The mapping a ``.yaml``/``.yml``/``.toml`` description holds."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        elif suffix == ".toml":
            with path.open("rb") as f:
                data = tomllib.load(f)
        else:
            raise StackError(f"{shown}: unknown description format {suffix!r} "
                             "(expected .yaml, .yml or .toml)")
    except OSError as e:
        raise StackError(f"cannot read stack description {path}: {e.strerror}") from e
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StackError(f"{shown}: not a valid description: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StackError(f"{shown}: a description is a mapping of keys, not {_kind(data)}")
    return data


# -- value checks -----------------------------------------------------------------------------

def _kind(value: Any) -> str:
    return {bool: "a boolean", _YamlInt: "a number", int: "a number", _YamlFloat: "a number",
            float: "a number", list: "a list", dict: "a mapping", str: "a string",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_keys(data: Mapping, allowed: tuple[str, ...], where: str, what: str) -> None:
    for key in data:
        if key not in allowed:
            raise StackError(f"{where}: unknown {what} {key!r}{did_you_mean(str(key), allowed)}; "
                             f"known: {', '.join(allowed)}")


def _text(value: Any, where: str, field: str, *, numbers: bool = True) -> str:
    """A string field; integers (as written) too when ``numbers``; floats refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        written = getattr(value, "text", repr(value))
        raise StackError(f"{where}: {field} {written} was read as the number {value!r}; "
                         f"quote it (\"{written}\") so it is kept as written")
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return value.text if isinstance(value, _YamlInt) else str(value)
    raise StackError(f"{where}: {field} must be a string, not {_kind(value)}")


def _bool(value: Any, where: str, field: str) -> bool:
    if not isinstance(value, bool):
        raise StackError(f"{where}: {field} must be true or false, not {_kind(value)}")
    return value


def _mapping(value: Any, where: str, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise StackError(f"{where}: {field} must be a mapping, not {_kind(value)}")
    return value


def _str_list(value: Any, where: str, field: str) -> list[str]:
    """A list of strings; a single string counts as a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise StackError(f"{where}: {field} must be a list, not {_kind(value)}")
    return [_text(v, where, f"{field} entry") for v in value]


def _names(value: Any, where: str, field: str) -> tuple[str, ...]:
    """Package names, checked, in order, without repeats."""
    out: dict[str, None] = {}
    for name in _str_list(value, where, field):
        if not PACKAGE_NAME.match(name):
            raise StackError(f"{where}: {field} names {name!r}, which is not a package name")
        out[name] = None
    return tuple(out)


def _env(value: Any, where: str) -> dict[str, str]:
    out = {}
    for key, val in _mapping(value, where, "env").items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise StackError(f"{where}: env variable name {key!r} is not a valid name")
        out[key] = _text(val, where, f"env {key}", numbers=False)
    return out


def _rel_path(value: Any, where: str, field: str) -> str:
    """A relative folder path: no leading ``/``, no ``..``/``.``, plain names only."""
    text = _text(value, where, field)
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
    text = _text(value, where, "version")
    if not text or re.search(r"[\s/]", text):
        raise StackError(f"{where}: version {text!r} must be non-empty, "
                         "without '/' or whitespace")
    return text


def _source(value: Any, where: str) -> Source | None:
    if value is None:
        return None
    data = _mapping(value, where, "source")
    _check_keys(data, _SOURCE_KEYS, f"{where}: source", "key")
    if "url" in data and "git" in data:
        raise StackError(f"{where}: source has both url and git; give one of them")
    if "url" in data:
        urls = tuple(dict.fromkeys(_str_list(data["url"], where, "source url")))
        if not urls:
            raise StackError(f"{where}: source url list is empty")
        for url in urls:
            if not _URL.match(url):
                raise StackError(f"{where}: source url {url!r} is not a URL (scheme://...)")
        if "commit" in data:
            raise StackError(f"{where}: source commit goes with git, not with url")
        if "sha256" not in data:
            raise StackError(f"{where}: source url {urls[0]} needs a sha256")
        digest = _text(data["sha256"], where, "source sha256").lower()
        if not _SHA256.match(digest):
            raise StackError(f"{where}: source sha256 {digest!r} is not 64 hex digits")
        return Source(urls=urls, sha256=digest)
    if "git" in data:
        repo = _text(data["git"], where, "source git")
        if not repo or re.search(r"\s", repo):
            raise StackError(f"{where}: source git {repo!r} is not a repository URL")
        if "sha256" in data:
            raise StackError(f"{where}: source sha256 goes with url, not with git")
        if "commit" not in data:
            raise StackError(f"{where}: source git {repo} needs a commit (the full sha1)")
        commit = _text(data["commit"], where, "source commit").lower()
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
        return "\n".join(_text(line, where, f"{field} line", numbers=False) for line in value)
    return _text(value, where, field, numbers=False)


def _patch(entry: Any, where: str, base_dir: Path) -> Patch:
    pinned = None
    strip = 1
    if isinstance(entry, Mapping):
        _check_keys(entry, _PATCH_KEYS, f"{where}: patch", "key")
        if "path" not in entry:
            raise StackError(f"{where}: patch entry without path")
        given = _text(entry["path"], where, "patch path", numbers=False)
        if "strip" in entry:
            strip = entry["strip"]
            if isinstance(strip, bool) or not isinstance(strip, int) or strip < 0:
                raise StackError(f"{where}: patch {given} strip must be a whole number >= 0")
            strip = int(strip)
        if "sha256" in entry:
            pinned = _text(entry["sha256"], where, "patch sha256").lower()
    else:
        given = _text(entry, where, "patch", numbers=False)
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
    data = _mapping(value, where, "when")
    _check_keys(data, _WHEN_KEYS, f"{where}: when", "key")
    return Condition(**{k: tuple(_str_list(v, where, f"when {k}")) for k, v in data.items()})


def _metadata(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    data = _mapping(value, where, "metadata")
    return tuple(sorted((str(k), _text(v, where, f"metadata {k}")) for k, v in data.items()))


def _package(name: str, body: Any, where: str, base_dir: Path) -> PackageSpec:
    """One package entry of one file, checked; patches read and hashed."""
    data = _mapping(body, where, "a package")
    _check_keys(data, PACKAGE_KEYS, where, "package field")
    directory = _rel_path(data["directory"], where, "directory") if "directory" in data else ""
    return PackageSpec(
        name=name,
        version=_version(data.get("version"), where),
        source=_source(data.get("source"), where),
        depends=_names(data.get("depends", []), where, "depends"),
        build=_script(data.get("build"), where, "build") or "",
        test=_script(data.get("test"), where, "test"),
        directory="" if directory == name else directory,
        patches=tuple(_patch(p, where, base_dir) for p in _plain_list(data.get("patches", []),
                                                                       where, "patches")),
        env=tuple(sorted(_env(data.get("env", {}), where).items())),
        relocate=_bool(data.get("relocate", False), where, "relocate"),
        iset=_bool(data.get("iset", False), where, "iset"),
        metadata=_metadata(data.get("metadata", {}), where),
        when=_condition(data.get("when"), where),
    )


def _plain_list(value: Any, where: str, field: str) -> list:
    if not isinstance(value, list):
        raise StackError(f"{where}: {field} must be a list, not {_kind(value)}")
    return value


# -- layering ---------------------------------------------------------------------------------

@dataclass
class _Declared:
    spec: PackageSpec
    origin: str          # the file (as shown) that declared it


class _Layers:
    """The description being assembled, file after file."""

    def __init__(self, root: Path) -> None:
        self.root_dir = root.parent
        self.name: tuple[str, str] | None = None     # (kind, name)
        self.platform: Platform | None = None
        self.prefix = "lcg"
        self.repository: str | None = None
        self.env: dict[str, str] = {}
        self.view: dict[str, Any] = {}
        self.top: tuple[str, ...] = ()
        self.top_origin = ""
        self.packages: dict[str, _Declared] = {}
        self.warnings: list[str] = []
        self._reading: list[Path] = []
        self._read: set[Path] = set()

    def shown(self, path: Path) -> str:
        """A file's name as messages give it: relative to the top file's folder if inside."""
        try:
            return str(path.relative_to(self.root_dir))
        except ValueError:
            return str(path)

    def read(self, path: Path) -> None:
        path = Path(os.path.abspath(path))
        if path in self._reading:
            chain = [*self._reading[self._reading.index(path):], path]
            raise StackError("include cycle: " + " -> ".join(self.shown(p) for p in chain))
        if path in self._read:
            return
        shown = self.shown(path)
        data = _read_file(path, shown)
        self._reading.append(path)
        try:
            self.apply(data, shown, path.parent)
        finally:
            self._reading.pop()
        self._read.add(path)

    def apply(self, data: Mapping, origin: str, base_dir: Path) -> None:
        """One layer: its includes first, then its own keys."""
        _check_keys(data, TOP_KEYS, origin, "key")
        for inc in _str_list(data.get("include", []), origin, "include"):
            if not (base_dir / inc).is_file():
                raise StackError(f"{origin}: included file {inc} not found "
                                 f"({base_dir / inc})")
            self.read(base_dir / inc)
        if "release" in data and "slot" in data:
            raise StackError(f"{origin}: give either release or slot, not both")
        for kind in ("release", "slot"):
            if kind in data:
                name = _text(data[kind], origin, kind)
                if not _STACK_NAME.match(name):
                    raise StackError(f"{origin}: {kind} name {name!r} may hold only letters, "
                                     "digits and _.+-")
                self.name = (kind, name)
        if "platform" in data:
            text = _text(data["platform"], origin, "platform")
            try:
                self.platform = Platform.parse(text)
            except StackError as e:
                raise StackError(f"{origin}: {e}") from e
        if "prefix" in data:
            self.prefix = _rel_path(data["prefix"], origin, "prefix")
        if "repository" in data:
            fqrn = _text(data["repository"], origin, "repository")
            if not _FQRN.match(fqrn):
                raise StackError(f"{origin}: repository {fqrn!r} is not a repository name "
                                 "(e.g. sft.example.org)")
            self.repository = fqrn
        if "env" in data:
            self.env.update(_env(data["env"], origin))
        if "top" in data:
            self.top, self.top_origin = _names(data["top"], origin, "top"), origin
        if "view" in data:
            self.view.update(_view(data["view"], origin))
        for name, body in _mapping(data.get("packages", {}), origin, "packages").items():
            self._package(name, body, origin, base_dir)

    def _package(self, name: Any, body: Any, origin: str, base_dir: Path) -> None:
        if isinstance(name, _YamlInt):
            name = name.text
        if not isinstance(name, str) or not PACKAGE_NAME.match(name):
            raise StackError(f"{origin}: {name!r} is not a package name "
                             "(letters, digits and _.+-, starting with a letter or digit)")
        old = self.packages.get(name)
        if body is None:
            if old is None:
                self.warnings.append(f"{origin}: removes package {name}, which no earlier "
                                     "file declares")
            else:
                del self.packages[name]
                self.warnings.append(f"{origin}: package {name} {old.spec.version} from "
                                     f"{old.origin} removed")
            return
        spec = _package(name, body, f"{origin}: package {name}", base_dir)
        if old is not None:
            self.warnings.append(f"{origin}: package {name} {old.spec.version} from "
                                 f"{old.origin} replaced by {spec.version}")
        self.packages[name] = _Declared(spec, origin)

    def stack(self, origin: str, platform: Platform | None) -> Stack:
        """The assembled stack for ``platform`` (else the description's, else the host's)."""
        shown = self.shown(Path(origin))
        if self.name is None:
            raise StackError(f"{shown}: the description names neither a release nor a slot")
        platform = platform or self.platform or host_platform()
        kept = {n: d.spec for n, d in self.packages.items() if d.spec.when.matches(platform)}
        for spec in kept.values():
            for dep in spec.depends:
                if dep in self.packages and dep not in kept:
                    raise StackError(
                        f"{self.packages[spec.name].origin}: package {spec.name} depends on "
                        f"{dep}, which its when condition ({self.packages[dep].origin}) leaves "
                        f"out on {platform}")
        for name in self.top:
            if name not in self.packages:
                raise StackError(f"{self.top_origin}: top names {name}, which the stack does "
                                 f"not declare{did_you_mean(name, self.packages)}")
        top = tuple(n for n in self.top if n in kept)
        if self.top and not top:
            raise StackError(f"{self.top_origin}: every top package ({', '.join(self.top)}) is "
                             f"left out on {platform} by its when condition")
        view = ViewSettings(**self.view)
        for name in (*view.priority, *view.exclude):
            if name not in kept:
                self.warnings.append(f"{shown}: view names {name}, which is not a package "
                                     f"of the stack on {platform}")
        kind, name = self.name
        return Stack(name=name, kind=kind, platform=platform, packages=kept, top=top,
                     prefix=self.prefix, repository=self.repository,
                     env=tuple(sorted(self.env.items())), view=view,
                     warnings=self.warnings, origin=origin)


def _view(value: Any, where: str) -> dict[str, Any]:
    data = _mapping(value, where, "view")
    _check_keys(data, _VIEW_KEYS, f"{where}: view", "key")
    out: dict[str, Any] = {}
    for key, val in data.items():
        if key in ("priority", "exclude"):
            out[key] = _names(val, where, f"view {key}")
        else:
            out[key] = _bool(val, where, f"view {key}")
    return out


def load_stack(path: str | os.PathLike[str], *, platform: Platform | str | None = None,
               overrides: Mapping | None = None) -> Stack:
    """Read a stack description (``.yaml``/``.yml``/``.toml``, with its includes) for
    ``platform`` (else the one it names, else the host's); ``overrides`` is a last layer in the
    same schema. Raises :class:`StackError` naming the file (and package) at fault."""
    root = Path(os.path.abspath(path))
    if isinstance(platform, str):
        platform = Platform.parse(platform)
    layers = _Layers(root)
    if not root.is_file():
        raise StackError(f"stack description {root} not found")
    layers.read(root)
    if overrides is not None:
        layers.apply(_mapping(overrides, "overrides", "overrides"), "overrides", root.parent)
    return layers.stack(str(root), platform)


# -- writing ----------------------------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (recipes) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(data: Mapping) -> str:
    """YAML text of a description mapping, keys in the order given, recipes as blocks."""
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)


def _package_dict(spec: PackageSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"version": spec.version}
    src = spec.source
    if src is not None and src.git is not None:
        out["source"] = {"git": src.git, "commit": src.commit}
    elif src is not None:
        out["source"] = {"url": src.urls[0] if len(src.urls) == 1 else list(src.urls),
                         "sha256": src.sha256}
    if spec.depends:
        out["depends"] = list(spec.depends)
    if spec.directory:
        out["directory"] = spec.directory
    if spec.build:
        out["build"] = spec.build
    if spec.test is not None:
        out["test"] = spec.test
    if spec.patches:
        out["patches"] = [{"path": p.path, "strip": p.strip, "sha256": p.sha256}
                          for p in spec.patches]
    if spec.env:
        out["env"] = dict(spec.env)
    if spec.relocate:
        out["relocate"] = True
    if spec.iset:
        out["iset"] = True
    if spec.metadata:
        out["metadata"] = dict(spec.metadata)
    when = {k: list(getattr(spec.when, k)) for k in _WHEN_KEYS if getattr(spec.when, k)}
    if when:
        out["when"] = when
    return out


def stack_to_dict(stack: Stack) -> dict[str, Any]:
    """The description mapping of ``stack`` (canonical key order, defaults left out)."""
    out: dict[str, Any] = {stack.kind: stack.name, "platform": str(stack.platform),
                           "prefix": stack.prefix}
    if stack.repository:
        out["repository"] = stack.repository
    if stack.env:
        out["env"] = dict(stack.env)
    if stack.top:
        out["top"] = list(stack.top)
    if stack.view != ViewSettings():
        v = stack.view
        out["view"] = {"enabled": v.enabled, "priority": list(v.priority),
                       "exclude": list(v.exclude), "pythonpath": v.pythonpath,
                       "absolute_links": v.absolute_links}
    out["packages"] = {name: _package_dict(spec) for name, spec in stack.packages.items()}
    return out


def dump_stack(stack: Stack) -> str:
    """``stack`` as one self-contained YAML description (patches by absolute path and hash);
    :func:`load_stack` gives the same stack back, includes and warnings apart."""
    return to_yaml(stack_to_dict(stack))
