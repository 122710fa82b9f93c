"""``stack publish``: real builds of a small stack into a real repository as one transaction,
read back through the verified reader; reuse by hash; a failed build publishes nothing."""

from __future__ import annotations

import json
import posixpath

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.platform import host_platform
from pycvmfs.stacks.service import publish_release
from pycvmfs.stacks.summary import parse_summary
from stacks.conftest import FQRN, head_view

from helpers.stacks import tiny_stack

PLAT = str(host_platform())


def _states(report) -> dict[str, str]:
    return {p["name"]: p["state"] for p in report.plan["packages"]}


def _short(report, name: str) -> str:
    return next(p["hash"] for p in report.plan["packages"] if p["name"] == name)


def test_release_is_published_in_the_lcg_layout_as_one_revision(tmp_path, stack_pub, node):
    desc = tiny_stack(tmp_path / "src")
    before = stack_pub.head().revision
    report = publish_release(stack_pub, desc, node(), tag="LCG_900")
    assert report.published and report.revision == before + 1
    assert set(_states(report).values()) == {"build"}
    assert {p["status"] for p in report.results["packages"]} == {"built"}
    zeta = _short(report, "zeta")
    toygen = _short(report, "toygen")
    with head_view(stack_pub, tmp_path / "rc") as v:
        pkg = f"lcg/releases/zeta/1.0-{zeta}/{PLAT}"
        assert v.lstat(f"{pkg}/lib/libzeta.so.1").is_file
        record = json.loads(v.read_bytes(f"{pkg}/.pycvmfs-build.json"))
        assert record["hash"].startswith(record["hash"][:5]) and record["short"] == zeta
        line = v.read_bytes(f"{pkg}/.buildinfo_zeta.txt").decode()
        assert f"HASH: {zeta}" in line and "NAME: zeta" in line
        assert v.read_bytes(f"{pkg}/version.txt").decode().strip() == "zeta=1.0"
        # the release index: real directories, relative symlink at the platform level
        link = f"lcg/releases/LCG_900/zeta/1.0/{PLAT}"
        assert v.readlink(link, expand=False) == f"../../../zeta/1.0-{zeta}/{PLAT}"
        glink = f"lcg/releases/LCG_900/MCGenerators/toygen/0.3/{PLAT}"
        assert v.readlink(glink, expand=False) == \
            f"../../../../MCGenerators/toygen/0.3-{toygen}/{PLAT}"
        ext = parse_summary(v.read_bytes(
            f"lcg/releases/LCG_900/LCG_externals_{PLAT}.txt").decode(), what="externals")
        gen = parse_summary(v.read_bytes(
            f"lcg/releases/LCG_900/LCG_generators_{PLAT}.txt").decode(), what="generators")
        assert ext.platform == PLAT and ext.version == "900"
        assert sorted(e.name for e in ext.entries) == ["eta", "iota", "theta", "zeta"]
        assert [e.name for e in gen.entries] == ["toygen"]
        eta = next(e for e in ext.entries if e.name == "eta")
        assert eta.depends == (f"zeta-{zeta}",)
        assert eta.directory == f"./eta/2.1/{PLAT}"
        twin = json.loads(v.read_bytes(f"lcg/releases/LCG_900/LCG_externals_{PLAT}.json"))
        assert {p["name"] for p in twin["packages"]} == {"eta", "iota", "theta", "zeta"}
        # the view: symlinks into the hashed prefixes, .pth merged, conflicts reported
        view = f"lcg/views/LCG_900/{PLAT}"
        target = v.readlink(f"{view}/bin/eta", expand=False)
        assert posixpath.normpath(posixpath.join(f"{view}/bin", target)) == \
            f"lcg/releases/eta/2.1-{_short(report, 'eta')}/{PLAT}/bin/eta"
        pth = v.read_bytes(f"{view}/lib/python3/site-packages/easy-install.pth").decode()
        assert pth.splitlines() == ["theta-path", "iota-path"]
        assert any(c["path"] == "bin/common-tool" for c in report.conflicts)
        assert v.lstat(f"{view}/setup.sh").is_file and v.lstat(f"{view}/setup.csh").is_file
        vj = json.loads(v.read_bytes(f"{view}/view.json"))
        assert any(c["path"] == "bin/common-tool" for c in vj["conflicts"])
        # CI results of the run, with the generator's validation
        res = json.loads(v.read_bytes(f"lcg/results/LCG_900/{PLAT}/results.json"))
        tg = next(p for p in res["packages"] if p["name"] == "toygen")
        assert tg["test_status"] == "passed"
        assert b"<Test" in v.read_bytes(f"lcg/results/LCG_900/{PLAT}/Test.xml")
    assert "LCG_900" in [t.name for t in stack_pub.tags()]


def test_publishing_the_same_release_again_builds_and_changes_nothing(tmp_path, stack_pub,
                                                                       node):
    desc = tiny_stack(tmp_path / "src")
    first = publish_release(stack_pub, desc, node())
    again = publish_release(stack_pub, desc, node())
    assert set(_states(again).values()) == {"published"}
    assert again.results is None and again.revision is None
    assert stack_pub.head().revision == first.revision


def test_a_recipe_change_rebuilds_exactly_it_and_its_dependents(tmp_path, stack_pub, node):
    first = publish_release(stack_pub, tiny_stack(tmp_path / "a"), node())
    changed = tiny_stack(tmp_path / "b", zeta_base=43)
    report = publish_release(stack_pub, changed, node())
    assert _states(report) == {"zeta": "build", "eta": "build", "toygen": "build",
                               "theta": "published", "iota": "published"}
    built = {p["name"]: p for p in report.results["packages"]}
    assert built["toygen"]["test_status"] == "failed"  # the GenSer reference no longer holds
    old, new = _short(first, "zeta"), _short(report, "zeta")
    assert old != new
    with head_view(stack_pub, tmp_path / "rc") as v:
        # the earlier build is still there, untouched; the release points at the new one
        assert v.exists(f"lcg/releases/zeta/1.0-{old}/{PLAT}/lib/libzeta.so.1")
        assert v.readlink(f"lcg/releases/LCG_900/zeta/1.0/{PLAT}", expand=False) == \
            f"../../../zeta/1.0-{new}/{PLAT}"


def test_the_binary_cache_is_reused_by_another_node_without_building(tmp_path, stack_pub,
                                                                       node):
    from pycvmfs.stacks.service import build_stack

    desc = tiny_stack(tmp_path / "src")
    _, run = build_stack(desc, node("builder"))
    assert run.ok and {p.status for p in run.packages} == {"built"}
    report = publish_release(stack_pub, desc, node("publisher"), no_build=True)
    assert set(_states(report).values()) == {"cached"} and report.published
    assert not (tmp_path / "publisher" / "build").exists() or \
        not any((tmp_path / "publisher" / "build").iterdir())


def test_a_failed_build_publishes_nothing_and_names_the_package(tmp_path, stack_pub, node):
    publish_release(stack_pub, tiny_stack(tmp_path / "a"), node())
    head = stack_pub.head()
    bad = tiny_stack(tmp_path / "b", zeta_base=44, fail="eta")
    with pytest.raises(StackError, match=r"eta 2\.1: failed"):
        publish_release(stack_pub, bad, node())
    assert stack_pub.head().revision == head.revision
    assert stack_pub.head().root_catalog == head.root_catalog
    feed = json.loads((tmp_path / "node" / "results" / "LCG_900" / PLAT /
                       "results.json").read_text())
    status = {p["name"]: p["status"] for p in feed["packages"]}
    assert status["eta"] == "failed" and status["zeta"] == "built"


def test_no_build_refuses_when_the_cache_lacks_a_build(tmp_path, stack_pub, node):
    with pytest.raises(StackError, match="--no-build"):
        publish_release(stack_pub, tiny_stack(tmp_path / "src"), node(), no_build=True)
    assert stack_pub.head().revision == 1


def test_dry_run_reports_the_plan_and_builds_nothing(tmp_path, stack_pub, node):
    report = publish_release(stack_pub, tiny_stack(tmp_path / "src"), node(), dry_run=True)
    assert set(_states(report).values()) == {"build"} and not report.published
    assert not (tmp_path / "node" / "installs").exists()
    assert stack_pub.head().revision == 1


def test_republishing_without_a_package_removes_its_release_link(tmp_path, stack_pub, node):
    import yaml

    desc = tiny_stack(tmp_path / "src")
    publish_release(stack_pub, desc, node())
    data = yaml.safe_load(desc.read_text())
    del data["packages"]["iota"]
    desc.write_text(yaml.safe_dump(data))
    report = publish_release(stack_pub, desc, node())
    assert report.revision is not None
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert not v.exists("lcg/releases/LCG_900/iota")
        assert v.exists(f"lcg/releases/LCG_900/theta/0.5/{PLAT}")
        # the build itself stays: a release never removes a published build
        assert len(v.listdir("lcg/releases/iota/")) == 1


def test_a_tag_asked_for_an_unchanged_release_is_still_made(tmp_path, stack_pub, node):
    desc = tiny_stack(tmp_path / "src")
    publish_release(stack_pub, desc, node())
    again = publish_release(stack_pub, desc, node(), tag="LCG_900")
    assert again.revision is None
    tags = {t.name: t for t in stack_pub.tags()}
    assert tags["LCG_900"].root_hash == stack_pub.head().root_catalog


def test_parallel_builds_unpack_a_shared_cached_dependency_once(tmp_path, node):
    import threading

    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.scheduler import StackBuilder
    from pycvmfs.stacks.service import build_stack, plan_stack

    desc = tiny_stack(tmp_path / "src")
    build_stack(desc, node("first"))
    settings = node("second")
    plan = plan_stack(load_stack(desc), FQRN, settings)
    sb = StackBuilder(plan, cache=settings.open_cache(), work_dir=settings.work_dir,
                      sources=settings.source_cache())
    zeta = plan.packages["zeta"]
    got, errors = [], []

    def unpack():
        try:
            got.append(sb.ensure_local(zeta))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=unpack) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(got)) == 1
    assert (got[0] / "lib" / "libzeta.so.1").is_file()
    assert [p.name for p in got[0].parent.iterdir()] == [got[0].name]  # no temporaries left


def test_two_packages_giving_one_view_env_variable_publish_nothing(tmp_path, stack_pub, node):
    import yaml

    desc = tiny_stack(tmp_path / "src")
    data = yaml.safe_load(desc.read_text())
    data["packages"]["theta"]["view_env"] = {"SHARED_DATA": "$PREFIX/lib"}
    data["packages"]["iota"]["view_env"] = {"SHARED_DATA": "$PREFIX/bin"}
    desc.write_text(yaml.safe_dump(data))
    head = stack_pub.head()
    with pytest.raises(StackError, match=rf"view lcg/views/LCG_900/{PLAT}: packages theta and "
                                         "iota both set the view_env variable SHARED_DATA"):
        publish_release(stack_pub, desc, node())
    assert stack_pub.head().revision == head.revision
    assert stack_pub.head().root_catalog == head.root_catalog


def test_view_variables_refuse_a_name_two_packages_claim() -> None:
    from pycvmfs.stacks.model import PackageSpec
    from pycvmfs.stacks.plan import PlannedPackage
    from pycvmfs.stacks.writer import view_variables

    def planned(name: str, view_env: tuple = ()) -> PlannedPackage:
        return PlannedPackage(spec=PackageSpec(name=name, version="1", view_env=view_env),
                              full="f", recipe="r", short="s", rel=f"lcg/releases/{name}/1-s",
                              prefix="", deps=())

    gen = planned("gen", (("GEN_DATA", "share/gen"), ("GEN_ROOT", "")))
    assert view_variables([planned("zlib"), gen], "v") == {
        "ZLIB_HOME": "lcg/releases/zlib/1-s", "GEN_HOME": "lcg/releases/gen/1-s",
        "GEN_DATA": "lcg/releases/gen/1-s/share/gen", "GEN_ROOT": "lcg/releases/gen/1-s"}
    # a hook named like another package's generated variable (a spec made without the loader)
    with pytest.raises(StackError, match="view v: view_env variable ZLIB_HOME of package gen "
                                         "is the generated <NAME>_HOME of package zlib"):
        view_variables([planned("gen", (("ZLIB_HOME", ""),)), planned("zlib")], "v")
    # two names that make one <NAME>_HOME
    with pytest.raises(StackError, match="view v: packages a-b and a_b both get the generated "
                                         "variable A_B_HOME"):
        view_variables([planned("a-b"), planned("a_b")], "v")
