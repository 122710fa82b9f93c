"""Start-up: ``pycvmfs --version`` and a no-op ``pycvmfs snapshot`` (what cron runs every few
minutes on every stratum 1) import only what they need; ``--help`` still lists every verb."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pycvmfs import __version__
from pycvmfs.cli.main import VERB_MODULES, cli

from helpers.replica import GOLDEN_FQRN

#: what neither path may import: signatures, terminal output, SQLite (catalogs, history,
#: reflog, quota), the web stack, S3, other compressors, the client and the replication engine
HEAVY = ("cryptography", "rich", "sqlite3", "_sqlite3", "fastapi", "pydantic", "starlette",
         "uvicorn", "jinja2", "boto3", "botocore", "zstandard", "pycvmfs.client",
         "pycvmfs.format.manifest", "pycvmfs.format.whitelist", "pycvmfs.format.signature",
         "pycvmfs.format.catalog", "pycvmfs.publish.repository", "pycvmfs.replica.replicate",
         "pycvmfs.replica.pull", "pycvmfs.storage.httpcopy", "pycvmfs.storage._httpcopy",
         "pycvmfs.web", "pycvmfs.stacks", "pycvmfs.containers")
#: what ``--version`` does not import either (not even click: it is answered before)
NOT_FOR_VERSION = ("click", "urllib3", "pycvmfs.cli.common", "pycvmfs.replica", "pycvmfs.storage",
                   "pycvmfs.publish", *(f"pycvmfs.cli.{m}" for m in VERB_MODULES))

#: runs ``pycvmfs ARGS`` as the console script does, then prints the imported modules as JSON
_DRIVER = """
import json, sys
sys.argv[0] = "pycvmfs"
try:
    from pycvmfs.cli.main import main
    main()
finally:
    sys.stdout.flush()
    print("\\nMODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _run(*args: str, env: dict[str, str] | None = None) -> tuple[str, set[str]]:
    p = subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True,
                       env=env, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stderr.splitlines() if x.startswith("MODULES "))
    return p.stdout, set(json.loads(line.removeprefix("MODULES ")))


def _imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_the_verb_table_matches_what_the_modules_register():
    for module, verbs in VERB_MODULES.items():
        group = click.Group()
        importlib.import_module(f"pycvmfs.cli.{module}").register(group)
        assert tuple(sorted(group.commands)) == verbs, module


def test_help_lists_every_verb_with_its_short_help():
    out, _ = _run("--help")
    listed = {line.split()[0]: line for line in out.split("Commands:")[1].splitlines()
              if line.strip()}
    every = {v for verbs in VERB_MODULES.values() for v in verbs}
    assert set(listed) == every
    assert "Replicate a repository (stratum 1)" in listed["snapshot"]
    assert "Check this machine's client set-up" in listed["chksetup"]


def test_a_verb_runs_after_its_module_is_imported_on_demand():
    res = CliRunner().invoke(cli, ["snapshot", "--help"])
    assert res.exit_code == 0 and "--trunk-only" in res.output
    res = CliRunner().invoke(cli, ["no-such-verb"])
    assert res.exit_code == 2 and "No such command 'no-such-verb'" in res.output
    res = CliRunner().invoke(cli, ["snapshoot"])  # the suggestions of an eager group
    assert res.exit_code == 2 and "Did you mean 'snapshot'?" in res.output


def test_the_package_names_stay_functions_after_the_submodule_is_imported():
    import pycvmfs.replica
    import pycvmfs.replica.snapshot  # (would set the package attribute of that name)
    from pycvmfs.replica import ReplicaConfig, snapshot, snapshot_replica

    assert callable(snapshot) and callable(snapshot_replica) and isinstance(ReplicaConfig, type)
    assert pycvmfs.replica.snapshot is snapshot and snapshot.__module__.endswith(".snapshot")


def test_version_imports_no_verb_and_nothing_heavy():
    out, modules = _run("--version")
    assert out == f"pycvmfs, version {__version__}\n"
    assert CliRunner().invoke(cli, ["--version"], prog_name="pycvmfs").output == out
    assert _imported(modules, HEAVY + NOT_FOR_VERSION) == []


def test_a_noop_snapshot_imports_nothing_heavy(golden_server, golden_keys, cli_env,
                                               tmp_path: Path):
    etc, storage = tmp_path / "etc", tmp_path / "srv" / GOLDEN_FQRN
    env = {**cli_env(), "PYCVMFS_CONFIG_DIR": str(etc)}
    _run("add-replica", GOLDEN_FQRN, f"{golden_server.url}/{GOLDEN_FQRN}", str(storage),
         "-k", str(golden_keys), "--workers", "4", env=env)
    out, modules = _run("snapshot", GOLDEN_FQRN, env=env)
    assert "(first snapshot)" in out
    assert "cryptography" in " ".join(modules)  # (the check below can see it)

    out, modules = _run("snapshot", GOLDEN_FQRN, "--json", env=env)
    report = json.loads(out)
    assert (report["changed"], report["revision"], report["previous_revision"]) == (
        False, 3, 3)
    assert _imported(modules, HEAVY) == []
    # with the progress display asked for (as on a terminal): nothing to show, rich not loaded
    out, modules = _run("snapshot", GOLDEN_FQRN, env={**env, "PYCVMFS_PROGRESS": "1"})
    assert out.startswith(f"{GOLDEN_FQRN}: up to date at revision 3")
    assert _imported(modules, HEAVY) == []


@pytest.mark.parametrize("args", [("--version",), ("--help",)])
def test_the_console_script_and_the_module_agree(args):
    script = Path(sys.executable).with_name("pycvmfs")
    if not script.exists():
        pytest.skip("no console script next to the interpreter")
    a = subprocess.run([str(script), *args], capture_output=True, text=True, check=True)
    b = subprocess.run([sys.executable, "-m", "pycvmfs.cli.main", *args], capture_output=True,
                       text=True, check=True)
    assert a.stdout == b.stdout
