"""Portal benchmark: ``pycvmfs web`` under 50 concurrent clients (wrk) against nginx serving a
static file of the same size, on a generated history of releases and nightlies.

Run by hand (needs wrk and nginx-light; never in CI):
    .venv/bin/python benchmarks/web.py [--work DIR] [--rounds N] [--releases N]
                                       [--packages N] [--seconds S] [--uncached] [--profile]

Generates (in ``--work``, default a temporary directory) a history written into a fresh
repository in ONE transaction, without builds: ``--releases`` releases (default 100, LCG_100...)
× 3 platforms × ``--packages`` packages (default 400: library and tool names, about 40 Monte
Carlo generators below ``MCGenerators/``; each package has 0-10 direct dependencies, mostly on
the common base packages) and 30 nightly days (5 slots × Mon-Sat). From one release to the next
a few percent of the packages get a new version, a few get a new recipe at the same version,
one or two are added and removed; hashes are Merkle hashes over the dependencies, so a changed
base package rebuilds what depends on it. Per release and platform the externals and generators
summaries (``.txt`` and JSON twin, made by :mod:`pycvmfs.stacks.summary`) and a results feed
(:mod:`pycvmfs.stacks.results`: built or reused, build and test durations, a few failed tests);
per nightly day and platform the same, an ``isDone`` marker (``isDone-unstable`` when a package
failed, its dependents then skipped and left out of the summary) and the ``latest`` links.

Each round:

1. index build: a :class:`~pycvmfs.web.index.WebIndex` refresh from the storage directory into
   a fresh SQLite file with an empty reader cache (in this process);
2. ``pycvmfs web`` on that index (a child process: one uvicorn process, no workers option) and
   nginx (one worker, tuned as in ``benchmarks/serve.py``) serving, for each endpoint, a static
   file holding the very bytes of its response, both on loopback;
3. for each endpoint (the release × platform table API and page, a package's API and page, a
   diff of two releases ten apart, API and page): ``wrk -t2 -c50 -d10s --latency --timeout 30s``
   against the portal and against nginx (the order rotates each round; one second of wrk
   to warm up each first). The longer timeout keeps slow answers in the latency figures
   (wrk leaves requests that time out out of them); a Lua ``done()`` prints the exact p50
   and p99 (the report rounds seconds to two decimals).

Every round prints p50/p99 latency, requests/s, errors and server CPU seconds per endpoint, then
the medians and, per endpoint, whether the targets are met: p99 <= 50 ms and at least 0.3x
nginx's requests/s. ``--ceiling`` adds a third server to each comparison: FastAPI on uvicorn
answering the same bytes from an ``async`` handler (what the web stack itself costs, without the
portal's queries, validation and templates). ``--uncached`` adds each endpoint over many
distinct URLs (every release x platform table, every package, every diff of two releases ten
apart, in a shuffled order that wrk cycles through) against a second portal started with
``--cache-size 0``: every answer is computed anew, the worst case of a workload where no URL
repeats. ``--profile`` then measures each endpoint in this
process, one request at a time straight through the ASGI app with the handlers run inline
(FastAPI would run them in a thread pool, out of cProfile's sight): the mean time of the index
query alone and of the whole request, then a cProfile of those requests and of an index build.
wrk, the portal and nginx share the machine's cores: on a busy machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from pycvmfs.stacks.layout import DAYS, StackLayout
from pycvmfs.stacks.results import PackageResult, RunResults, results_feed
from pycvmfs.stacks.summary import render_summary, summaries_for, summary_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' nginx
from helpers.daemons import free_port, stop_process, wait_for_port
from helpers.webservers import nginx_server

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]
WRK = "/usr/bin/wrk"
FQRN = "sft.bench.org"
PLATFORMS = ("x86_64-el9-gcc13-opt", "x86_64-el9-gcc13-dbg", "aarch64-el9-gcc13-opt")
SLOTS = {"dev3": 0.01, "dev4": 0.03, "dev3cuda": 0.01, "devnxt": 0.05, "devgeant4": 0.02}
NIGHTLY_DAYS = DAYS[:6]  # 5 slots x 6 days = 30 nightly days
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.3
DAY_S = 86_400
START = 1_700_000_000  # the first release's time (epoch s)

# Base packages first: the generator draws dependencies mostly from the front of the list.
BASE = (
    "zlib", "xz", "bzip2", "lz4", "zstd", "libffi", "ncurses", "readline", "expat", "openssl",
    "sqlite", "libxml2", "curl", "Python", "cmake", "ninja", "tbb", "Boost", "eigen", "fmt",
    "spdlog", "nlohmann_json", "gsl", "fftw3", "blas", "lapack", "hdf5", "numpy", "cython",
    "pybind11", "scipy", "freetype", "libpng", "jpeg", "tiff", "Qt5", "XercesC", "CLHEP", "Vc",
    "veccore", "VecGeom", "xrootd", "davix", "protobuf", "abseil", "grpc", "arrow", "pandas",
    "matplotlib", "ROOT", "Geant4", "DD4hep", "acts", "podio", "EDM4hep", "Gaudi", "fastjet",
    "fjcontrib", "HepMC3", "hepmc2", "lhapdf", "yoda", "uproot", "awkward", "vector", "hist",
    "particle", "scikitlearn", "xgboost", "lightgbm", "onnxruntime", "tensorflow", "torch", "jax",
    "numba", "llvmlite", "dask", "jupyter", "ipython", "pytest", "gtest", "catch2", "benchmark",
    "valgrind", "gperftools", "jemalloc", "doxygen", "graphviz", "git", "ccache", "frontier_client",
    "oracle", "mysql", "postgresql", "zeromq", "gfal2", "rucio_clients", "coffea"
)
GENERATORS = (
    "pythia8", "herwig3", "thepeg", "sherpa", "madgraph5amc", "powheg-box", "powheg-box-v2",
    "rivet", "evtgen", "tauolapp", "photospp", "crmc", "epos", "qgsjet", "starlight", "openloops",
    "recola", "collier", "vbfnlo", "mcfm", "professor", "hoppet", "apfel", "looptools", "gosam",
    "njet", "blackhat", "qd", "agile", "cepgen", "whizard", "alpgen", "jhugen", "superchic",
    "pythia6", "hijing", "dpmjet", "sibyll", "geneva", "hjets"
)
SYLLABLES = (
    "ka", "ro", "mi", "ten", "vor", "lux", "pal", "dri", "qua", "zen", "fel", "gor", "hum", "ix",
    "jet", "lor", "nub", "pry", "sal", "tir", "ul", "vex", "wim", "yar", "zo"
)
LICENSES = ("LGPL-2.1", "GPL-3.0", "BSD-3-Clause", "Apache-2.0", "MIT", "MPL-2.0")


# -- generating the history ------------------------------------------------------------------

@dataclass(frozen=True)
class Pkg:
    """One package of a stack state: what its recipe hash covers, and what the summaries and
    feeds show about it."""

    name: str
    version: str
    dest: str                 # its directory (MCGenerators/<name> for a generator)
    deps: tuple[str, ...]     # direct dependencies, earlier in the state (topological)
    rev: int = 0              # bumped when the recipe changes at the same version
    has_test: bool = False
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def generator(self) -> bool:
        return self.dest.startswith("MCGenerators/")


State = dict[str, Pkg]  # name -> package, in topological order


def _version(rng: random.Random) -> str:
    return f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}"


def _bump(version: str, rng: random.Random) -> str:
    major, minor, patch = (int(v) for v in version.split("."))
    roll = rng.random()
    if roll < 0.05:
        return f"{major + 1}.0.0"
    if roll < 0.30:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def _pick_deps(rng: random.Random, earlier: list[str]) -> tuple[str, ...]:
    """0-10 direct dependencies among ``earlier``, the first ones (the base) most likely."""
    if not earlier:
        return ()
    want = min(len(earlier), rng.choice((0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10)))
    weights = [1.0 / (i + 8) for i in range(len(earlier))]
    chosen: set[str] = set()
    while len(chosen) < want:
        chosen.add(rng.choices(earlier, weights)[0])
    return tuple(sorted(chosen))


def _new_package(name: str, rng: random.Random, earlier: list[str], generator: bool) -> Pkg:
    meta = (("homepage", f"https://projects.example.org/{name}"),
            ("license", rng.choice(LICENSES)))
    return Pkg(name, _version(rng), f"MCGenerators/{name}" if generator else name,
               _pick_deps(rng, earlier), has_test=rng.random() < 0.3, metadata=meta)


def _fresh_name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choices(SYLLABLES, k=rng.randint(2, 3)))
        name = f"py_{name}" if rng.random() < 0.3 else name
        if name not in taken:
            taken.add(name)
            return name


def initial_state(count: int, rng: random.Random) -> State:
    """``count`` packages: the base list, generated names, the generators last."""
    gens = GENERATORS[:max(0, min(len(GENERATORS), count // 10))]
    base = BASE[:count - len(gens)]
    taken = set(BASE) | set(GENERATORS)
    names = [(n, False) for n in base]
    names += [(_fresh_name(rng, taken), False) for _ in range(count - len(base) - len(gens))]
    names += [(n, True) for n in gens]
    state: State = {}
    for name, gen in names:
        state[name] = _new_package(name, rng, list(state), gen)
    return state


def evolve(state: State, rng: random.Random, bump: float, *, churn: int = 1) -> State:
    """The next state: each package gets a new version with probability ``bump`` (the base
    packages a third of that), a new recipe with ``bump / 4``; 0-``churn`` packages removed
    (from their dependents too) and as many added at the end."""
    names = list(state)
    removed = set(rng.sample(names[len(BASE) // 2:], rng.randint(0, churn)))
    out: State = {}
    for i, (name, p) in enumerate(state.items()):
        if name in removed:
            continue
        rate = bump / 3 if i < len(BASE) // 2 else bump
        roll = rng.random()
        if roll < rate:
            p = replace(p, version=_bump(p.version, rng), rev=0)
        elif roll < rate * 1.25:
            p = replace(p, rev=p.rev + 1)
        if removed.intersection(p.deps):
            p = replace(p, deps=tuple(d for d in p.deps if d not in removed))
        out[name] = p
    taken = set(out) | set(BASE) | set(GENERATORS) | removed
    for _ in range(len(removed)):
        name = _fresh_name(rng, taken)
        out[name] = _new_package(name, rng, list(out), rng.random() < 0.1)
    return out


class Hashes:
    """Merkle recipe hashes, display hashes unique per (directory, version) across the whole
    history, and per-platform full hashes."""

    def __init__(self) -> None:
        self._owner: dict[tuple[str, str, str], str] = {}

    def recipes(self, state: State) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in state.values():
            text = f"{p.name}\0{p.version}\0{p.rev}\0" + ",".join(out[d] for d in p.deps)
            out[p.name] = hashlib.sha256(text.encode()).hexdigest()
        return out

    def short(self, p: Pkg, recipe: str) -> str:
        n = 5
        while self._owner.setdefault((p.dest, p.version, recipe[:n]), recipe) != recipe:
            n += 1
        return recipe[:n]


@dataclass
class Stats:
    """What the generated history holds."""

    files: int = 0
    bytes: int = 0
    summaries: int = 0
    feeds: int = 0
    rows: int = 0      # package lines over all summaries
    failed_days: int = 0


@dataclass
class Writer:
    """Writes the summaries, markers, links and feeds into an open transaction."""

    txn: object
    layout: StackLayout
    rng: random.Random
    hashes: Hashes = field(default_factory=Hashes)
    built: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PLATFORMS})
    stats: Stats = field(default_factory=Stats)

    def file(self, rel: str, data: bytes, mtime: int) -> None:
        self.txn.add_file(rel, data, mode=0o644, mtime=mtime)
        self.stats.files += 1
        self.stats.bytes += len(data)

    def run(self, state: State, *, stack: str, label: str, day: str | None, where: str,
            results: str, when: int, platform: str, fail: str | None = None) -> bool:
        """One stack × platform: summaries below ``where``, the feed below ``results``;
        ``fail`` names a package whose build fails. Returns whether every package made it."""
        recipes = self.hashes.recipes(state)
        shorts = {n: self.hashes.short(p, recipes[n]) for n, p in state.items()}
        bad: set[str] = set()
        if fail is not None:
            bad.add(fail)
            for p in state.values():  # topological: dependents follow what they need
                if bad.intersection(p.deps):
                    bad.add(p.name)
        records, results_rows, clock = [], [], float(when)
        done = self.built[platform]
        for p in state.values():
            full = hashlib.sha256(f"{recipes[p.name]}\0{platform}".encode()).hexdigest()
            res = self._result(p, shorts[p.name], full, done, fail, bad, clock)
            clock = res.finished or clock
            results_rows.append(res)
            if p.name in bad:
                continue
            done.add(full)
            records.append({
                "name": p.name, "version": p.version, "short": shorts[p.name], "hash": full,
                "directory": p.dest, "platform": platform, "is_generator": p.generator,
                "depends": [{"name": d, "short": shorts[d]} for d in p.deps],
                "compiler": {"family": "gcc", "version": "13.1.0"},
                "metadata": dict(p.metadata)})
        base = None if day is None else self.layout.abs(where)
        for kind, summary in summaries_for(records, platform=platform, version_label=label,
                                           directory_base=base).items():
            if kind != "externals" and not summary.entries:
                continue
            self.file(self.layout.summary_rel(where, kind, platform),
                      render_summary(summary).encode(), when)
            self.file(self.layout.summary_rel(where, kind, platform, "json"),
                      _json_bytes(summary_json(summary, records)), when)
            self.stats.summaries += 1
            self.stats.rows += len(summary.entries)
        run = RunResults(stack=stack, kind="release" if day is None else "slot",
                         platform=platform, day=day, site="lcgapp-el9-bench.example.org",
                         started=float(when), finished=clock, packages=results_rows)
        self.file(f"{results}/results.json", _json_bytes(results_feed(run)), when)
        self.stats.feeds += 1
        return not bad

    def _result(self, p: Pkg, short: str, full: str, done: set[str], fail: str | None,
                bad: set[str], clock: float) -> PackageResult:
        rng = self.rng
        logs = f"/build/work/logs/{p.name}-{full[:16]}"
        if p.name == fail:
            took = rng.lognormvariate(3.0, 1.0)
            return PackageResult(
                p.name, p.version, short, full, "failed", duration=took,
                log=f"{logs}/build.log", has_test=p.has_test, is_generator=p.generator,
                error=(f"{p.name}: the build step failed (exit status 2)\n"
                       f"src/{p.name}.cc:412: error: no matching function for call\n"
                       "make[2]: *** [Makefile:1173: all] Error 2"),
                started=clock, finished=clock + took)
        if p.name in bad:
            return PackageResult(p.name, p.version, short, full, "skipped",
                                 has_test=p.has_test, is_generator=p.generator,
                                 error=f"not built: {fail} failed")
        if full in done:
            return PackageResult(p.name, p.version, short, full, "reused",
                                 has_test=p.has_test, is_generator=p.generator)
        took = rng.lognormvariate(3.0, 1.2)
        res = PackageResult(p.name, p.version, short, full, "built", duration=took,
                            log=f"{logs}/build.log", has_test=p.has_test,
                            is_generator=p.generator, started=clock, finished=clock + took)
        if p.has_test:
            res.test_status = "failed" if rng.random() < 0.02 else "passed"
            res.test_duration = rng.lognormvariate(1.0, 1.0)
            res.test_log = f"{logs}/test.log"
            res.test_output = (f"Test project /build/{p.name}\n    Start 1: {p.name}_unit\n"
                               f"1/1 Test #1: {p.name}_unit ... "
                               f"{'Passed' if res.test_status == 'passed' else 'Failed'}\n")
            res.finished = (res.finished or clock) + res.test_duration
        return res


def _json_bytes(doc) -> bytes:
    """JSON as the stack writer writes it (sorted keys, indent 1, final newline)."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


@dataclass
class History:
    """The generated repository and the names the endpoints ask for."""

    storage: Path
    key: Path
    revision: int
    releases: list[str]
    package: str
    packages: list[str]   # every package name of the last release
    stats: Stats
    seconds: float
    transaction: dict


def generate_history(where: Path, releases: int, packages: int, seed: int) -> History:
    """mkfs a repository below ``where`` and write the whole history in one transaction."""
    from pycvmfs.publish.config import ServerSettings
    from pycvmfs.publish.repository import Publisher

    t0 = time.perf_counter()
    pub = Publisher.mkfs(FQRN, where / "srv" / FQRN, config_dir=where / "etc",
                         settings=ServerSettings())
    rng = random.Random(seed)
    layout = StackLayout(FQRN)
    state = initial_state(packages, rng)
    names = [f"LCG_{100 + i}" for i in range(releases)]
    with pub.transaction(message=f"benchmark history: {releases} releases") as txn:
        w = Writer(txn, layout, rng)
        for i, release in enumerate(names):
            if i:
                state = evolve(state, rng, 0.04, churn=2)
            when = START + i * 7 * DAY_S
            for plat in PLATFORMS:
                w.run(state, stack=release, label=release[4:], day=None,
                      where=layout.release_rel(release), when=when, platform=plat,
                      results=layout.results_rel(release, plat))
        night0 = START + releases * 7 * DAY_S
        latest: dict[tuple[str, str], tuple[str, int]] = {}
        for slot, rate in SLOTS.items():
            slot_state = evolve(state, rng, rate * 3, churn=3)
            for d, day in enumerate(NIGHTLY_DAYS):
                slot_state = evolve(slot_state, rng, rate)
                when = night0 + d * DAY_S
                for plat in PLATFORMS:
                    fail = (rng.choice(list(slot_state)[len(BASE) // 2:])
                            if rng.random() < 0.1 else None)
                    ok = w.run(slot_state, stack=slot, label=slot, day=day,
                               where=layout.day_rel(slot, day), when=when, platform=plat,
                               fail=fail, results=layout.results_rel(slot, plat, day))
                    w.stats.failed_days += not ok
                    w.file(layout.marker_rel(slot, day, plat, unstable=not ok), b"", when)
                    if ok:  # days go in ring order: the last complete one wins
                        latest[(slot, plat)] = (day, when)
        for (slot, plat), (day, when) in latest.items():
            txn.symlink(*layout.latest_link(slot, day, plat), mtime=when)
    summary = txn.summary.to_dict()
    package = "ROOT" if "ROOT" in state else next(iter(state))
    return History(storage=pub.config.storage, key=pub.config.key_path("pub"),
                   revision=txn.summary.revision, releases=names, package=package,
                   packages=sorted(state),
                   stats=w.stats, seconds=time.perf_counter() - t0, transaction=summary)


# -- measuring -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """One URL the clients ask for; ``static`` is the name of its same-size file for nginx."""

    name: str
    path: str
    static: str
    #: when set, the clients cycle through these distinct URLs (``path`` is the first) and the
    #: portal keeps no answers (``--cache-size 0``): every answer is computed anew
    paths: tuple[str, ...] = ()

    @property
    def uncached(self) -> bool:
        return bool(self.paths)


def uncached_endpoints(history: History) -> list[Endpoint]:
    """The endpoints of :func:`endpoints` over every release x platform table, every package
    and every diff of two releases ten apart: distinct URLs, answered without the cache."""
    tables = [f"{r}/{p}" for r in history.releases for p in PLATFORMS]
    rel = history.releases
    pairs = list(zip(rel, rel[10:], strict=False)) or [(rel[0], rel[-1])]
    diffs = [f"a={a}/{p}&b={b}/{p}" for a, b in pairs for p in PLATFORMS]
    kinds = [("release table API", "/api/releases/", tables, "release.json"),
             ("release table page", "/releases/", tables, "release.html"),
             ("package API", "/api/packages/", history.packages, "package.json"),
             ("package page", "/packages/", history.packages, "package.html"),
             ("diff API", "/api/diff?", diffs, "diff.json"),
             ("diff page", "/diff?", diffs, "diff.html")]
    out = []
    for name, prefix, tails, static in kinds:
        paths = [prefix + t for t in tails]
        random.Random(len(paths)).shuffle(paths)
        out.append(Endpoint(f"{name}, {len(paths)} distinct URLs, no cache", paths[0],
                            "uncached-" + static, tuple(paths)))
    return out


def endpoints(history: History) -> list[Endpoint]:
    """The release table, package and diff endpoints, API and page."""
    plat = PLATFORMS[0]
    mid = history.releases[len(history.releases) // 2]
    a = history.releases[max(0, len(history.releases) - 11)]
    b = history.releases[-1]
    diff = f"a={a}/{plat}&b={b}/{plat}"
    return [
        Endpoint("release table API", f"/api/releases/{mid}/{plat}", "release.json"),
        Endpoint("release table page", f"/releases/{mid}/{plat}", "release.html"),
        Endpoint("package API", f"/api/packages/{history.package}", "package.json"),
        Endpoint("package page", f"/packages/{history.package}", "package.html"),
        Endpoint("diff API", f"/api/diff?{diff}", "diff.json"),
        Endpoint("diff page", f"/diff?{diff}", "diff.html"),
    ]


@dataclass
class Wrk:
    """One wrk run's figures."""

    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    errors: int       # socket errors (connect, read, write, timeout) and non-2xx answers
    cpu_s: float      # the server's CPU seconds meanwhile

    def line(self) -> str:
        return (f"p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms  {self.rps:8.0f} req/s"
                f"  ({self.requests} requests, {self.errors} errors, server CPU "
                f"{self.cpu_s:.1f} s = {self.cpu_ms_per_request:.3f} ms per request)")

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e3 if self.requests else 0.0


# wrk's report rounds seconds to two decimals ("1.60s"): done() adds the exact microseconds.
WRK_DONE = """\
done = function(summary, latency, requests)
  io.write(string.format("WRKEXACT p50_us=%d p99_us=%d\\n",
                         latency:percentile(50), latency:percentile(99)))
end
"""


def parse_wrk(out: str) -> tuple[float, float, float, int, int]:
    """(p50 ms, p99 ms, requests/s, requests, errors) from ``wrk --latency``'s report and the
    exact percentiles :data:`WRK_DONE` prints."""
    def find(pattern: str) -> re.Match:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise RuntimeError(f"wrk: no match for {pattern!r} in its report:\n{out}")
        return m

    find(r"^\s+99%\s+(\S+)")  # the --latency distribution is there
    exact = find(r"^WRKEXACT p50_us=(\d+) p99_us=(\d+)$")
    rps = float(find(r"^Requests/sec:\s+([\d.]+)")[1])
    requests = int(find(r"^\s+(\d+) requests in ")[1])
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m[1])
    return int(exact[1]) / 1e3, int(exact[2]) / 1e3, rps, requests, errors


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its living descendants."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    wanted, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in wanted} - wanted
        wanted |= more
        grew = bool(more)
    return sum(ticks.get(p, 0) for p in wanted) / os.sysconf("SC_CLK_TCK")


def cycling_script(paths: tuple[str, ...], where: Path) -> Path:
    """A wrk script asking for ``paths`` in turn (each wrk thread from its own offset), with
    :data:`WRK_DONE`'s exact percentiles."""
    listed = ",\n".join(json.dumps(p) for p in paths)  # JSON strings are Lua strings here
    where.write_text(f"paths = {{\n{listed}\n}}\n" + """\
counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("counter", counter * 7919)
end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end
""" + WRK_DONE)
    return where


def run_wrk(url: str, args, pid: int, seconds: float | None = None,
            script: Path | None = None) -> Wrk:
    """``wrk -t<threads> -c<connections> -d<seconds>s --latency --timeout 30s -s <script>
    url`` (``script``: :data:`WRK_DONE` unless given); ``pid``: the server whose CPU seconds
    are counted."""
    secs = args.seconds if seconds is None else seconds
    cpu0 = tree_cpu_seconds(pid)
    out = subprocess.run([WRK, f"-t{args.threads}", f"-c{args.connections}",
                          f"-d{max(1, round(secs))}s", "--latency", "--timeout", "30s",
                          "-s", str(script or args.wrk_script), url],
                         capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu_seconds(pid) - cpu0
    p50, p99, rps, requests, errors = parse_wrk(out)
    return Wrk(p50, p99, rps, requests, errors, cpu)


def fetch(url: str) -> bytes:
    """The body of a GET that must answer 200."""
    with urllib.request.urlopen(url, timeout=60) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")
        return resp.read()


@contextlib.contextmanager
def portal_server(history: History, index_db: Path, log: Path, *, cache_mib: int = 256
                  ) -> Iterator[tuple[str, int]]:
    """``pycvmfs web --cache-size cache_mib`` on ``index_db`` (already built: its start-up
    refresh finds the revision indexed); yields its base URL and process id."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "web", "--repo", str(history.storage), "--key", str(history.key),
             "--fqrn", FQRN, "--index", str(index_db), "--listen", f"127.0.0.1:{port}",
             "--refresh", "3600", "--cache-size", str(cache_mib)], stdout=out, stderr=out)
        try:
            wait_for_port(port, proc, "pycvmfs web", [log], limit=120)
            yield f"http://127.0.0.1:{port}", proc.pid
        finally:
            stop_process(proc, timeout=15)


CEILING_APP = """\
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

root, port = Path(sys.argv[1]), int(sys.argv[2])
app, bodies = FastAPI(), {}


@app.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in bodies:
        bodies[name] = (root / name).read_bytes()
    kind = "application/json" if name.endswith(".json") else "text/html; charset=utf-8"
    return Response(bodies[name], media_type=kind)


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


@contextlib.contextmanager
def ceiling_server(static_dir: Path, log: Path) -> Iterator[tuple[str, int]]:
    """FastAPI on uvicorn (one process, like the portal) answering each endpoint's bytes,
    read once, from an ``async`` handler: what the web stack costs without the portal's
    work. Yields its base URL and process id."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", CEILING_APP, str(static_dir), str(port)],
                                stdout=out, stderr=out)
        try:
            wait_for_port(port, proc, "the ceiling app", [log], limit=60)
            yield f"http://127.0.0.1:{port}", proc.pid
        finally:
            stop_process(proc, timeout=15)


def build_index(history: History, db: Path):
    """A fresh WebIndex at ``db`` (empty reader cache) refreshed from the storage directory;
    (index, seconds)."""
    from pycvmfs.web.index import RepoSource, WebIndex

    for old in db.parent.glob(db.name + "*"):
        old.unlink()
    shutil.rmtree(db.with_suffix(".cache"), ignore_errors=True)
    source = RepoSource(str(history.storage), (str(history.key),), FQRN)
    t0 = time.perf_counter()
    index = WebIndex(db, [source])
    outcome = index.refresh()
    seconds = time.perf_counter() - t0
    if outcome[0]["error"]:
        raise RuntimeError(f"indexing {history.storage} failed: {outcome[0]['error']}")
    return index, seconds


def one_round(i: int, history: History, eps: list[Endpoint], work: Path, args) -> dict:
    tag = f"[round {i + 1}]"
    db = work / "index" / "web.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    index, seconds = build_index(history, db)
    index.close()
    print(f"{tag} index build: {seconds:.2f} s ({db.stat().st_size / 1e6:.0f} MB of SQLite)",
          flush=True)
    row: dict = {"index_s": seconds}
    static = work / "static-root"
    shutil.rmtree(static, ignore_errors=True)
    (static / "static").mkdir(parents=True)
    static.chmod(0o755)
    (static / "static").chmod(0o755)
    with contextlib.ExitStack() as servers:
        portal, pid = servers.enter_context(portal_server(history, db, work / "portal.log"))
        bare = (servers.enter_context(portal_server(history, db, work / "portal-bare.log",
                                                    cache_mib=0))
                if any(ep.uncached for ep in eps) else None)
        nginx = servers.enter_context(nginx_server(static, workers=1, benchmark=True,
                                                   user=("root", "root")))
        ceiling = (servers.enter_context(ceiling_server(static / "static",
                                                        work / "ceiling.log"))
                   if args.ceiling else None)
        print(f"{tag} pycvmfs web (one process), nginx (one worker)"
              f"{', the ceiling app (one process)' if ceiling else ''} listening", flush=True)
        for ep in eps:
            base, base_pid = bare if ep.uncached else (portal, pid)
            script = (cycling_script(ep.paths, work / f"{ep.static}.lua") if ep.uncached
                      else None)
            body = fetch(base + ep.path)
            (static / "static" / ep.static).write_bytes(body)
            urls = {"portal": (base + ep.path, base_pid),
                    "nginx": (f"{nginx.url}/static/{ep.static}", nginx.proc.pid)}
            if ceiling:
                urls["ceiling"] = (f"{ceiling[0]}/static/{ep.static}", ceiling[1])
            for which, (url, _pid) in urls.items():
                if which != "portal" and len(fetch(url)) != len(body):
                    raise RuntimeError(f"{which} does not serve the {len(body)} bytes of "
                                       f"{ep.static}")
            order = list(urls)[i % len(urls):] + list(urls)[:i % len(urls)]
            got: dict[str, Wrk] = {}
            for which in order:
                url, server_pid = urls[which]
                own = script if which == "portal" else None
                run_wrk(url, args, server_pid, seconds=1, script=own)  # warm up
                got[which] = run_wrk(url, args, server_pid, script=own)
            ratio = got["portal"].rps / got["nginx"].rps
            print(f"{tag} {ep.name} ({len(body) / 1e3:.1f} kB, {ep.path}; in the order "
                  f"{', '.join(order)})")
            for which in urls:
                print(f"    {which:7s} {got[which].line()}")
            print(f"    portal/nginx {ratio:.3f}x requests/s", flush=True)
            row[ep.name] = {"size": len(body), **got, "ratio": ratio}
    return row


def _verdict(ok: bool, text: str) -> str:
    return f"{text}: {'MET' if ok else 'NOT MET'}"


def summarize(rows: list[dict], eps: list[Endpoint]) -> None:
    print(f"\n== medians of {len(rows)} rounds ==")
    each = ", ".join(f"{r['index_s']:.2f}" for r in rows)
    print(f"index build: {statistics.median(r['index_s'] for r in rows):.2f} s "
          f"(rounds: {each})")
    for ep in eps:
        runs = [r[ep.name] for r in rows]

        def med(which: str, what: str, runs: list[dict] = runs) -> float:
            return statistics.median(getattr(r[which], what) for r in runs)

        p99, ratio = med("portal", "p99_ms"), statistics.median(r["ratio"] for r in runs)
        errors = sum(w.errors for r in runs for w in r.values() if isinstance(w, Wrk))
        print(f"{ep.name} ({runs[0]['size'] / 1e3:.1f} kB): portal p50 "
              f"{med('portal', 'p50_ms'):.2f} ms, p99 {p99:.2f} ms, "
              f"{med('portal', 'rps'):.0f} req/s, CPU {med('portal', 'cpu_ms_per_request'):.2f} "
              f"ms per request; nginx p50 {med('nginx', 'p50_ms'):.2f} ms, "
              f"p99 {med('nginx', 'p99_ms'):.2f} ms, {med('nginx', 'rps'):.0f} req/s; "
              f"{errors} errors in all")
        if "ceiling" in runs[0]:
            print(f"  ceiling app (the same bytes from an async FastAPI handler): p50 "
                  f"{med('ceiling', 'p50_ms'):.2f} ms, p99 {med('ceiling', 'p99_ms'):.2f} ms, "
                  f"{med('ceiling', 'rps'):.0f} req/s = "
                  f"{statistics.median(r['ceiling'].rps / r['nginx'].rps for r in runs):.3f}x "
                  "nginx")
        print(_verdict(p99 <= TARGET_P99_MS,
                       f"  target p99 <= {TARGET_P99_MS:g} ms ({p99:.2f} ms)"))
        print(_verdict(ratio >= TARGET_RATIO,
                       f"  target >= {TARGET_RATIO:g}x nginx static throughput "
                       f"({ratio:.3f}x)"))


# -- profiling -------------------------------------------------------------------------------

def _query(index, history: History, ep: Endpoint):
    """The index call behind ``ep`` (what the handler asks the index for)."""
    plat = PLATFORMS[0]
    if ep.static.startswith("release"):
        return lambda: index.release_packages(history.releases[len(history.releases) // 2],
                                              plat)
    if ep.static.startswith("package"):
        return lambda: index.package(history.package)
    a = history.releases[max(0, len(history.releases) - 11)]
    return lambda: index.diff(f"{a}/{plat}", f"{history.releases[-1]}/{plat}")


@contextlib.contextmanager
def handlers_inline() -> Iterator[None]:
    """FastAPI runs ``def`` handlers (and their response validation) in a thread pool, where
    this thread's cProfile cannot see them: for profiling only, run them inline instead."""
    import fastapi.dependencies.utils
    import fastapi.routing

    async def inline(func, *args, **kwargs):
        return func(*args, **kwargs)

    modules = (fastapi.routing, fastapi.dependencies.utils)
    saved = [m.run_in_threadpool for m in modules]
    for m in modules:
        m.run_in_threadpool = inline
    try:
        yield
    finally:
        for m, old in zip(modules, saved, strict=True):
            m.run_in_threadpool = old


async def asgi_get(app, target: str) -> int:
    """One GET of ``target`` (path and query) straight through the ASGI app, in this thread;
    the body's size (the answer must be 200)."""
    path, _, query = target.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": urllib.parse.unquote(path),
             "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    got = {"status": 0, "size": 0}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            got["status"] = message["status"]
        elif message["type"] == "http.response.body":
            got["size"] += len(message.get("body", b""))

    await app(scope, receive, send)
    if got["status"] != 200:
        raise RuntimeError(f"{target} answered {got['status']} in process")
    return got["size"]


def profile(history: History, eps: list[Endpoint], work: Path, top: int = 25,
            n: int = 50) -> None:
    """In-process figures, handlers run inline in this thread (:func:`handlers_inline`): per
    endpoint the mean time of the index query alone and of the whole request through the ASGI
    app, then a cProfile of all those requests and of an index build."""
    import asyncio

    from pycvmfs.web.app import create_app

    db = work / "profile" / "web.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    prof = cProfile.Profile()
    index, _ = prof.runcall(build_index, history, db)
    print("\n== cProfile of an index build (in process) ==")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    app = create_app(index, refresh_interval=None)

    async def requests(target: str, count: int) -> None:
        for _ in range(count):
            await asgi_get(app, target)

    with handlers_inline():
        print(f"\n== in process, mean of {n} calls each (one at a time, no HTTP server) ==")
        for ep in eps:
            query = _query(index, history, ep)
            query()
            t0 = time.perf_counter()
            for _ in range(n):
                query()
            q = (time.perf_counter() - t0) / n
            asyncio.run(requests(ep.path, 2))
            t0 = time.perf_counter()
            asyncio.run(requests(ep.path, n))
            r = (time.perf_counter() - t0) / n
            print(f"{ep.name}: index query {q * 1e3:.2f} ms, whole request {r * 1e3:.2f} ms "
                  f"({q / r * 100:.0f} % in the query; one core answers at most "
                  f"{1 / r:.0f} req/s)")
        prof = cProfile.Profile()
        for ep in eps:
            prof.runcall(asyncio.run, requests(ep.path, n))
    print(f"\n== cProfile of {n} requests to each endpoint (in process) ==")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    index.close()


def _check_tools() -> None:
    for path, package in ((WRK, "wrk"), ("/usr/sbin/nginx", "nginx-light")):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} is not installed (Debian package {package})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--work", type=Path, help="where the repository and rounds go (default: a "
                    "temporary directory, removed at the end)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--releases", type=int, default=100)
    ap.add_argument("--packages", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of each wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ceiling", action="store_true",
                    help="also measure a FastAPI app answering the same bytes from an async "
                         "handler (the web stack's own cost)")
    ap.add_argument("--uncached", action="store_true",
                    help="also measure each endpoint over many distinct URLs (every release x "
                         "platform table, every package, every diff of releases ten apart) "
                         "with the answer cache off (pycvmfs web --cache-size 0)")
    ap.add_argument("--profile", action="store_true",
                    help="also time and cProfile the endpoints in process after the rounds")
    args = ap.parse_args()
    _check_tools()
    with contextlib.ExitStack() as cleanup:
        if args.work is None:
            args.work = Path(cleanup.enter_context(
                tempfile.TemporaryDirectory(prefix="pycvmfs-bench-web-")))
        work = args.work.absolute()
        shutil.rmtree(work / "history", ignore_errors=True)
        history = generate_history(work / "history", args.releases, args.packages, args.seed)
        s, txn = history.stats, history.transaction
        print(f"generated {args.releases} releases x {len(PLATFORMS)} platforms x "
              f"{args.packages} packages and {len(SLOTS) * len(NIGHTLY_DAYS)} nightly days "
              f"({len(SLOTS)} slots x {len(NIGHTLY_DAYS)} days, {s.failed_days} of "
              f"{len(SLOTS) * len(NIGHTLY_DAYS) * len(PLATFORMS)} day x platform runs with a "
              f"failed package) in {history.seconds:.1f} s: {s.summaries} summaries "
              f"({s.rows} package lines), {s.feeds} results feeds, {s.files} files, "
              f"{s.bytes / 1e6:.0f} MB; one transaction of {txn['seconds']:.1f} s, revision "
              f"{history.revision}, {txn['bytes_stored'] / 1e6:.0f} MB stored", flush=True)
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s --latency "
              f"--timeout 30s; {os.cpu_count()} cores shared by wrk, the portal and nginx",
              flush=True)
        args.wrk_script = work / "exact-percentiles.lua"
        args.wrk_script.write_text(WRK_DONE)
        eps = endpoints(history) + (uncached_endpoints(history) if args.uncached else [])
        rows = []
        for i in range(args.rounds):
            rows.append(one_round(i, history, eps, work / "rounds", args))
        summarize(rows, eps)
        if args.profile:
            profile(history, [e for e in eps if not e.uncached], work)


if __name__ == "__main__":
    main()
