"""CI pipeline generation: GitLab YAML (jobs, needs, scripts, resource group) and Jenkinsfiles
(stages, lock, balanced braces); commands quoted for a real shell; the results folders cleaned
at the start of every job and handed from the build jobs to the publish job (GitLab artifacts,
Jenkins stash/unstash)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.cigen import generate_pipeline

PLATFORMS = ["x86_64-el9-gcc13-opt", "aarch64-el9-gcc13-opt"]
BASE = dict(stack_file="stacks/dev4.toml", fqrn="sft-nightlies.example.org",
            platforms=PLATFORMS, cache="s3://bucket/cache")
GROUPS = {"base": ["zlib", "Python"], "gen": ["pythia8"], "root": ["ROOT"]}
DEPENDS = {"ROOT": ["Python", "zlib"], "pythia8": ["zlib"], "Python": ["zlib"]}


def gitlab(**kw: object) -> dict:
    text = generate_pipeline(fmt="gitlab", **{**BASE, **kw})  # type: ignore[arg-type]
    assert "&id" not in text and "*id" not in text  # no YAML anchors: plain to read
    return yaml.safe_load(text)


def test_gitlab_one_build_job_per_platform_and_one_publish() -> None:
    doc = gitlab(image="registry.example.org/builder:el9")
    assert doc["stages"] == ["build", "publish"]
    assert doc["default"] == {"image": "registry.example.org/builder:el9"}
    builds = {k: v for k, v in doc.items() if k.startswith("build:")}
    assert list(builds) == [f"build:{p}" for p in PLATFORMS]
    for p in PLATFORMS:
        job = builds[f"build:{p}"]
        assert job["stage"] == "build" and "needs" not in job
        assert job["script"] == ["rm -rf results/",
                                 f"pycvmfs stack build stacks/dev4.toml --platform {p} "
                                 "--cache s3://bucket/cache --results results/"]
        assert job["artifacts"] == {"when": "always", "paths": ["results/"]}
    publish = doc["publish"]
    assert publish["stage"] == "publish"
    assert publish["needs"] == list(builds)
    assert publish["resource_group"] == "cvmfs-sft-nightlies.example.org"
    assert publish["artifacts"] == {"when": "always", "paths": ["results/"]}
    # the builds' artifacts are in results/ before the script: only its own folder is cleaned
    assert publish["script"] == ["rm -rf results/publish"] + [
        f"pycvmfs stack publish sft-nightlies.example.org stacks/dev4.toml --platform {p} "
        "--cache s3://bucket/cache --results results/publish --merge-results results/ "
        "--no-build" for p in PLATFORMS]
    assert set(doc) == {"stages", "default", "publish", *builds}
    assert "default" not in gitlab()


def test_gitlab_groups_need_the_groups_they_depend_on() -> None:
    doc = gitlab(split="group", groups=GROUPS, depends=DEPENDS)
    for p in PLATFORMS:
        base, gen, root = (doc[f"build:{p}:{g}"] for g in GROUPS)
        assert "needs" not in base
        for group, job in zip(GROUPS, (base, gen, root), strict=True):
            assert job["script"][0] == f"rm -rf results/{group}"   # its own folder only
            assert job["artifacts"] == {"when": "always", "paths": [f"results/{group}/"]}
        assert base["script"][1].endswith(f"--platform {p} --cache s3://bucket/cache "
                                          "--results results/base --only zlib,Python")
        assert gen["needs"] == [f"build:{p}:base"]
        assert root["needs"] == [f"build:{p}:base"]  # not gen: ROOT uses no generator
        assert root["script"][1].endswith("--results results/root --only ROOT")
    assert doc["publish"]["needs"] == [f"build:{p}:{g}" for p in PLATFORMS for g in GROUPS]
    # without dependencies: every earlier group of the same platform
    doc = gitlab(split="group", groups=GROUPS)
    assert doc["build:aarch64-el9-gcc13-opt:root"]["needs"] == [
        "build:aarch64-el9-gcc13-opt:base", "build:aarch64-el9-gcc13-opt:gen"]


def test_output_is_deterministic() -> None:
    for fmt in ("gitlab", "jenkins"):
        one = generate_pipeline(fmt=fmt, split="group", groups=GROUPS, depends=DEPENDS, **BASE)
        two = generate_pipeline(fmt=fmt, split="group", groups=dict(GROUPS),
                                depends=dict(reversed(DEPENDS.items())), **BASE)
        assert one == two


def _strip_groovy_strings(text: str) -> str:
    return re.sub(r"'(?:[^'\\\n]|\\.)*'", "''", text)


def _balanced(text: str) -> bool:
    depth = 0
    for ch in re.sub(r"[^{}]", "", _strip_groovy_strings(text)):
        depth += 1 if ch == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def test_jenkinsfile_stages_lock_and_braces() -> None:
    text = generate_pipeline(fmt="jenkins", image="builder:el9", **BASE)
    assert _balanced(text)
    assert not _balanced(text + "}") and not _balanced(text.replace("}", "", 1))
    stages = re.findall(r"stage\('([^']*)'\)", text)
    assert stages == ["build", *(f"build:{p}" for p in PLATFORMS), "publish"]
    assert text.count("parallel {") == 1
    assert "lock(resource: 'cvmfs-sft-nightlies.example.org') {" in text
    assert text.count("--no-build'") == len(PLATFORMS)
    assert text.count("agent { docker { image 'builder:el9' } }") == len(PLATFORMS) + 1
    assert text.count("archiveArtifacts artifacts: 'results/**'") == len(PLATFORMS)
    assert text.startswith("// Generated by pycvmfs")
    text = generate_pipeline(fmt="jenkins", split="group", groups=GROUPS, **BASE)
    assert _balanced(text)
    stages = re.findall(r"stage\('([^']*)'\)", text)
    assert stages == [s for g in GROUPS
                      for s in (f"build:{g}", *(f"build:{p}:{g}" for p in PLATFORMS))
                      ] + ["publish"]
    assert text.count("parallel {") == len(GROUPS)
    assert "agent any" in text


def _stage_bodies(text: str) -> dict[str, str]:
    """Stage name → the text of that stage (up to its closing brace)."""
    out = {}
    for m in re.finditer(r"stage\('([^']*)'\) \{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out[m.group(1)] = text[m.end():i]
    return out


@pytest.mark.parametrize("kw", [{}, {"split": "group", "groups": GROUPS}])
def test_jenkins_build_stages_stash_their_results_for_the_publish_stage(kw: dict) -> None:
    text = generate_pipeline(fmt="jenkins", **{**BASE, **kw})  # type: ignore[arg-type]
    stages = _stage_bodies(text)
    builds = [name for name in stages if name.count(":") >= (2 if kw else 1)]
    assert len(builds) == len(PLATFORMS) * (len(GROUPS) if kw else 1)
    stashes = []
    for name in builds:
        body = stages[name]
        steps = re.findall(r"^\s*(sh|stash|archiveArtifacts|unstash)\b(.*)$", body, re.M)
        assert steps[0] == ("sh", " 'rm -rf results'"), name   # clean before building
        assert steps[1][0] == "sh" and "pycvmfs stack build" in steps[1][1]
        post = body[body.index("post {"):]
        found = re.findall(r"stash name: '([^']*)', includes: 'results/\*\*', allowEmpty: true",
                           post)
        assert len(found) == 1, name
        stashes += found
    assert len(set(stashes)) == len(stashes)               # one stash per build stage
    publish = stages["publish"]
    unstashed = re.findall(r"unstash '([^']*)'", publish)
    assert unstashed == stashes
    # stale results are removed first, every build's results are in place before publishing
    clean = publish.index("sh 'rm -rf results'")
    assert clean < publish.index("unstash ") and \
        publish.rindex("unstash ") < publish.index("lock(") < publish.index("--merge-results")
    assert "archiveArtifacts artifacts: 'results/publish/**'" in publish


def test_jenkins_stash_names_hold_no_character_jenkins_refuses() -> None:
    text = generate_pipeline(fmt="jenkins", split="group", **{
        **BASE, "platforms": ["x86_64+avx2-el9-gcc13+cxx20-dbg"]},
        groups={"a+b": ["x"], "a_b.c-d": ["y"]})
    names = re.findall(r"stash name: '([^']*)'", text)
    assert names == ["results-x86_64+avx2-el9-gcc13+cxx20-dbg-a+b",
                     "results-x86_64+avx2-el9-gcc13+cxx20-dbg-a_b.c-d"]
    for name in names:   # Jenkins' name check refuses these (and a leading/trailing dot)
        assert not set(name) & set("?*/\\%!@#$^&|<>[]:;") and name.strip(".") == name


def _bash_argv(command: str) -> list[str]:
    """The arguments bash passes to pycvmfs for ``command`` (run for real, printing them)."""
    assert command.startswith("pycvmfs ")
    script = "printf '%s\\0' " + command.removeprefix("pycvmfs ")
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def test_commands_survive_a_real_shell_and_groovy_quoting() -> None:
    odd = "my stacks/dev 4's $HOME `x`.toml"
    kw = {**BASE, "stack_file": odd, "cache": "/srv/cache dir"}
    doc = yaml.safe_load(generate_pipeline(fmt="gitlab", **kw))  # type: ignore[arg-type]
    build = doc["build:x86_64-el9-gcc13-opt"]["script"][1]
    assert _bash_argv(build) == ["stack", "build", odd, "--platform", "x86_64-el9-gcc13-opt",
                                 "--cache", "/srv/cache dir", "--results", "results/"]
    jenkins = generate_pipeline(fmt="jenkins", **kw)  # type: ignore[arg-type]
    assert _balanced(jenkins)
    literals = re.findall(r"\bsh '((?:[^'\\]|\\.)*)'", jenkins)
    assert len(literals) == 3 * len(PLATFORMS) + 1   # + an rm -rf results per stage
    unescaped = [re.sub(r"\\(.)", r"\1", s) for s in literals]
    assert _bash_argv(unescaped[-1]) == [
        "stack", "publish", "sft-nightlies.example.org", odd, "--platform",
        "aarch64-el9-gcc13-opt", "--cache", "/srv/cache dir", "--results", "results/publish",
        "--merge-results", "results/", "--no-build"]
    assert unescaped[0] == "rm -rf results"
    assert shlex.split(unescaped[1])[3] == odd


@pytest.mark.parametrize(("kw", "message"), [
    ({"fmt": "travis"}, "unknown CI format 'travis'"),
    ({"split": "package"}, "unknown pipeline split 'package'"),
    ({"fqrn": "not a repo"}, "bad repository name 'not a repo'"),
    ({"platforms": ["x86_64-el9"]}, "bad platform string 'x86_64-el9'"),
    ({"platforms": []}, "at least one platform"),
    ({"platforms": [PLATFORMS[0], PLATFORMS[0]]}, "platform listed twice: x86_64-el9-gcc13-opt"),
    ({"split": "group"}, "needs package groups"),
    ({"groups": GROUPS}, "only used with split='group'"),
    ({"split": "group", "groups": {"a": ["x"], "b": ["x"]}}, "'x' is in two groups"),
    ({"split": "group", "groups": {"a": []}}, "group 'a' lists no packages"),
    ({"split": "group", "groups": {"a b": ["x"]}}, "group name 'a b'"),
    ({"split": "group", "groups": {"gen": ["pythia8"], "base": ["zlib"]}, "depends": DEPENDS},
     "'pythia8' \\(group 'gen'\\) depends on 'zlib' \\(later group 'base'\\)"),
])
def test_invalid_arguments(kw: dict, message: str) -> None:
    args = {"fmt": "gitlab", **BASE, **kw}
    with pytest.raises(StackError, match=message):
        generate_pipeline(**args)
