"""The dependency graph of a stack: checked (every dependency declared, no cycle), restricted to
what the build needs (the closure of ``Stack.top``) and put in one deterministic order.

:func:`resolve` turns a :class:`Stack` into a :class:`Graph`. Edges point from a package to the
packages it depends on. ``Graph.order`` is Kahn's topological order with ties broken by name,
so the same stack always gives the same order whatever the order of its description.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pycvmfs.errors import StackError
from pycvmfs.stacks.description import did_you_mean
from pycvmfs.stacks.model import PackageSpec, Stack

__all__ = ["Graph", "resolve"]


@dataclass(frozen=True)
class Graph:
    """Packages (nodes) and their direct dependencies (edges), in topological ``order``."""

    name: str                                # the release or slot
    packages: dict[str, PackageSpec]         # the nodes, in ``order``
    order: tuple[str, ...]                   # dependencies before dependents; ties by name
    _deps: dict[str, tuple[str, ...]] = field(repr=False)
    _position: dict[str, int] = field(repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._position.update({name: i for i, name in enumerate(self.order)})

    def __contains__(self, name: object) -> bool:
        return name in self.packages

    def __len__(self) -> int:
        return len(self.order)

    def _known(self, name: str) -> None:
        if name not in self.packages:
            raise StackError(f"no package {name} in the graph of {self.name}"
                             f"{did_you_mean(name, self.packages)}")

    def deps(self, name: str) -> tuple[str, ...]:
        """The direct dependencies of ``name``, sorted by name."""
        self._known(name)
        return self._deps[name]

    def closure(self, name: str) -> tuple[str, ...]:
        """Everything ``name`` needs, directly or not (itself excluded), in build order."""
        self._known(name)
        seen: set[str] = set()
        todo = list(self._deps[name])
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self._deps[dep])
        return tuple(sorted(seen, key=self._position.__getitem__))

    def dependents(self, name: str) -> frozenset[str]:
        """Every package of the graph that needs ``name``, directly or not."""
        self._known(name)
        users: dict[str, list[str]] = {n: [] for n in self.order}
        for pkg, deps in self._deps.items():
            for dep in deps:
                users[dep].append(pkg)
        seen: set[str] = set()
        todo = list(users[name])
        while todo:
            pkg = todo.pop()
            if pkg not in seen:
                seen.add(pkg)
                todo.extend(users[pkg])
        return frozenset(seen)

    def levels(self) -> list[list[str]]:
        """Waves that can be built in parallel: a package's wave is one more than the highest
        wave among its dependencies (wave 0 has none); each wave sorted by name."""
        level: dict[str, int] = {}
        for name in self.order:
            level[name] = 1 + max((level[d] for d in self._deps[name]), default=-1)
        waves: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for name in sorted(level):
            waves[level[name]].append(name)
        return waves

    def subset(self, names: Iterable[str]) -> Graph:
        """The graph of ``names`` and everything they need."""
        keep: set[str] = set()
        for name in names:
            self._known(name)
            keep.add(name)
            keep.update(self.closure(name))
        order = tuple(n for n in self.order if n in keep)
        return Graph(name=self.name, packages={n: self.packages[n] for n in order}, order=order,
                     _deps={n: self._deps[n] for n in order})

    def to_dot(self) -> str:
        """Graphviz DOT: one box per package labelled ``name\\nversion``, an edge from each
        package to each of its dependencies."""
        lines = [f"digraph {_dot_id(self.name)} {{", "  node [shape=box];"]
        for name in self.order:
            label = f"{name}\n{self.packages[name].version}"
            lines.append(f"  {_dot_id(name)} [label={_dot_id(label)}];")
        for name in self.order:
            lines.extend(f"  {_dot_id(name)} -> {_dot_id(dep)};" for dep in self._deps[name])
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """``{"nodes": [{name, version, directory, depends}], "order": [...]}``, nodes in
        build order (``directory`` is the folder below ``releases/``)."""
        nodes = [{"name": n, "version": self.packages[n].version,
                  "directory": self.packages[n].dest, "depends": list(self._deps[n])}
                 for n in self.order]
        return {"nodes": nodes, "order": list(self.order)}


def _dot_id(text: str) -> str:
    """A double-quoted DOT identifier (``\\n`` stays a DOT line break)."""
    return json.dumps(text, ensure_ascii=False)


def _cycle(deps: dict[str, tuple[str, ...]]) -> list[str] | None:
    """One dependency cycle (``[a, b, a]``), the first met walking names in sorted order."""
    state: dict[str, int] = {}                    # 1: on the current path, 2: done
    for start in sorted(deps):
        if state.get(start):
            continue
        path = [start]
        state[start] = 1
        stack = [iter(deps[start])]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            elif not state.get(dep):
                state[dep] = 1
                path.append(dep)
                stack.append(iter(deps[dep]))
    return None


def resolve(stack: Stack) -> Graph:
    """Check ``stack``'s dependencies and order the closure of its ``top`` packages (all of them
    when ``top`` is empty). Raises :class:`StackError` for an undeclared dependency or top
    package (with a "did you mean"), a package depending on itself, or a cycle (named
    ``a -> b -> c -> a``)."""
    where = stack.origin or stack.name
    deps: dict[str, tuple[str, ...]] = {}
    for name, spec in stack.packages.items():
        for dep in spec.depends:
            if dep not in stack.packages:
                raise StackError(f"{name} depends on {dep}, which the stack ({where}) does not "
                                 f"declare{did_you_mean(dep, stack.packages)}")
            if dep == name:
                raise StackError(f"{name} depends on itself ({where}): {name} -> {name}")
        deps[name] = tuple(sorted(set(spec.depends)))
    cycle = _cycle(deps)
    if cycle:
        raise StackError(f"dependency cycle in {where}: {' -> '.join(cycle)}")
    for name in stack.top:
        if name not in stack.packages:
            raise StackError(f"top package {name} is not declared by the stack ({where})"
                             f"{did_you_mean(name, stack.packages)}")

    wanted: set[str] = set()
    todo = list(stack.top or stack.packages)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(deps[name])

    # Kahn: a package is ready once all its dependencies are placed; smallest name first.
    waiting = {n: len(deps[n]) for n in wanted}
    users: dict[str, list[str]] = {n: [] for n in wanted}
    for name in wanted:
        for dep in deps[name]:
            users[dep].append(name)
    ready = [n for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for user in users[name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return Graph(name=stack.name, packages={n: stack.packages[n] for n in order},
                 order=tuple(order), _deps={n: deps[n] for n in order})
