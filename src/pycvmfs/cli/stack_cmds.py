"""``pycvmfs stack``: software stacks (LCG releases and nightlies) built by content hash and
published as one transaction; lcgcmake's jobs as verbs."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click

from pycvmfs.cli.common import emit_json, make_progress
from pycvmfs.cli.publish_cmds import _open, config_option
from pycvmfs.errors import StackError

__all__ = ["register"]


def _default_work() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pycvmfs", "stacks")


def build_options(f):
    f = click.option("--platform", metavar="PLATFORM",
                     help="Build for this platform (arch-os-compiler-buildtype; default: the "
                          "description's, else the host's).")(f)
    f = click.option("--cache", metavar="DIR|s3://BUCKET/PREFIX", envvar="PYCVMFS_STACK_CACHE",
                     show_envvar=True,
                     help="Binary cache shared by build nodes (default: <work>/cache). For "
                          "S3, AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                          "from the environment.")(f)
    f = click.option("--work", type=click.Path(file_okay=False), envvar="PYCVMFS_STACK_WORK",
                     show_envvar=True,
                     help="Work directory: sources, build trees, logs, install trees "
                          "(default: <repository dir>/stack-work when publishing, else "
                          "~/.cache/pycvmfs/stacks).")(f)
    f = click.option("--parallel", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Packages built at once.")(f)
    f = click.option("--jobs", "-j", type=click.IntRange(min=1),
                     help="JOBS given to each build (default: the number of CPUs).")(f)
    f = click.option("--sandbox", type=click.Choice(["auto", "bwrap", "relocate"]),
                     default="auto", show_default=True,
                     help="bwrap: build at the final /cvmfs path in a sandbox; relocate: build "
                          "elsewhere, rewrite text files, refuse any leftover build path.")(f)
    f = click.option("--no-tests", is_flag=True, help="Skip the packages' test steps.")(f)
    f = click.option("--results", "results_dir", type=click.Path(file_okay=False),
                     help="Also write results.json, Build.xml and Test.xml below this "
                          "directory (default: <work>/results).")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")(f)
    return f


def _settings(work, cache, parallel, jobs, sandbox, no_tests, results_dir, *, pub=None,
              lock_wait: float = 0.0, progress=None):
    from pycvmfs.stacks.service import StackSettings

    if work is None:
        work = (os.path.join(pub.config.repo_dir, "stack-work") if pub is not None
                else _default_work())
    return StackSettings(work_dir=Path(work), cache=cache, parallel=parallel, jobs=jobs,
                         sandbox=sandbox, run_tests=not no_tests,
                         results_dir=Path(results_dir) if results_dir else None,
                         lock_wait=lock_wait, progress=progress)


def _names(values) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _progress(display):
    if not display.enabled:
        return None

    def update(event: str, name: str, done: int, total: int) -> None:
        display.show("packages", done, total)
        if event != "start":
            display.show(f"{name}: {event}", 1, 1)

    return update


def _print_run(run) -> None:
    for p in run.packages:
        extra = f" test {p.test_status}" if p.test_status != "notrun" else ""
        click.echo(f"{p.status:8} {p.name} {p.version} {p.short}"
                   f"{f' {p.duration:.1f}s' if p.duration else ''}{extra}")
        if p.status == "failed" and p.log:
            click.echo(f"         log: {p.log}", err=True)


@click.group(name="stack")
def stack() -> None:
    """Software stacks: LCG-style releases and nightlies, built by content hash and
    published as one transaction.

    \b
    Verbs: plan, build, publish, nightly, nightly-rm, show, diff, graph,
    import-heptools, ci generate, export spack.
    """


@stack.command(name="build")
@click.argument("stack_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--fqrn", help="Repository the builds are for (their /cvmfs prefix; default: "
                             "the description's 'repository').")
@click.option("--only", multiple=True, metavar="A,B",
              help="Build only these packages (a CI job's group); what they need must be "
                   "in the binary cache.")
@click.option("--force", multiple=True, metavar="A,B",
              help="Rebuild these even when the binary cache has them.")
@click.option("--dry-run", is_flag=True, help="Print what would be built and reused.")
@build_options
def build_cmd(stack_file, fqrn, only, force, dry_run, platform, cache, work, parallel, jobs,
              sandbox, no_tests, results_dir, as_json):
    """Build what the binary cache lacks (a build node: no repository needed)."""
    from pycvmfs.stacks.service import build_stack

    with make_progress("building", enabled=None if not as_json else False) as display:
        settings = _settings(work, cache, parallel, jobs, sandbox, no_tests, results_dir,
                             progress=_progress(display))
        plan, run = build_stack(stack_file, settings, fqrn=fqrn, platform=platform,
                                only=_names(only) or None, force=_names(force),
                                dry_run=dry_run)
    if as_json:
        emit_json({"plan": plan.to_json(),
                   "results": None if run is None else __import__(
                       "pycvmfs.stacks.results", fromlist=["results_feed"]).results_feed(run)})
    else:
        click.echo(plan.render_text())
        if run is not None:
            _print_run(run)
    if run is not None and not run.ok:
        sys.exit(1)


@stack.command(name="plan")
@click.argument("stack_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--fqrn", help="Repository the builds are for.")
@click.option("--platform", metavar="PLATFORM")
@click.option("--cache", metavar="DIR|s3://BUCKET/PREFIX", envvar="PYCVMFS_STACK_CACHE")
@click.option("--work", type=click.Path(file_okay=False), envvar="PYCVMFS_STACK_WORK")
@config_option
@click.option("--json", "as_json", is_flag=True)
def plan_cmd(stack_file, fqrn, platform, cache, work, config_dir, as_json):
    """Hashes and states (published, cached, build) of every package, building nothing.
    With a repository configured here (FQRN), published builds are found too."""
    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.service import _fqrn_for, plan_stack

    st = load_stack(stack_file, platform=platform)
    fq = _fqrn_for(st, fqrn)
    from pycvmfs.errors import ConfigError

    pub = None
    try:
        pub = _open(fq, config_dir)
    except ConfigError as e:  # a build node: no repository here, published builds not known
        click.echo(f"note: {e}; published builds are not looked up", err=True)
    settings = _settings(work, cache, 1, None, "auto", False, None, pub=pub)
    plan = plan_stack(st, fq, settings, pub=pub)
    if as_json:
        emit_json(plan.to_json())
    else:
        click.echo(plan.render_text())


def _publish_report(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    if report.results:
        for p in report.results["packages"]:
            click.echo(f"{p['status']:8} {p['name']} {p['version']} {p['short']}")
    for c in report.conflicts:  # merged .pth files, priorities and the grey list are policy
        if c["policy"] in ("first", "directory"):
            click.echo(f"warning: view conflict: {c['path']}: {c['winner']} kept over "
                       f"{', '.join(c['losers'])} ({c['policy']})", err=True)
    if not report.published:
        click.echo("nothing published" + ("" if report.complete else ": builds failed"))
    elif report.revision is None:
        click.echo("nothing changed: no new revision")
    else:
        click.echo(f"published revision {report.revision} ({len(report.added)} new builds)")


@stack.command(name="publish")
@click.argument("fqrn")
@click.argument("stack_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--tag", help="Named tag for the new revision (e.g. LCG_900).")
@click.option("--no-build", is_flag=True,
              help="Publish from the binary cache alone (a publisher node): refuse when a "
                   "build is missing.")
@click.option("--force", multiple=True, metavar="A,B", help="Rebuild these packages.")
@click.option("--dry-run", is_flag=True, help="Print the plan; build and publish nothing.")
@click.option("--lock-wait", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
              help="Wait this long while another process publishes.")
@click.option("--merge-results", type=click.Path(file_okay=False),
              help="When nothing is built here: publish the results feeds found below this "
                   "directory (the build jobs' artifacts) as this release's results.")
@build_options
@config_option
def publish_cmd(fqrn, stack_file, tag, no_build, force, dry_run, lock_wait, merge_results,
                platform, cache, work, parallel, jobs, sandbox, no_tests, results_dir, as_json,
                config_dir):
    """Build what the binary cache lacks, then publish the release × platform (packages,
    release links, summaries, view, results) as ONE transaction."""
    from pycvmfs.stacks.service import StackBuildFailed, publish_release

    pub = _open(fqrn, config_dir)
    with make_progress("building", enabled=None if not as_json else False) as display:
        settings = _settings(work, cache, parallel, jobs, sandbox, no_tests, results_dir,
                             pub=pub, lock_wait=lock_wait, progress=_progress(display))
        try:
            report = publish_release(pub, stack_file, settings, platform=platform, tag=tag,
                                     no_build=no_build, dry_run=dry_run, force=_names(force),
                                     merge_results=merge_results)
        except StackBuildFailed as e:
            _publish_report(e.report, as_json)
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
    if dry_run and not as_json:
        click.echo(report.plan_text)
        click.echo("dry run: nothing built or published")
        return
    _publish_report(report, as_json)


@stack.command(name="nightly")
@click.argument("fqrn")
@click.argument("stack_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--slot", help="The slot (default: the description's 'slot').")
@click.option("--day", type=click.Choice(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]),
              help="Day of the ring (default: today, UTC).")
@click.option("--partial", is_flag=True,
              help="Publish what built even when some packages failed (marked "
                   "isDone-unstable-<platform>; latest does not move).")
@click.option("--dry-run", is_flag=True)
@click.option("--lock-wait", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS")
@build_options
@config_option
def nightly_cmd(fqrn, stack_file, slot, day, partial, dry_run, lock_wait, platform, cache,
                work, parallel, jobs, sandbox, no_tests, results_dir, as_json, config_dir):
    """Tonight's build of a slot into nightlies/<slot>/<Day>; latest moves only after a
    complete build, and a failed build publishes nothing (unless --partial)."""
    from pycvmfs.stacks.service import publish_nightly

    pub = _open(fqrn, config_dir)
    with make_progress("building", enabled=None if not as_json else False) as display:
        settings = _settings(work, cache, parallel, jobs, sandbox, no_tests, results_dir,
                             pub=pub, lock_wait=lock_wait, progress=_progress(display))
        report = publish_nightly(pub, stack_file, settings, slot=slot, day=day,
                                 platform=platform, partial=partial, dry_run=dry_run)
    if dry_run and not as_json:
        click.echo(report.plan_text)
        click.echo(f"dry run ({report.day}): nothing built or published")
        return
    _publish_report(report, as_json)
    if not report.complete:
        sys.exit(1)


@stack.command(name="nightly-rm")
@click.argument("fqrn")
@click.option("--slot", required=True)
@click.option("--day", type=click.Choice(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]),
              help="Only this day (default: the whole ring).")
@click.option("--platform", metavar="PLATFORM", help="Only this platform (default: all).")
@click.option("--top", default="lcg", show_default=True)
@click.option("--lock-wait", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS")
@click.option("--work", type=click.Path(file_okay=False), envvar="PYCVMFS_STACK_WORK")
@click.option("--json", "as_json", is_flag=True)
@config_option
def nightly_rm_cmd(fqrn, slot, day, platform, top, lock_wait, work, as_json, config_dir):
    """Take a slot (or one day or platform of it) out of the repository, with the builds only
    it used: for slots and platforms that stopped running (a running slot's days are replaced
    by the ring)."""
    from pycvmfs.stacks.service import remove_nightly

    pub = _open(fqrn, config_dir)
    settings = _settings(work, None, 1, None, "auto", False, None, pub=pub,
                         lock_wait=lock_wait)
    out = remove_nightly(pub, slot, settings, day=day, platform=platform, top=top)
    if as_json:
        emit_json(out)
        return
    for ref in out["removed"]:
        click.echo(f"removed  {ref}")
    for rel in out["deleted_builds"]:
        click.echo(f"deleted  /{rel}")
    click.echo("nothing changed" if out["revision"] is None
               else f"published revision {out['revision']}")


# -- reading ---------------------------------------------------------------------------------
def _readers(config_dir, fqrn_default, platform, cache, work):
    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.service import _fqrn_for, _head_view, plan_stack

    @contextlib.contextmanager
    def open_view(fqrn):
        pub = _open(fqrn, config_dir)
        with _head_view(pub, Path(work or os.path.join(pub.config.repo_dir,
                                                       "stack-work"))) as view:
            yield view

    def plan_for(path):
        st = load_stack(path, platform=platform)
        settings = _settings(work, cache, 1, None, "auto", False, None)
        return plan_stack(st, _fqrn_for(st, fqrn_default), settings)

    return open_view, plan_for


def reading_options(f, *, json_option: bool = True):
    f = click.option("--fqrn", help="Repository a stack description is planned for.")(f)
    f = click.option("--platform", metavar="PLATFORM")(f)
    f = click.option("--top", default="lcg", show_default=True,
                     help="The stacks' top folder in the repository.")(f)
    f = click.option("--cache", envvar="PYCVMFS_STACK_CACHE", metavar="DIR|s3://...")(f)
    f = click.option("--work", type=click.Path(file_okay=False), envvar="PYCVMFS_STACK_WORK")(f)
    if json_option:
        f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    return config_option(f)


@stack.command(name="show")
@click.argument("spec")
@reading_options
def show_cmd(spec, fqrn, platform, top, cache, work, as_json, config_dir):
    """The packages of SPEC: FQRN:LCG_900/PLATFORM, FQRN:SLOT/DAY/PLATFORM, a summary
    file (LCG_externals_<platform>.txt or .json) or a stack description."""
    from pycvmfs.stacks.query import read_listing

    open_view, plan_for = _readers(config_dir, fqrn, platform, cache, work)
    listing = read_listing(spec, open_view=open_view, plan_for=plan_for, top=top)
    s = listing.summary
    if as_json:
        emit_json({"label": listing.label, "platform": s.platform, "version": s.version,
                   "compiler": list(s.compiler) if s.compiler else None,
                   "packages": [{"name": e.name, "version": e.version, "hash": e.hash,
                                 "directory": e.directory, "prefix": listing.prefix_of(e),
                                 "depends": list(e.depends)} for e in s.entries]})
        return
    click.echo(f"{listing.label}: {len(s.entries)} packages"
               + (f", platform {s.platform}" if s.platform else ""))
    width = max((len(e.name) for e in s.entries), default=4)
    for e in sorted(s.entries, key=lambda e: (e.name.lower(), e.name)):
        click.echo(f"  {e.name:<{width}} {e.version:<12} {e.hash}  "
                   f"{','.join(e.depends)}")


@stack.command(name="diff")
@click.argument("a")
@click.argument("b")
@reading_options
def diff_cmd(a, b, fqrn, platform, top, cache, work, as_json, config_dir):
    """What changed from A to B (releases, platforms, nightly days, descriptions): added,
    removed, version changed, rebuilt with the same version. Exit status 1 when they
    differ (like diff)."""
    from pycvmfs.stacks.compare import diff_summaries
    from pycvmfs.stacks.query import read_listing

    open_view, plan_for = _readers(config_dir, fqrn, platform, cache, work)
    la = read_listing(a, open_view=open_view, plan_for=plan_for, top=top)
    lb = read_listing(b, open_view=open_view, plan_for=plan_for, top=top)
    d = diff_summaries(la.summary, lb.summary, a_label=la.label, b_label=lb.label)
    if as_json:
        emit_json(d.to_json())
    else:
        click.echo(d.render_text())
    if not d.is_empty():
        sys.exit(1)


@stack.command(name="graph")
@click.argument("stack_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--platform", metavar="PLATFORM")
@click.option("--format", "fmt", type=click.Choice(["dot", "json", "text"]), default="text",
              show_default=True)
def graph_cmd(stack_file, platform, fmt):
    """The dependency graph of a description (DOT for graphviz, JSON, or build order)."""
    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.graph import resolve

    st = load_stack(stack_file, platform=platform)
    g = resolve(st)
    if fmt == "dot":
        click.echo(g.to_dot())
    elif fmt == "json":
        emit_json(g.to_json())
    else:
        for i, level in enumerate(g.levels()):
            click.echo(f"{i}: " + " ".join(
                f"{n}({','.join(g.deps(n))})" if g.deps(n) else n for n in level))
    for w in st.warnings:
        click.echo(f"warning: {w}", err=True)


@stack.command(name="import-heptools")
@click.argument("heptools", type=click.Path(exists=True, dir_okay=False))
@click.option("--platform", metavar="PLATFORM",
              help="Platform the if(...) conditions are evaluated for.")
@click.option("--recipes", type=click.Path(exists=True, dir_okay=False),
              help="A YAML map of package name -> {source, build, depends, ...} to merge in.")
@click.option("-I", "--include-dir", "include_dirs", multiple=True,
              type=click.Path(file_okay=False), help="Where include()d files are searched.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here (default: "
                                                                      "standard output).")
def import_heptools_cmd(heptools, platform, recipes, include_dirs, output):
    """Convert an lcgcmake heptools-*.cmake release description to a stack.yaml."""
    import yaml

    from pycvmfs.stacks.heptools import import_heptools, write_stack_yaml
    from pycvmfs.stacks.platform import Platform

    rec = yaml.safe_load(Path(recipes).read_text()) if recipes else None
    desc, warnings = import_heptools(heptools, platform=Platform.parse(platform)
                                     if platform else None, recipes=rec,
                                     search_path=[Path(d) for d in include_dirs])
    text = write_stack_yaml(desc)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


@stack.group(name="ci")
def ci() -> None:
    """CI pipelines for the CI systems sites run."""


@ci.command(name="generate")
@click.argument("stack_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["gitlab", "jenkins"]), required=True)
@click.option("--fqrn", required=True)
@click.option("--platform", "platforms", multiple=True, required=True, metavar="PLATFORM")
@click.option("--cache", required=True, metavar="DIR|s3://BUCKET/PREFIX",
              help="The binary cache every job shares.")
@click.option("--split", type=click.Choice(["platform", "group"]), default="platform",
              show_default=True,
              help="One build job per platform, or per platform × package group (the "
                   "dependency graph's levels).")
@click.option("--image", help="Container image the jobs run in (GitLab).")
@click.option("-o", "--output", type=click.Path(dir_okay=False))
def ci_generate_cmd(stack_file, fmt, fqrn, platforms, cache, split, image, output):
    """Write a GitLab (.gitlab-ci.yml) or Jenkins (Jenkinsfile) pipeline: build jobs, then
    one publish job."""
    from pycvmfs.stacks.cigen import generate_pipeline
    from pycvmfs.stacks.description import load_stack
    from pycvmfs.stacks.graph import resolve

    groups = None
    if split == "group":
        g = resolve(load_stack(stack_file, platform=platforms[0]))
        groups = {f"level{i}": level for i, level in enumerate(g.levels())}
    text = generate_pipeline(stack_file=stack_file, fqrn=fqrn, platforms=list(platforms),
                             fmt=fmt, cache=cache, split=split, groups=groups, image=image)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


@stack.group(name="export")
def export() -> None:
    """Hand a published release to other tools."""


@export.command(name="spack")
@click.argument("spec")
@click.option("-o", "--output", type=click.Path(dir_okay=False))
@functools.partial(reading_options, json_option=False)
def export_spack_cmd(spec, output, fqrn, platform, top, cache, work, config_dir):
    """A Spack packages.yaml declaring every package of SPEC (e.g. FQRN:LCG_900/PLATFORM)
    as an external (the bridge FCC uses to build on an LCG release)."""
    from pycvmfs.stacks.query import read_listing
    from pycvmfs.stacks.spack import spack_packages_yaml

    open_view, plan_for = _readers(config_dir, fqrn, platform, cache, work)
    listing = read_listing(spec, open_view=open_view, plan_for=plan_for, top=top)
    s = listing.summary
    entries = [(e.name, e.version, listing.prefix_of(e)) for e in s.entries]
    if not s.platform:
        raise StackError(f"{listing.label}: the summary names no platform (no PLATFORM: "
                         "header); Spack externals need one")
    text = spack_packages_yaml(entries, compiler=s.compiler, platform=s.platform,
                               release=s.version)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(stack)
