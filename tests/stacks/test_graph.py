"""resolve() and Graph: dependency errors, deterministic order, closures, waves, DOT/JSON."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycvmfs.errors import StackError
from pycvmfs.stacks.description import load_stack
from pycvmfs.stacks.graph import Graph, resolve
from pycvmfs.stacks.model import PackageSpec, Stack
from pycvmfs.stacks.platform import Platform

PLATFORM = Platform.parse("x86_64-el9-gcc13-opt")


def make_stack(deps: Mapping[str, Sequence[str]], top: Sequence[str] = (),
               versions: Mapping[str, str] | None = None) -> Stack:
    packages = {name: PackageSpec(name=name, version=(versions or {}).get(name, "1.0"),
                                  depends=tuple(d))
                for name, d in deps.items()}
    return Stack(name="LCG_900", kind="release", platform=PLATFORM, packages=packages,
                 top=tuple(top), origin="/stacks/stack.yaml")


def graph_error(deps: Mapping[str, Sequence[str]], top: Sequence[str] = ()) -> str:
    with pytest.raises(StackError) as info:
        resolve(make_stack(deps, top))
    return str(info.value)


# A small ROOT-like stack: ROOT needs Python, xz, zlib, libpng(zlib); Python needs xz, zlib.
ROOTISH = {
    "ROOT": ["Python", "libpng", "zlib", "xz"],
    "Python": ["zlib", "xz", "zlib"],
    "libpng": ["zlib"],
    "zlib": [],
    "xz": [],
    "doxygen": ["Python"],
    "lonely": [],
}


def test_order_is_topological_with_ties_by_name() -> None:
    graph = resolve(make_stack(ROOTISH))
    assert graph.order == ("lonely", "xz", "zlib", "Python", "doxygen", "libpng", "ROOT")
    assert list(graph.packages) == list(graph.order)


def test_order_does_not_depend_on_declaration_order() -> None:
    names = list(ROOTISH)
    orders = set()
    for seed in range(20):
        random.Random(seed).shuffle(names)
        shuffled = {n: list(reversed(ROOTISH[n])) for n in names}
        orders.add(resolve(make_stack(shuffled)).order)
    assert len(orders) == 1


def test_top_restricts_the_graph_to_its_closure() -> None:
    graph = resolve(make_stack(ROOTISH, top=["libpng", "xz"]))
    assert graph.order == ("xz", "zlib", "libpng")
    assert set(graph.packages) == {"xz", "zlib", "libpng"}
    assert "ROOT" not in graph and len(graph) == 3


def test_deps_closure_dependents() -> None:
    graph = resolve(make_stack(ROOTISH))
    assert graph.deps("Python") == ("xz", "zlib")          # deduplicated, sorted
    assert graph.deps("ROOT") == ("Python", "libpng", "xz", "zlib")
    assert graph.closure("ROOT") == ("xz", "zlib", "Python", "libpng")
    assert graph.closure("doxygen") == ("xz", "zlib", "Python")
    assert graph.closure("zlib") == ()
    assert graph.dependents("zlib") == frozenset({"Python", "libpng", "ROOT", "doxygen"})
    assert graph.dependents("ROOT") == frozenset()
    with pytest.raises(StackError, match=r"no package pyton in the graph of LCG_900 "
                                         r"\(did you mean Python\?\)"):
        graph.deps("pyton")


def test_levels_are_build_waves() -> None:
    graph = resolve(make_stack(ROOTISH))
    assert graph.levels() == [["lonely", "xz", "zlib"], ["Python", "libpng"],
                              ["ROOT", "doxygen"]]


def test_subset_is_the_closure_of_the_names() -> None:
    graph = resolve(make_stack(ROOTISH))
    sub = graph.subset(["doxygen", "libpng"])
    assert sub.order == ("xz", "zlib", "Python", "doxygen", "libpng")
    assert sub.deps("doxygen") == ("Python",)
    assert sub.levels() == [["xz", "zlib"], ["Python", "libpng"], ["doxygen"]]
    with pytest.raises(StackError, match="no package nope"):
        graph.subset(["nope"])


def test_unknown_dependency_names_package_file_and_suggestion() -> None:
    assert graph_error({"libpng": ["zlibb"], "zlib": []}) == (
        "libpng depends on zlibb, which the stack (/stacks/stack.yaml) does not declare "
        "(did you mean zlib?)")
    assert graph_error({"a": [], "b": []}, top=["c"]) == (
        "top package c is not declared by the stack (/stacks/stack.yaml)")


def test_self_dependency_and_cycles_are_named() -> None:
    assert graph_error({"a": ["a"]}) == "a depends on itself (/stacks/stack.yaml): a -> a"
    assert graph_error({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == (
        "dependency cycle in /stacks/stack.yaml: a -> b -> c -> a")
    # a cycle away from top is still an error: the description is broken
    assert "b -> c -> b" in graph_error({"a": [], "b": ["c"], "c": ["b"]}, top=["a"])


def test_to_json_and_to_dot() -> None:
    stack = make_stack({"pythia8": ["lhapdf"], "lhapdf": []},
                       versions={"pythia8": "312", "lhapdf": "6.5.4"})
    stack.packages["pythia8"] = PackageSpec(name="pythia8", version="312",
                                            depends=("lhapdf",),
                                            directory="MCGenerators/pythia8")
    graph = resolve(stack)
    assert graph.to_json() == {
        "nodes": [{"name": "lhapdf", "version": "6.5.4", "directory": "lhapdf",
                   "depends": []},
                  {"name": "pythia8", "version": "312", "directory": "MCGenerators/pythia8",
                   "depends": ["lhapdf"]}],
        "order": ["lhapdf", "pythia8"]}

    dot = resolve(make_stack(ROOTISH)).to_dot()
    lines = dot.splitlines()
    assert lines[0] == 'digraph "LCG_900" {' and lines[-1] == "}"
    node = re.compile(r'^  "([^"]+)" \[label="([^"\\]+)\\n([^"\\]+)"\];$')
    edge = re.compile(r'^  "([^"]+)" -> "([^"]+)";$')
    nodes = {m[1]: m[3] for m in map(node.match, lines) if m}
    edges = {(m[1], m[2]) for m in map(edge.match, lines) if m}
    assert nodes == {name: "1.0" for name in ROOTISH}
    assert edges == {(a, b) for a, deps in ROOTISH.items() for b in deps}
    # every line is a header, a node, an edge, the node style or the closing brace
    assert len(lines) == 3 + len(nodes) + len(edges)
    assert dot.count("{") == dot.count("}") == 1


def test_resolve_a_loaded_description(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text("slot: dev4\nplatform: x86_64-el9-gcc13-opt\ntop: [app]\npackages:\n"
                    "  app: {version: '1', depends: [lib]}\n  lib: {version: '2'}\n"
                    "  tool: {version: '3', depends: [lbi]}\n")
    with pytest.raises(StackError) as info:
        resolve(load_stack(path))
    assert str(info.value) == (f"tool depends on lbi, which the stack ({path}) does not "
                               "declare (did you mean lib?)")


@st.composite
def random_dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[str]]:
    """200 packages; each depends only on packages later in a random permutation."""
    count = 200
    names = [f"pkg{i:03d}" for i in range(count)]
    perm = draw(st.permutations(names))
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(perm):
        later = perm[i + 1:]
        picks = draw(st.lists(st.integers(0, max(len(later) - 1, 0)), max_size=6)) \
            if later else []
        deps[name] = [later[p] for p in picks]
    declared = draw(st.permutations(names))
    return {n: deps[n] for n in declared}, draw(st.lists(st.sampled_from(names), max_size=5))


def assert_consistent(graph: Graph, deps: Mapping[str, Sequence[str]]) -> None:
    position = {name: i for i, name in enumerate(graph.order)}
    assert len(position) == len(graph.order)
    for name in graph.order:
        assert set(graph.deps(name)) == set(deps[name])
        for dep in deps[name]:
            assert position[dep] < position[name]
    waves = {name: i for i, wave in enumerate(graph.levels()) for name in wave}
    assert set(waves) == set(graph.order)
    for name in graph.order:
        assert all(waves[d] < waves[name] for d in deps[name])
        assert waves[name] == 0 or any(waves[d] == waves[name] - 1 for d in deps[name])


@settings(max_examples=40, deadline=None)
@given(random_dags())
def test_random_dag_orders_respect_every_edge(case: tuple[dict[str, list[str]], list[str]]) \
        -> None:
    deps, top = case
    graph = resolve(make_stack(deps, top))
    if top:
        wanted = set(top)
        for name in top:
            wanted.update(resolve(make_stack(deps)).closure(name))
        assert set(graph.order) == wanted
    else:
        assert set(graph.order) == set(deps)
    assert_consistent(graph, deps)
    # the same stack declared in another order gives the same order
    reordered = {n: list(reversed(deps[n])) for n in sorted(deps, reverse=True)}
    assert resolve(make_stack(reordered, top)).order == graph.order
