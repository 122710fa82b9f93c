"""View planning on small package trees made in tmp: what is taken, link targets (applied on disk
and resolved), every conflict policy, exclusions, symlinks leaving a package, view.json."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.model import ViewSettings
from pycvmfs.stacks.view import ViewEntry, ViewInput, ViewPlan, plan_view

PLATFORM = "x86_64-debian12-gcc12-opt"
VIEW_REL = f"lcg/views/LCG_900/{PLATFORM}"
MOUNT = "/cvmfs/sft.example.org"


def make_package(repo: Path, name: str, files: dict[str, str | bytes | None],
                 links: dict[str, str] | None = None, version: str = "1.0") -> ViewInput:
    """A package prefix below ``repo`` (files: path → text, bytes, or None for an empty dir)."""
    short = hashlib.sha256(name.encode()).hexdigest()[:5]
    prefix_rel = f"lcg/releases/{name}/{version}-{short}/{PLATFORM}"
    root = repo / prefix_rel
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    return ViewInput(name=name, version=version, short=short, install_dir=root,
                     prefix_rel=prefix_rel)


def apply(plan: ViewPlan, repo: Path) -> Path:
    """Materialise a plan below ``repo`` the way the publisher would."""
    view = repo / plan.view_rel
    view.mkdir(parents=True)
    for e in plan.entries:
        path = view / e.path
        if e.kind == "dir":
            path.mkdir()
        elif e.kind == "symlink":
            os.symlink(e.target, path)
        else:
            assert e.content is not None
            path.write_bytes(e.content)
    return view


def by_path(plan: ViewPlan) -> dict[str, ViewEntry]:
    return {e.path: e for e in plan.entries}


def test_what_is_taken_and_relative_links_resolve(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    zlib = make_package(repo, "zlib", {
        "bin/zpipe": "#!/bin/sh\n", "lib/libz.so.1": "ELF", "include/zlib.h": "/* h */",
        "share/man/man3/zlib.3": "man", "share/info/dir": "index", "share/info/zlib.info": "i",
        "share/doc/zlib/LICENSE": "l", "share/doc/zlib/README.md": "r", "share/doc/zlib/FAQ": "f",
        "lib/python3.11/site-packages/zmod/README": "data read by the module",
        "lib/python3.11/site-packages/zmod/__init__.py": "",
        "logs/build.log": "log", ".buildinfo_zlib.txt": "x", ".pycvmfs-build.json": "{}",
        "zlib-env.sh": "export X=1", "README": "top", "LICENSE": "top", "doc/index.html": "d",
        "bin/zpipe~": "backup", "bin/.zpipe.swp": "swap", "bin/.hidden": "h",
        "lib/zlib-env.sh": "deep env script", "share/empty": None, ".filelist": "x",
    }, links={"lib/libz.so": "libz.so.1", "lib64": "lib"})
    plan = plan_view([zlib], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    entries = by_path(plan)
    assert sorted(entries) == [e.path for e in plan.entries]     # sorted output
    assert {p for p, e in entries.items() if e.kind == "symlink"} == {
        "bin/zpipe", "lib/libz.so.1", "lib/libz.so", "lib64", "include/zlib.h",
        "share/man/man3/zlib.3", "share/info/zlib.info", "share/doc/zlib/FAQ",
        "lib/python3.11/site-packages/zmod/README",
        "lib/python3.11/site-packages/zmod/__init__.py"}
    assert {p for p, e in entries.items() if e.kind == "dir"} == {
        "bin", "lib", "include", "share", "share/man", "share/man/man3", "share/info",
        "share/doc", "share/doc/zlib", "share/empty", "lib/python3.11",
        "lib/python3.11/site-packages", "lib/python3.11/site-packages/zmod"}
    assert all(e.package == "zlib" for e in plan.entries) and plan.conflicts == []
    assert entries["bin/zpipe"].target == (
        f"../../../../releases/zlib/1.0-{zlib.short}/{PLATFORM}/bin/zpipe")
    view = apply(plan, repo)
    for rel in ("bin/zpipe", "lib/libz.so", "share/man/man3/zlib.3"):
        assert (view / rel).resolve() == (zlib.install_dir / rel).resolve(), rel
    assert (view / "lib64" / "libz.so.1").read_text() == "ELF"   # a package symlink, linked


def test_links_still_resolve_when_the_repository_moves(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    pkg = make_package(repo, "fastjet", {"lib/libfastjet.so": "so"})
    plan = plan_view([pkg], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    apply(plan, repo)
    moved = tmp_path / "elsewhere" / "mount point"
    moved.parent.mkdir()
    repo.rename(moved)
    assert (moved / VIEW_REL / "lib/libfastjet.so").read_text() == "so"


def test_absolute_links(tmp_path: Path) -> None:
    pkg = make_package(tmp_path, "zlib", {"lib/libz.so": "so"})
    plan = plan_view([pkg], view_rel=VIEW_REL, mount_root=MOUNT + "/",
                     settings=ViewSettings(absolute_links=True))
    assert by_path(plan)["lib/libz.so"].target == f"{MOUNT}/{pkg.prefix_rel}/lib/libz.so"


def test_first_wins_and_grey_list(tmp_path: Path) -> None:
    a = make_package(tmp_path, "a", {"bin/tool": "a", "bin/pytest": "a", "bin/f2py": "a",
                                     "lib/py/ns/__init__.py": "a",
                                     "lib/py/ns/__pycache__/__init__.cpython-311.pyc": "a"})
    b = make_package(tmp_path, "b", {"bin/tool": "b", "bin/pytest": "b", "bin/f2py": "b",
                                     "lib/py/ns/__init__.py": "b",
                                     "lib/py/ns/__pycache__/__init__.cpython-311.pyc": "b"})
    c = make_package(tmp_path, "c", {"bin/tool": "c"})
    plan = plan_view([a, b, c], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    conflicts = {c.path: (c.winner, c.losers, c.policy) for c in plan.conflicts}
    assert conflicts == {
        "bin/tool": ("a", ("b", "c"), "first"),
        "bin/pytest": ("a", ("b",), "grey"),
        "bin/f2py": ("a", ("b",), "grey"),
        "lib/py/ns/__init__.py": ("a", ("b",), "grey"),
        "lib/py/ns/__pycache__/__init__.cpython-311.pyc": ("a", ("b",), "grey"),
    }
    assert by_path(plan)["bin/tool"].target.endswith(f"/a/1.0-{a.short}/{PLATFORM}/bin/tool")
    assert all(by_path(plan)[p].package == "a" for p in conflicts)


def test_priority(tmp_path: Path) -> None:
    a = make_package(tmp_path, "a", {"bin/tool": "a", "bin/pytest": "a"})
    b = make_package(tmp_path, "b", {"bin/tool": "b", "bin/pytest": "b"})
    c = make_package(tmp_path, "c", {"bin/tool": "c"})
    d = make_package(tmp_path, "d", {"bin/tool": "d"})
    # b and c listed, c first: c beats the unlisted a and the later-listed b; d (unlisted) loses
    plan = plan_view([a, b, c, d], view_rel=VIEW_REL, mount_root=MOUNT,
                     settings=ViewSettings(priority=("c", "b")))
    conflicts = {x.path: x for x in plan.conflicts}
    tool = conflicts["bin/tool"]
    assert (tool.winner, sorted(tool.losers), tool.policy) == ("c", ["a", "b", "d"], "priority")
    entry = by_path(plan)["bin/tool"]
    assert entry.package == "c" and entry.target.endswith(f"/c/1.0-{c.short}/{PLATFORM}/bin/tool")
    # a priority package also takes a grey path
    assert (conflicts["bin/pytest"].winner, conflicts["bin/pytest"].policy) == ("b", "priority")
    # the listed package first in the input order keeps its file against a lower-listed one
    plan2 = plan_view([c, b], view_rel=VIEW_REL, mount_root=MOUNT,
                      settings=ViewSettings(priority=("c", "b")))
    assert [(x.winner, x.losers, x.policy) for x in plan2.conflicts] == [
        ("c", ("b",), "priority")]


def test_pth_files_are_merged(tmp_path: Path) -> None:
    sp = "lib/python3.11/site-packages"
    a = make_package(tmp_path, "a", {f"{sp}/easy-install.pth": "./a.egg\nshared\n",
                                     f"{sp}/setuptools.pth": "import x"})
    b = make_package(tmp_path, "b", {f"{sp}/easy-install.pth": "shared\n./b.egg"})
    c = make_package(tmp_path, "c", {}, links={f"{sp}/easy-install.pth": "../../../real.pth",
                                               "real.pth": "unused"})
    (c.install_dir / "real.pth").unlink()
    (c.install_dir / "real.pth").write_text("./c.egg\n./a.egg\n")
    plan = plan_view([a, b, c], view_rel=VIEW_REL, settings=ViewSettings(priority=("c",)),
                     mount_root=MOUNT)
    merged = by_path(plan)[f"{sp}/easy-install.pth"]
    assert merged.kind == "file" and merged.package == "a"
    assert merged.content == b"./a.egg\nshared\n./b.egg\n./c.egg\n"
    assert [(x.path, x.winner, x.losers, x.policy) for x in plan.conflicts] == [
        (f"{sp}/easy-install.pth", "a", ("b", "c"), "merged")]
    # a .pth given by a single package stays a link
    assert by_path(plan)[f"{sp}/setuptools.pth"].kind == "symlink"
    view = apply(plan, tmp_path)
    assert (view / sp / "easy-install.pth").read_bytes() == merged.content


def test_directory_wins_over_file_both_ways(tmp_path: Path) -> None:
    a = make_package(tmp_path, "a", {"lib/real/x.so": "a"}, links={"lib64": "lib"})
    b = make_package(tmp_path, "b", {"lib64/libb.so": "b", "share/thing": "b"})
    c = make_package(tmp_path, "c", {"share/thing/inner": "c"})
    plan = plan_view([a, b, c], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    entries = by_path(plan)
    assert entries["lib64"].kind == "dir" and entries["lib64"].package == "b"
    assert entries["lib64/libb.so"].kind == "symlink"
    assert entries["share/thing"].kind == "dir" and entries["share/thing"].package == "c"
    assert entries["share/thing/inner"].kind == "symlink"
    conflicts = {x.path: (x.winner, x.losers, x.policy) for x in plan.conflicts}
    assert conflicts == {"lib64": ("b", ("a",), "directory"),
                         "share/thing": ("c", ("b",), "directory")}
    # the other order: the directory held first keeps the path, priority does not matter
    plan2 = plan_view([b, a], view_rel=VIEW_REL, settings=ViewSettings(priority=("a",)),
                      mount_root=MOUNT)
    assert [(x.path, x.winner, x.losers, x.policy) for x in plan2.conflicts] == [
        ("lib64", "b", ("a",), "directory")]


def test_excluded_packages(tmp_path: Path) -> None:
    a = make_package(tmp_path, "a", {"bin/a": "a"})
    b = make_package(tmp_path, "b", {"bin/b": "b"})
    plan = plan_view([a, b], view_rel=VIEW_REL, settings=ViewSettings(exclude=("b",)),
                     mount_root=MOUNT)
    assert [e.path for e in plan.entries] == ["bin", "bin/a"]
    assert [p.name for p in plan.packages] == ["a"] and plan.excluded == ["b"]


def test_symlinks_leaving_the_package_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.so").write_text("x")
    (outside / "x.pth").write_text("evil\n")
    a = make_package(tmp_path / "repo", "a", {"lib/a.so": "a"},
                     links={"lib/ext": str(outside), "lib/loop": "loop", "share": "/"})
    plan = plan_view([a], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    assert {e.path: e.kind for e in plan.entries} == {
        "lib": "dir", "lib/a.so": "symlink", "lib/ext": "symlink", "lib/loop": "symlink",
        "share": "symlink"}
    # merging the content of a .pth that leads out of its package is refused, naming it
    sp = "lib/python3.11/site-packages"
    b = make_package(tmp_path / "repo", "b", {f"{sp}/x.pth": "b\n"})
    c = make_package(tmp_path / "repo", "c", {}, links={f"{sp}/x.pth": str(outside / "x.pth")})
    with pytest.raises(StackError, match=r"x\.pth of package 'c' is a symlink leaving"):
        plan_view([b, c], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    d = make_package(tmp_path / "repo", "d", {}, links={f"{sp}/x.pth": "gone.pth"})
    with pytest.raises(StackError, match=r"x\.pth of package 'd' is a dangling symlink"):
        plan_view([b, d], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)


def test_symlinked_install_dir_is_walked(tmp_path: Path) -> None:
    real = make_package(tmp_path / "releases", "zlib", {"lib/libz.so": "so"})
    nightly = tmp_path / "nightly-zlib"
    nightly.symlink_to(real.install_dir)
    pkg = ViewInput("zlib", "1.0", real.short, nightly, "lcg/nightlies/dev4/Mon/zlib/1.0/p")
    plan = plan_view([pkg], view_rel="lcg/views/dev4/Mon/p", settings=ViewSettings(),
                     mount_root=MOUNT)
    assert by_path(plan)["lib/libz.so"].target == (
        "../../../../../nightlies/dev4/Mon/zlib/1.0/p/lib/libz.so")


def test_errors_name_package_and_path(tmp_path: Path) -> None:
    a = make_package(tmp_path, "a", {"bin/a": "a"})
    with pytest.raises(StackError, match="package 'a' given twice"):
        plan_view([a, a], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    gone = ViewInput("gone", "1", "abcde", tmp_path / "nope", "lcg/releases/gone/1-abcde/p")
    with pytest.raises(StackError, match=re.escape(f"{tmp_path / 'nope'} of package 'gone'")):
        plan_view([gone], view_rel=VIEW_REL, settings=ViewSettings(), mount_root=MOUNT)
    with pytest.raises(StackError, match=r"view path '\.\./up'"):
        plan_view([a], view_rel="../up", settings=ViewSettings(), mount_root=MOUNT)


def test_deterministic_plan_and_view_json(tmp_path: Path) -> None:
    a = make_package(tmp_path, "a", {"bin/tool": "a", "lib/x.pth": "a", "include/a.h": ""})
    b = make_package(tmp_path, "b", {"bin/tool": "b", "lib/x.pth": "b"}, version="2.1")
    args = {"view_rel": VIEW_REL, "settings": ViewSettings(exclude=("zz",)), "mount_root": MOUNT}
    plan = plan_view([a, b], **args)
    assert plan == plan_view([a, b], **args)
    doc = plan.to_json(release="LCG_900", platform=PLATFORM)
    assert doc == {
        "schema": "pycvmfs-view/1", "view": VIEW_REL,
        "packages": [{"name": "a", "version": "1.0", "hash": a.short, "prefix": a.prefix_rel},
                     {"name": "b", "version": "2.1", "hash": b.short, "prefix": b.prefix_rel}],
        "excluded": [],
        "conflicts": [{"path": "bin/tool", "winner": "a", "losers": ["b"], "policy": "first"},
                      {"path": "lib/x.pth", "winner": "a", "losers": ["b"], "policy": "merged"}],
        "counts": {"directories": 3, "symlinks": 2, "files": 1},
        "release": "LCG_900", "platform": PLATFORM,
    }
