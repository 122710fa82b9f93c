"""``pycvmfs stack``: the verbs end to end on a real repository (publish, nightly, plan, show,
diff, graph, export spack, import-heptools), JSON output typed, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pycvmfs.cli.main import cli
from pycvmfs.stacks.platform import host_platform
from stacks.conftest import FQRN

from helpers.stacks import tiny_stack

PLAT = str(host_platform())
HEPTOOLS = Path(__file__).parent / "data" / "heptools"


@pytest.fixture
def run(tmp_path, stack_pub):
    env = {"PYCVMFS_CONFIG_DIR": str(tmp_path / "repo" / "etc"),
           "PYCVMFS_STACK_WORK": str(tmp_path / "work"), "PYCVMFS_PROGRESS": "0"}

    def invoke(*args: str, code: int = 0):
        res = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        assert res.exit_code == code, res.output
        return res

    return invoke


def test_publish_nightly_show_diff_and_spack_export(tmp_path, run):
    desc = tiny_stack(tmp_path / "a")
    out = json.loads(run("stack", "publish", FQRN, str(desc), "--tag", "LCG_900",
                         "--json").output)
    assert out["published"] is True and isinstance(out["revision"], int)
    assert {p["state"] for p in out["plan"]["packages"]} == {"build"}
    again = run("stack", "publish", FQRN, str(desc))
    assert "nothing changed" in again.output

    shown = json.loads(run("stack", "show", f"{FQRN}:LCG_900/{PLAT}", "--json").output)
    names = {p["name"]: p for p in shown["packages"]}
    assert set(names) == {"zeta", "eta", "theta", "iota", "toygen"}
    assert names["eta"]["prefix"] == f"/cvmfs/{FQRN}/lcg/releases/LCG_900/eta/2.1/{PLAT}"

    nightly = tiny_stack(tmp_path / "n", slot="dev4", zeta_base=70)
    run("stack", "nightly", FQRN, str(nightly), "--day", "Sat")
    d = run("stack", "diff", f"{FQRN}:LCG_900/{PLAT}", f"{FQRN}:dev4/latest/{PLAT}",
            "--json", code=1)
    diff = json.loads(d.output)
    assert sorted(e["name"] for e in diff["rebuilt"]) == ["eta", "toygen", "zeta"]
    assert diff["added"] == [] and diff["removed"] == []
    same = run("stack", "diff", f"{FQRN}:LCG_900/{PLAT}", f"{FQRN}:LCG_900/{PLAT}")
    assert same.exit_code == 0

    spack = yaml.safe_load(run("stack", "export", "spack", f"{FQRN}:LCG_900/{PLAT}").output)
    ext = spack["packages"]["zeta"]["externals"][0]
    assert ext["spec"].startswith("zeta@1.0")
    assert ext["prefix"] == f"/cvmfs/{FQRN}/lcg/releases/LCG_900/zeta/1.0/{PLAT}"
    assert spack["packages"]["zeta"]["buildable"] is False


def test_plan_dry_run_and_graph(tmp_path, run):
    desc = tiny_stack(tmp_path / "a")
    plan = json.loads(run("stack", "plan", str(desc), "--json").output)
    assert plan["counts"] == {"published": 0, "cached": 0, "build": 5}
    assert all(len(p["hash"]) == 5 and len(p["full_hash"]) == 64 for p in plan["packages"])
    dry = run("stack", "build", str(desc), "--dry-run")
    assert "5 build" in dry.output
    dot = run("stack", "graph", str(desc), "--format", "dot").output
    assert dot.startswith('digraph "LCG_900"')
    assert '"eta" -> "zeta";' in dot and '"iota" -> "theta";' in dot
    order = run("stack", "graph", str(desc)).output.splitlines()
    assert order[0].startswith("0: ") and "zeta" in order[0]


def test_a_description_error_is_a_message_not_a_traceback(tmp_path, run):
    desc = tiny_stack(tmp_path / "a")
    data = yaml.safe_load(desc.read_text())
    data["packages"]["eta"]["depends"] = ["zetta"]
    desc.write_text(yaml.safe_dump(data))
    res = run("stack", "plan", str(desc), code=1)
    assert "zetta" in res.output and "Traceback" not in res.output
    data["packages"]["eta"]["depends"] = ["zeta"]
    data["packages"]["zeta"]["depends"] = ["eta"]
    desc.write_text(yaml.safe_dump(data))
    res = run("stack", "graph", str(desc), code=1)
    assert "->" in res.output and "cycle" in res.output.lower()
    data["packages"]["zeta"]["depends"] = []
    data["platform"] = "x86_64-el9-gcc13"
    desc.write_text(yaml.safe_dump(data))
    res = run("stack", "plan", str(desc), code=1)
    assert "bad platform string" in res.output


def test_import_heptools_writes_a_loadable_description(tmp_path, run):
    files = sorted(HEPTOOLS.glob("heptools-*.cmake"))
    release = next(f for f in files if f.name[9:-6].isdigit())
    out = tmp_path / "imported.yaml"
    res = run("stack", "import-heptools", str(release), "--platform",
              "x86_64-el9-gcc13-opt", "-I", str(HEPTOOLS / "generators"), "-o", str(out))
    desc = yaml.safe_load(out.read_text())
    assert desc["release"].startswith("LCG_") and desc["packages"]
    assert "warning" in res.output  # packages without recipes are named
    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.graph import resolve

    st = load_stack(out)
    assert resolve(st).order
