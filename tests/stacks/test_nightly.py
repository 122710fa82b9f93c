"""``stack nightly``: the Mon..Sun ring, markers, ``latest`` moved only after a complete build,
nightly builds linked to release builds, day N+7 replacing day N, retention."""

from __future__ import annotations

import json

from pycvmfs.stacks.platform import host_platform
from pycvmfs.stacks.service import publish_nightly, publish_release
from stacks.conftest import FQRN, head_view

from helpers.stacks import tiny_stack

PLAT = str(host_platform())
DAY = "lcg/nightlies/dev4"


def _short(report, name: str) -> str:
    return next(p["hash"] for p in report.plan["packages"] if p["name"] == name)


def test_a_complete_night_is_marked_linked_and_becomes_latest(tmp_path, stack_pub, node):
    desc = tiny_stack(tmp_path / "src", slot="dev4")
    report = publish_nightly(stack_pub, desc, node(), day="Mon")
    assert report.published and report.complete and report.day == "Mon"
    zeta = _short(report, "zeta")
    with head_view(stack_pub, tmp_path / "rc") as v:
        link = f"{DAY}/Mon/zeta/1.0/{PLAT}"
        assert v.readlink(link, expand=False) == f"../../../../../releases/zeta/1.0-{zeta}/{PLAT}"
        assert v.lstat(f"{link}/lib/libzeta.so.1").is_file  # the link resolves in the repo
        assert v.exists(f"{DAY}/Mon/isDone-{PLAT}")
        assert not v.exists(f"{DAY}/Mon/isDone-unstable-{PLAT}")
        text = v.read_bytes(f"{DAY}/Mon/LCG_externals_{PLAT}.txt").decode()
        assert "VERSION: dev4" in text
        assert f"/cvmfs/{FQRN}/{DAY}/Mon/zeta/1.0/{PLAT}" in text  # absolute in nightlies
        assert v.readlink(f"lcg/views/dev4/latest/{PLAT}", expand=False) == f"../Mon/{PLAT}"
        assert v.exists(f"lcg/views/dev4/Mon/{PLAT}/setup.sh")
        res = json.loads(v.read_bytes(f"lcg/results/dev4/Mon/{PLAT}/results.json"))
        assert res["day"] == "Mon" and res["status"] == "success"


def test_a_failed_night_changes_nothing_and_latest_stays(tmp_path, stack_pub, node):
    publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(), day="Mon")
    head = stack_pub.head()
    bad = tiny_stack(tmp_path / "b", slot="dev4", zeta_base=50, fail="zeta")
    report = publish_nightly(stack_pub, bad, node(), day="Tue")
    assert not report.published and not report.complete
    assert stack_pub.head().root_catalog == head.root_catalog
    status = {p["name"]: p["status"] for p in report.results["packages"]}
    assert status["zeta"] == "failed" and status["eta"] == "skipped"
    assert status["theta"] == "reused"  # unchanged since Monday
    # written for CI even though nothing was published
    assert (tmp_path / "node" / "results" / "dev4" / "Tue" / PLAT / "Build.xml").exists()


def test_a_partial_night_is_marked_unstable_and_latest_does_not_move(tmp_path, stack_pub,
                                                                      node):
    publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(), day="Mon")
    bad = tiny_stack(tmp_path / "b", slot="dev4", zeta_base=51, fail="eta")
    report = publish_nightly(stack_pub, bad, node(), day="Tue", partial=True)
    assert report.published and not report.complete
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert v.exists(f"{DAY}/Tue/isDone-unstable-{PLAT}")
        assert not v.exists(f"{DAY}/Tue/isDone-{PLAT}")
        assert v.exists(f"{DAY}/Tue/zeta/1.0/{PLAT}")
        assert not v.exists(f"{DAY}/Tue/eta")
        assert v.readlink(f"lcg/views/dev4/latest/{PLAT}", expand=False) == f"../Mon/{PLAT}"


def test_unchanged_nightly_builds_are_the_release_builds(tmp_path, stack_pub, node):
    rel = publish_release(stack_pub, tiny_stack(tmp_path / "r"), node())
    night = publish_nightly(stack_pub, tiny_stack(tmp_path / "n", slot="dev4"), node(),
                            day="Wed")
    assert night.added == []  # every build was the release's already
    assert _short(rel, "eta") == _short(night, "eta")
    with head_view(stack_pub, tmp_path / "rc") as v:
        ledger = json.loads(v.read_bytes("lcg/nightlies/.pycvmfs-nightly-builds.json"))
        assert ledger["builds"] == {}  # nothing the nightlies own


def test_day_n_plus_7_replaces_day_n_and_orphaned_nightly_builds_go(tmp_path, stack_pub, node):
    first = publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(),
                            day="Thu")
    old_zeta = _short(first, "zeta")
    second = publish_nightly(stack_pub, tiny_stack(tmp_path / "b", slot="dev4", zeta_base=60),
                             node(), day="Thu")
    new_zeta = _short(second, "zeta")
    assert new_zeta != old_zeta
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert v.readlink(f"{DAY}/Thu/zeta/1.0/{PLAT}", expand=False).endswith(
            f"zeta/1.0-{new_zeta}/{PLAT}")
        # the old zeta (and its old dependents) were nightly-only: deleted with their day
        assert not v.exists(f"lcg/releases/zeta/1.0-{old_zeta}/{PLAT}")
        # theta did not change: kept, still used
        assert v.exists(f"lcg/releases/theta/0.5-{_short(second, 'theta')}/{PLAT}")


def test_retention_never_deletes_a_build_a_release_uses(tmp_path, stack_pub, node):
    night = publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(),
                            day="Fri")
    zeta = _short(night, "zeta")
    publish_release(stack_pub, tiny_stack(tmp_path / "r"), node())  # the same builds
    publish_nightly(stack_pub, tiny_stack(tmp_path / "b", slot="dev4", zeta_base=61), node(),
                    day="Fri")
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert v.exists(f"lcg/releases/zeta/1.0-{zeta}/{PLAT}/lib/libzeta.so.1")
        assert v.exists(f"lcg/releases/LCG_900/zeta/1.0/{PLAT}/lib/libzeta.so.1")


def test_a_partial_night_replacing_the_latest_day_takes_latest_away(tmp_path, stack_pub, node):
    publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(), day="Mon")
    bad = tiny_stack(tmp_path / "b", slot="dev4", zeta_base=52, fail="eta")
    publish_nightly(stack_pub, bad, node(), day="Mon", partial=True)
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert v.exists(f"{DAY}/Mon/isDone-unstable-{PLAT}")
        # latest never names an incomplete day
        assert not v.exists(f"lcg/views/dev4/latest/{PLAT}")


def test_a_release_planned_before_retention_deleted_its_builds_publishes_them_again(
        tmp_path, stack_pub, node):
    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.service import PublishReport, _publish_release, plan_stack

    publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(), day="Sun")
    rel_desc = tiny_stack(tmp_path / "r")
    settings = node()
    plan = plan_stack(load_stack(rel_desc), FQRN, settings, pub=stack_pub)
    assert {p.state for p in plan.packages.values()} == {"published"}
    # meanwhile the nightly moves on and its retention deletes the builds the plan reuses
    publish_nightly(stack_pub, tiny_stack(tmp_path / "b", slot="dev4", zeta_base=62), node(),
                    day="Sun")
    zeta = plan.packages["zeta"]
    with head_view(stack_pub, tmp_path / "rc0") as v:
        assert not v.exists(zeta.rel)
    report = PublishReport(plan=plan.to_json())
    _publish_release(stack_pub, plan, settings, report, tag=None, no_build=False)
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert zeta.rel in report.added
        assert v.lstat(f"lcg/releases/LCG_900/zeta/1.0/{PLAT}/lib/libzeta.so.1").is_file


def test_nightly_rm_takes_a_day_then_the_whole_slot_out_with_its_builds(tmp_path, stack_pub,
                                                                         node):
    from pycvmfs.stacks.service import remove_nightly

    mon = publish_nightly(stack_pub, tiny_stack(tmp_path / "a", slot="dev4"), node(),
                          day="Mon")
    tue = publish_nightly(stack_pub, tiny_stack(tmp_path / "b", slot="dev4", zeta_base=80),
                          node(), day="Tue")
    publish_release(stack_pub, tiny_stack(tmp_path / "r"), node())  # shares Monday's builds
    out = remove_nightly(stack_pub, "dev4", node(), day="Tue")
    assert out["removed"] == [f"dev4/Tue/{PLAT}"]
    tue_zeta = f"lcg/releases/zeta/1.0-{_short(tue, 'zeta')}/{PLAT}"
    assert tue_zeta in out["deleted_builds"]
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert not v.exists(f"{DAY}/Tue") and v.exists(f"{DAY}/Mon/isDone-{PLAT}")
        assert not v.exists(tue_zeta)
        assert not v.exists(f"lcg/releases/zeta/1.0-{_short(tue, 'zeta')}")  # no empty dir
    out = remove_nightly(stack_pub, "dev4", node())
    assert out["removed"] == [f"dev4/Mon/{PLAT}"] and out["deleted_builds"] == []
    with head_view(stack_pub, tmp_path / "rc2") as v:
        assert not v.exists("lcg/nightlies/dev4") and not v.exists("lcg/views/dev4")
        # the release's builds (Monday's too) stay
        assert v.exists(f"lcg/releases/zeta/1.0-{_short(mon, 'zeta')}/{PLAT}/lib/libzeta.so.1")
        assert v.exists(f"lcg/releases/LCG_900/eta/2.1/{PLAT}/bin/eta")
