"""CI pipelines that build a stack on several platforms and publish it: a GitLab
``.gitlab-ci.yml`` or a Jenkins declarative ``Jenkinsfile``.

The pipeline has two phases. *Build* runs ``pycvmfs stack build`` once per platform (or per
platform × package group, each build limited with ``--only`` to its group); the builds share
the binary cache ``cache`` (an S3 URL or a folder every runner sees), so a later job reuses what
an earlier one stored. *Publish* is one job after every build: ``pycvmfs stack publish ...
--no-build`` per platform, which only takes the builds from the cache and writes them into the
repository in one transaction per platform. Publishing is serialised per repository (GitLab
``resource_group: cvmfs-<fqrn>``, Jenkins ``lock(resource: 'cvmfs-<fqrn>')``): two pipelines
never publish into one repository at the same time.

Package groups (``split="group"``) are given in dependency order. A GitLab group job ``needs:``
the earlier groups of its platform it depends on: those holding a direct dependency of one of
its packages when ``depends`` (package → its dependencies) is given, every earlier group
otherwise. Jenkins runs the groups one after the other, the platforms of one group in parallel.

The builds write their results feed and CTest XML below ``results/`` (``--results results/``,
``results/<group>/`` for a group job, ``results/publish/`` for the publish job; the stack and
platform are subfolders), so the results the publish job gathers never overwrite each other,
and the publish job merges them (``--merge-results results/``) into the published results.
Every job first removes the results folder it writes, so results of an earlier run left in a
reused workspace are never merged:

* GitLab: a build job removes and keeps (``artifacts``, also when it fails) its own folder;
  the publish job gets them through ``needs`` (GitLab puts them in place before the script,
  so it removes only ``results/publish``) and keeps ``results/``;
* Jenkins: the stages run on other agents and workspaces, so a build stage starts with
  ``rm -rf results`` and ends (also when it fails) by archiving and ``stash``-ing
  ``results/**`` under a name of its own (``results-<platform>[-<group>]``); the publish stage
  starts with ``rm -rf results``, ``unstash``-es every build stage's results, publishes, and
  archives ``results/publish/``.

The output depends only on the arguments: the platforms and groups in the order given.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from pycvmfs.errors import StackError
from pycvmfs.stacks.platform import Platform

__all__ = ["FORMATS", "SPLITS", "generate_pipeline"]

FORMATS = ("gitlab", "jenkins")
SPLITS = ("platform", "group")
RESULTS_DIR = "results/"

_CLEAN = shlex.join(["rm", "-rf", RESULTS_DIR.rstrip("/")])  # a Jenkins stage's first step
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*)+\Z")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")


@dataclass(frozen=True)
class _BuildJob:
    """One build job: a platform, and the package group it is limited to (if any)."""

    platform: str
    group: str | None
    packages: tuple[str, ...]
    needs: tuple[str, ...]        # names of the build jobs that must finish first

    @property
    def name(self) -> str:
        return f"build:{self.platform}" + (f":{self.group}" if self.group else "")


def _check_groups(groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The group of every package; refuses empty, badly named or overlapping groups."""
    owner: dict[str, str] = {}
    if not groups:
        raise StackError("split='group' needs package groups (none given)")
    for group, packages in groups.items():
        if not _GROUP.match(group):
            raise StackError(f"package group name {group!r}: letters, digits and _.+- only")
        if isinstance(packages, str) or not packages:
            raise StackError(f"package group {group!r} lists no packages")
        for pkg in packages:
            if pkg in owner:
                raise StackError(f"package {pkg!r} is in two groups: {owner[pkg]!r} and "
                                 f"{group!r}")
            owner[pkg] = group
    return owner


def _group_needs(groups: Mapping[str, Sequence[str]],
                 depends: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """For every group, the earlier groups it must wait for (in the order given)."""
    owner = _check_groups(groups)
    order = list(groups)
    out: dict[str, list[str]] = {}
    for i, group in enumerate(order):
        if depends is None:
            out[group] = order[:i]
            continue
        wanted: set[str] = set()
        for pkg in groups[group]:
            for dep in depends.get(pkg, ()):
                dep_group = owner.get(dep)
                if dep_group is None or dep_group == group:
                    continue
                if order.index(dep_group) > i:
                    raise StackError(f"package groups are not in dependency order: {pkg!r} "
                                     f"(group {group!r}) depends on {dep!r} (later group "
                                     f"{dep_group!r})")
                wanted.add(dep_group)
        out[group] = [g for g in order[:i] if g in wanted]
    return out


def _build_jobs(platforms: Sequence[str], split: str,
                groups: Mapping[str, Sequence[str]] | None,
                depends: Mapping[str, Sequence[str]] | None) -> list[_BuildJob]:
    if split == "platform":
        if groups:
            raise StackError("package groups are only used with split='group'")
        return [_BuildJob(p, None, (), ()) for p in platforms]
    needs = _group_needs(groups or {}, depends)
    jobs: list[_BuildJob] = []
    for p in platforms:
        for group, packages in (groups or {}).items():
            jobs.append(_BuildJob(p, group, tuple(packages), tuple(
                _BuildJob(p, g, (), ()).name for g in needs[group])))
    return jobs


def _results_of(job: _BuildJob) -> str:
    """The results folder a build job writes (and only it)."""
    return RESULTS_DIR + (job.group or "")


def _stash_name(job: _BuildJob) -> str:
    """The Jenkins stash of a build stage's results: unique, as a platform has exactly four
    ``-``-separated parts; no character Jenkins refuses in a name."""
    return f"results-{job.platform}" + (f"-{job.group}" if job.group else "")


def _build_command(job: _BuildJob, stack_file: str, cache: str) -> str:
    cmd = ["pycvmfs", "stack", "build", stack_file, "--platform", job.platform, "--cache", cache,
           "--results", _results_of(job)]
    if job.packages:
        cmd += ["--only", ",".join(job.packages)]
    return shlex.join(cmd)


def _publish_commands(platforms: Sequence[str], fqrn: str, stack_file: str,
                      cache: str) -> list[str]:
    return [shlex.join(["pycvmfs", "stack", "publish", fqrn, stack_file, "--platform", p,
                        "--cache", cache, "--results", RESULTS_DIR + "publish",
                        "--merge-results", RESULTS_DIR, "--no-build"])
            for p in platforms]


def _header(comment: str, stack_file: str, fqrn: str, platforms: Sequence[str]) -> str:
    return (f"{comment} Generated by pycvmfs (pycvmfs.stacks.cigen): builds {stack_file} on "
            f"{len(platforms)} platform(s) and publishes it into {fqrn}.\n"
            f"{comment} Regenerate it rather than editing it.\n")


def _gitlab(jobs: list[_BuildJob], publish: list[str], lock: str, image: str | None,
            header: str, stack_file: str, cache: str) -> str:
    def artifacts(folder: str) -> dict[str, object]:  # a new mapping per job: no YAML anchors
        return {"when": "always", "paths": [folder.rstrip("/") + "/"]}

    doc: dict[str, object] = {"stages": ["build", "publish"]}
    if image:
        doc["default"] = {"image": image}
    for job in jobs:
        spec: dict[str, object] = {"stage": "build"}
        if job.needs:
            spec["needs"] = list(job.needs)
        spec["script"] = [shlex.join(["rm", "-rf", _results_of(job)]),
                          _build_command(job, stack_file, cache)]
        spec["artifacts"] = artifacts(_results_of(job))
        doc[job.name] = spec
    # the build jobs' artifacts are in results/ before the script runs: keep them
    doc["publish"] = {"stage": "publish", "needs": [j.name for j in jobs],
                      "resource_group": lock,
                      "script": [shlex.join(["rm", "-rf", RESULTS_DIR + "publish"]), *publish],
                      "artifacts": artifacts(RESULTS_DIR)}
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1000)
    return header + body


def _groovy(text: str) -> str:
    """A single-quoted Groovy string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _jenkins_stage(job: _BuildJob, stack_file: str, cache: str, agent: str,
                   indent: str) -> list[str]:
    i = indent
    return [
        f"{i}stage({_groovy(job.name)}) {{",
        f"{i}    agent {agent}",
        f"{i}    steps {{",
        f"{i}        sh {_groovy(_CLEAN)}",
        f"{i}        sh {_groovy(_build_command(job, stack_file, cache))}",
        f"{i}    }}",
        f"{i}    post {{",
        f"{i}        always {{",
        f"{i}            archiveArtifacts artifacts: {_groovy(RESULTS_DIR + '**')}, "
        "allowEmptyArchive: true",
        f"{i}            stash name: {_groovy(_stash_name(job))}, "
        f"includes: {_groovy(RESULTS_DIR + '**')}, allowEmpty: true",
        f"{i}        }}",
        f"{i}    }}",
        f"{i}}}",
    ]


def _jenkins(jobs: list[_BuildJob], publish: list[str], lock: str, image: str | None,
             header: str, stack_file: str, cache: str) -> str:
    agent = f"{{ docker {{ image {_groovy(image)} }} }}" if image else "any"
    # one parallel stage per group (in order); a single one when split by platform
    phases: dict[str | None, list[_BuildJob]] = {}
    for job in jobs:
        phases.setdefault(job.group, []).append(job)
    lines = [header.rstrip("\n"), "pipeline {", "    agent none", "    stages {"]
    for group, members in phases.items():
        lines.append(f"        stage({_groovy('build' + (f':{group}' if group else ''))}) {{")
        lines.append("            parallel {")
        for job in members:
            lines += _jenkins_stage(job, stack_file, cache, agent, " " * 16)
        lines += ["            }", "        }"]
    lines += [
        "        stage('publish') {",
        f"            agent {agent}",
        "            steps {",
        f"                sh {_groovy(_CLEAN)}",
        *(f"                unstash {_groovy(_stash_name(job))}"
          for members in phases.values() for job in members),
        f"                lock(resource: {_groovy(lock)}) {{",
        *(f"                    sh {_groovy(cmd)}" for cmd in publish),
        "                }",
        "            }",
        "            post {",
        "                always {",
        f"                    archiveArtifacts artifacts: {_groovy(RESULTS_DIR + 'publish/**')}"
        ", allowEmptyArchive: true",
        "                }",
        "            }",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def generate_pipeline(*, stack_file: str, fqrn: str, platforms: Sequence[str], fmt: str,
                      cache: str, split: str = "platform",
                      groups: Mapping[str, Sequence[str]] | None = None,
                      image: str | None = None,
                      depends: Mapping[str, Sequence[str]] | None = None) -> str:
    """The pipeline (``fmt`` ``gitlab`` or ``jenkins``) that builds ``stack_file`` on
    ``platforms`` with the binary cache ``cache`` and publishes it into ``fqrn``.

    ``split="group"`` makes one build job per platform × package group (``groups``: name →
    packages, in dependency order; ``depends``: package → its dependencies, to keep only the
    needed waits). ``image`` is the container image the jobs run in."""
    if fmt not in FORMATS:
        raise StackError(f"unknown CI format {fmt!r} (one of {', '.join(FORMATS)})")
    if split not in SPLITS:
        raise StackError(f"unknown pipeline split {split!r} (one of {', '.join(SPLITS)})")
    if not _FQRN.match(fqrn):
        raise StackError(f"bad repository name {fqrn!r} (a fully qualified name such as "
                         "sft.example.org)")
    if not stack_file or not cache:
        raise StackError("the pipeline needs a stack file and a cache")
    if isinstance(platforms, str) or not platforms:
        raise StackError("the pipeline needs at least one platform")
    names = [str(Platform.parse(p)) for p in platforms]
    dupes = sorted({p for p in names if names.count(p) > 1})
    if dupes:
        raise StackError(f"platform listed twice: {', '.join(dupes)}")
    jobs = _build_jobs(names, split, groups, depends)
    publish = _publish_commands(names, fqrn, stack_file, cache)
    lock = f"cvmfs-{fqrn}"
    if fmt == "gitlab":
        return _gitlab(jobs, publish, lock, image, _header("#", stack_file, fqrn, names),
                       stack_file, cache)
    return _jenkins(jobs, publish, lock, image, _header("//", stack_file, fqrn, names),
                    stack_file, cache)
