"""Scale-out on an existing CI engine: the GitLab pipeline ``stack ci generate`` writes is run
job by job (its own script lines, through bash), two build workers with separate work
directories fill one SeaweedFS binary cache with disjoint parts of the stack, and a third node
publishes from the cache alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pycvmfs.stacks.platform import host_platform
from stacks.conftest import FQRN, head_view

from helpers.seaweed import ACCESS_KEY, SECRET_KEY
from helpers.stacks import tiny_stack

PLAT = str(host_platform())


def _run_job(job: dict, *, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    script = "\n".join(["set -eu", *job["script"]])
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False, timeout=900)


def test_two_workers_fill_an_s3_cache_and_a_third_node_publishes_it(tmp_path, stack_pub,
                                                                    seaweed):
    bucket = seaweed.new_bucket("stacks")
    cache = f"s3://{bucket}/builds"
    desc = tiny_stack(tmp_path / "src")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "PYCVMFS_PROGRESS": "0"}
    ci = tmp_path / "ci"
    ci.mkdir()
    gen = subprocess.run(
        [sys.executable, "-m", "pycvmfs.cli.main", "stack", "ci", "generate", str(desc),
         "--format", "gitlab", "--fqrn", FQRN, "--platform", PLAT, "--cache", cache,
         "--split", "group", "-o", str(ci / ".gitlab-ci.yml")],
        env=env, capture_output=True, text=True, check=False)
    assert gen.returncode == 0, gen.stderr
    pipeline = yaml.safe_load((ci / ".gitlab-ci.yml").read_text())
    builds = [(name, job) for name, job in pipeline.items()
              if isinstance(job, dict) and job.get("stage") == "build"]
    assert len(builds) == 2  # the graph's two levels, one worker each
    done: set[str] = set()
    for i, (name, job) in enumerate(builds):
        assert set(job.get("needs", [])) <= done
        worker = {**env, "PYCVMFS_STACK_WORK": str(tmp_path / f"worker{i}")}
        res = _run_job(job, cwd=ci, env=worker)
        assert res.returncode == 0, f"{name}:\n{res.stdout}\n{res.stderr}"
        done.add(name)
    # each worker built only its own group
    built = {}
    for level in ("level0", "level1"):
        feed = json.loads((ci / "results" / level / "LCG_900" / PLAT /
                           "results.json").read_text())
        built[level] = sorted(p["name"] for p in feed["packages"] if p["status"] == "built")
    assert built == {"level0": ["theta", "zeta"], "level1": ["eta", "iota", "toygen"]}
    # the publisher: its own work directory, nothing but the cache and the repository
    publisher = {**env, "PYCVMFS_STACK_WORK": str(tmp_path / "publisher"),
                 "PYCVMFS_CONFIG_DIR": str(tmp_path / "repo" / "etc")}
    res = _run_job(pipeline["publish"], cwd=ci, env=publisher)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert pipeline["publish"]["resource_group"] == f"cvmfs-{FQRN}"
    assert not (tmp_path / "publisher" / "build").exists()
    assert not (tmp_path / "publisher" / "sources").exists()
    with head_view(stack_pub, tmp_path / "rc") as v:
        assert v.lstat(f"lcg/releases/LCG_900/eta/2.1/{PLAT}/bin/eta").is_file
        assert v.exists(f"lcg/views/LCG_900/{PLAT}/setup.sh")
        # the build jobs' results (their artifacts) are the release's results
        feed = json.loads(v.read_bytes(f"lcg/results/LCG_900/{PLAT}/results.json"))
        assert {p["name"]: p["status"] for p in feed["packages"]} == {
            "zeta": "built", "theta": "built", "eta": "built", "iota": "built",
            "toygen": "built"}
