"""Stack descriptions: ``stack.yaml`` (or ``stack.toml``) read into a :class:`Stack`.

A description names one release (``release: LCG_900``) or nightly slot (``slot: dev4``), the
platform, the repository folder (``prefix``), the stack-wide build environment, the roots of the
build (``top``), view settings and the packages (version, source, dependencies, recipe, patches,
conditions). Every key is checked; an unknown one is an error naming the file and the key, with
a "did you mean" when a known key is close. This module reads the files (YAML through a strict
loader, or TOML), layers them and writes a stack back out; the checks of each value and of one
package entry are :mod:`pycvmfs.stacks.packagefields`.

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

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import PackageSpec, Stack, ViewSettings
from pycvmfs.stacks.packagefields import PACKAGE_KEYS as PACKAGE_KEYS
from pycvmfs.stacks.packagefields import (
    PACKAGE_NAME,
    WHEN_KEYS,
    YamlFloat,
    YamlInt,
    as_bool,
    as_mapping,
    as_text,
    check_keys,
    did_you_mean,
    env_vars,
    kind_of,
    package_names,
    package_spec,
    rel_path,
    str_list,
)
from pycvmfs.stacks.platform import Platform, host_platform

__all__ = ["PACKAGE_NAME", "did_you_mean", "dump_stack", "load_stack", "stack_to_dict",
           "to_yaml"]

_STACK_NAME = re.compile(r"[A-Za-z0-9_.+-]+\Z")
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*)+\Z")

TOP_KEYS = ("release", "slot", "platform", "prefix", "repository", "include", "env", "top",
            "view", "packages")
_VIEW_KEYS = ("enabled", "priority", "exclude", "pythonpath", "absolute_links")


# -- reading files ----------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """Safe YAML, with numbers keeping their text and duplicate mapping keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"a key must be a plain value, not {type(key).__name__}",
                    key_node.start_mark)
            if isinstance(key, (str, int)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} given twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    value = YamlInt(yaml.SafeLoader.construct_yaml_int(loader, node))
    value.text = node.value
    return value


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    value = YamlFloat(yaml.SafeLoader.construct_yaml_float(loader, node))
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
        raise StackError(f"{shown}: a description is a mapping of keys, not {kind_of(data)}")
    return data


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
        check_keys(data, TOP_KEYS, origin, "key")
        for inc in str_list(data.get("include", []), origin, "include"):
            if not (base_dir / inc).is_file():
                raise StackError(f"{origin}: included file {inc} not found "
                                 f"({base_dir / inc})")
            self.read(base_dir / inc)
        if "release" in data and "slot" in data:
            raise StackError(f"{origin}: give either release or slot, not both")
        for kind in ("release", "slot"):
            if kind in data:
                name = as_text(data[kind], origin, kind)
                if not _STACK_NAME.match(name):
                    raise StackError(f"{origin}: {kind} name {name!r} may hold only letters, "
                                     "digits and _.+-")
                self.name = (kind, name)
        if "platform" in data:
            text = as_text(data["platform"], origin, "platform")
            try:
                self.platform = Platform.parse(text)
            except StackError as e:
                raise StackError(f"{origin}: {e}") from e
        if "prefix" in data:
            self.prefix = rel_path(data["prefix"], origin, "prefix")
        if "repository" in data:
            fqrn = as_text(data["repository"], origin, "repository")
            if not _FQRN.match(fqrn):
                raise StackError(f"{origin}: repository {fqrn!r} is not a repository name "
                                 "(e.g. sft.example.org)")
            self.repository = fqrn
        if "env" in data:
            self.env.update(env_vars(data["env"], origin))
        if "top" in data:
            self.top, self.top_origin = package_names(data["top"], origin, "top"), origin
        if "view" in data:
            self.view.update(_view(data["view"], origin))
        for name, body in as_mapping(data.get("packages", {}), origin, "packages").items():
            self._package(name, body, origin, base_dir)

    def _package(self, name: Any, body: Any, origin: str, base_dir: Path) -> None:
        if isinstance(name, YamlInt):
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
        spec = package_spec(name, body, f"{origin}: package {name}", base_dir)
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
    data = as_mapping(value, where, "view")
    check_keys(data, _VIEW_KEYS, f"{where}: view", "key")
    out: dict[str, Any] = {}
    for key, val in data.items():
        if key in ("priority", "exclude"):
            out[key] = package_names(val, where, f"view {key}")
        else:
            out[key] = as_bool(val, where, f"view {key}")
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
        layers.apply(as_mapping(overrides, "overrides", "overrides"), "overrides", root.parent)
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
    if spec.view_env:
        out["view_env"] = {k: "$PREFIX" + (f"/{v}" if v else "") for k, v in spec.view_env}
    when = {k: list(getattr(spec.when, k)) for k in WHEN_KEYS if getattr(spec.when, k)}
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
