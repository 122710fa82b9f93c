"""The plan of a stack on one platform: every package's hashes, where it goes, and whether it is
published already, waiting in the binary cache or still to build (``--dry-run`` prints it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from pycvmfs.stacks.binarycache import BinaryCache
from pycvmfs.stacks.graph import Graph, resolve
from pycvmfs.stacks.hashing import Toolchain, display_hashes, recipe_hashes, stack_hashes
from pycvmfs.stacks.layout import StackLayout
from pycvmfs.stacks.model import PackageSpec, Stack

__all__ = ["PlannedPackage", "StackPlan", "make_plan"]

#: a package's state in a plan
PUBLISHED, CACHED, BUILD = "published", "cached", "build"


@dataclass
class PlannedPackage:
    spec: PackageSpec
    full: str            # the build hash (binary cache key)
    recipe: str          # the platform-independent hash the display hash is cut from
    short: str           # the display hash in paths
    rel: str             # repository-relative prefix
    prefix: str          # absolute prefix (/cvmfs/FQRN/...)
    deps: tuple[str, ...]
    state: str = BUILD
    record: dict | None = None   # the published build record (state published)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class StackPlan:
    stack: Stack
    layout: StackLayout
    graph: Graph
    toolchain: Toolchain
    packages: dict[str, PlannedPackage] = field(default_factory=dict)  # topological order

    @property
    def platform(self) -> str:
        return str(self.stack.platform)

    def closure(self, name: str) -> list[PlannedPackage]:
        return [self.packages[n] for n in self.graph.closure(name)]

    def counts(self) -> dict[str, int]:
        out = {PUBLISHED: 0, CACHED: 0, BUILD: 0}
        for p in self.packages.values():
            out[p.state] += 1
        return out

    def to_json(self) -> dict:
        return {
            "stack": self.stack.name, "kind": self.stack.kind, "platform": self.platform,
            "repository": self.layout.fqrn, "top": self.layout.top,
            "compiler": self.toolchain.identity(), "counts": self.counts(),
            "packages": [{"name": p.name, "version": p.spec.version, "directory": p.spec.dest,
                          "hash": p.short, "full_hash": p.full, "recipe_hash": p.recipe,
                          "prefix": p.prefix, "depends": list(p.deps), "state": p.state}
                         for p in self.packages.values()],
        }

    def render_text(self) -> str:
        lines = [f"{self.stack.name} on {self.platform} into /cvmfs/{self.layout.fqrn}/"
                 f"{self.layout.top}: " + ", ".join(f"{v} {k}" for k, v in
                                                    self.counts().items())]
        width = max((len(p.name) for p in self.packages.values()), default=4)
        for p in self.packages.values():
            lines.append(f"  {p.state:<9} {p.name:<{width}} {p.spec.version} {p.short}")
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)


def make_plan(stack: Stack, layout: StackLayout, *, toolchain: Toolchain | None = None,
              cache: BinaryCache | None = None,
              published: Callable[[str], dict | None] | None = None,
              taken: Callable[[str, str, str], str | None] | None = None,
              force: frozenset[str] = frozenset()) -> StackPlan:
    """Resolve ``stack``, hash it and find each build: ``published(rel)`` returns the build
    record of a published prefix (None: not there); ``taken(dest, version, short)`` the recipe
    hash published under a display hash (collision check); ``force``: names rebuilt even when
    cached (never republished over a published prefix: their hash is the same)."""
    graph = resolve(stack)
    tc = toolchain or Toolchain.detect(dict(stack.env))
    full = stack_hashes(stack, graph.order, graph.deps, toolchain=tc,
                        store_root=layout.store_root)
    recipe = recipe_hashes(stack, graph.order, graph.deps)
    specs = {n: graph.packages[n] for n in graph.order}
    short = display_hashes(recipe, specs, taken=taken or (lambda d, v, s: None))
    plan = StackPlan(stack=stack, layout=layout, graph=graph, toolchain=tc)
    platform = str(stack.platform)
    for name in graph.order:
        spec = specs[name]
        rel = layout.package_rel(spec.dest, spec.version, short[name], platform)
        p = PlannedPackage(spec=spec, full=full[name], recipe=recipe[name], short=short[name],
                           rel=rel, prefix=layout.abs(rel), deps=graph.deps(name))
        record = published(rel) if published else None
        if record is not None:
            if record.get("hash") != p.full:
                from pycvmfs.errors import StackError

                raise StackError(
                    f"{name}: /{rel} is published already with build hash "
                    f"{record.get('hash', '?')[:12]}, not {p.full[:12]} (a published hashed "
                    "directory is never changed: the toolchain or store differs from the "
                    "one that built it)")
            p.state = PUBLISHED
            p.record = record
        elif cache is not None and name not in force and cache.has(p.full):
            p.state = CACHED
        plan.packages[name] = p
    return plan
