"""Stack benchmark: ``pycvmfs stack publish`` of a generated stack of small real C builds.

Run by hand (needs gcc, make, pkg-config and bwrap; never in CI):
    .venv/bin/python benchmarks/stacks.py [--work DIR] [--rounds N] [--packages N]
                                          [--jobs N] [--parallel N] [--profile]

Generates (in ``--work``, default a temporary directory) a stack of ``--packages`` packages
(default 50) in six levels: libraries of a few C files with a header, a pkg-config file
(``Requires:`` its dependencies), a small program and a few hundred KB of data below
``share/``, then tools linking several libraries (every package but the roots has 1-5
dependencies, one of them on the level below, so the graph is six deep). Every source is a
deterministic tar.gz given by ``file://`` URL and sha256. Each round, against a fresh
repository and a fresh binary cache and work directory, runs ``pycvmfs stack publish`` as a
child process and measures wall-clock seconds, user and system CPU seconds and peak RSS (the
largest process of the child's tree) with ``os.wait4``, and the busy CPU seconds of the whole
machine meanwhile (``/proc/stat``): the recipes run in bwrap, whose processes ``os.wait4``
never sees, so only the machine figure includes the compilers:

1. cold: build everything and publish;
2. no-op: the same command again (hashes only; target <= 2 s);
3. one leaf: a tool nobody depends on gets a changed source; the ``--json`` report must show
   exactly one package built (target: <= 5 % of the cold time);
4. the publish transaction alone: ``stack publish --no-build`` of the changed stack into a
   second fresh repository (binary cache filled, install trees present in the same work
   directory: nothing built or unpacked) against ``pycvmfs publish --from`` of a directory
   holding copies of the same install trees laid out as ``lcg/releases/<dir>/<version>-<hash>/
   <platform>`` (each with a ``.cvmfscatalog`` marker, as the stack publish makes each package
   its own nested catalog) into a third; their order alternates each round (target <= 1.2x).
   The stack publish also writes the release links, summaries and the view: that is its extra.

Every round is printed, then the medians and whether each target is met. ``--profile`` adds a
cProfile of the no-op publish run in this process. ``--packages 10 --rounds 1`` is a quick try.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gzip
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

CLI = [sys.executable, "-m", "pycvmfs.cli.main"]
FQRN = "sft.bench.org"
RELEASE = "LCG_900"
#: share of the packages on each of the six levels (the last one: tools)
LEVEL_WEIGHTS = (0.12, 0.18, 0.20, 0.18, 0.16, 0.16)
TARGET_NOOP_S = 2.0
TARGET_LEAF_PCT = 5.0
TARGET_RATIO = 1.2


# -- generating the stack --------------------------------------------------------------------

@dataclass
class Package:
    """One generated package: its name, level, dependencies and whether it is a tool."""

    name: str
    level: int
    deps: list[str]
    tool: bool
    generator: bool = False


@dataclass
class GeneratedStack:
    original: Path   # stack.yaml
    changed: Path    # stack-changed.yaml: the leaf's source differs
    leaf: str
    packages: list[Package]


def _level_sizes(n: int) -> list[int]:
    """How many packages each of the six levels holds (each at least one)."""
    if n < len(LEVEL_WEIGHTS):
        raise SystemExit(f"--packages {n}: at least {len(LEVEL_WEIGHTS)} (one per level)")
    sizes = [max(1, int(n * w)) for w in LEVEL_WEIGHTS]
    i = 1
    while sum(sizes) < n:
        sizes[i] += 1
        i = i % 4 + 1  # the remainder goes to the middle levels
    while sum(sizes) > n:
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def make_dag(n: int, rng: random.Random) -> list[Package]:
    """``n`` packages in six levels, in topological order: roots without dependencies; every
    other one 1-5 (tools 2-5), one of them on the level just below."""
    out: list[Package] = []
    by_level: list[list[str]] = []
    tools = 0
    for level, size in enumerate(_level_sizes(n)):
        names = []
        for _ in range(size):
            tool = level == len(LEVEL_WEIGHTS) - 1
            name = f"tool{tools:02d}" if tool else f"mod{len(out) - tools:02d}"
            tools += tool
            deps: list[str] = []
            if level:
                deps.append(rng.choice(by_level[level - 1]))
                below = [m for lv in by_level for m in lv if m not in deps]
                want = rng.randint(2 if tool else 1, 5) - 1
                deps += rng.sample(below, min(want, len(below)))
            out.append(Package(name, level, sorted(deps), tool,
                               generator=tool and tools % 3 == 0))
            names.append(name)
        by_level.append(names)
    return out


def _text(pool: bytes, rng: random.Random, size: int) -> bytes:
    start = rng.randrange(len(pool) - size)
    return pool[start:start + size]


def _text_pool(rng: random.Random) -> bytes:
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 11)))
             for _ in range(2000)]
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(20_000)]
    return ("\n".join(lines) + "\n").encode()


def _data_files(p: Package, rng: random.Random, pool: bytes) -> dict[str, bytes]:
    """A few hundred KB below ``data/``: text tables, a binary blob, a small index."""
    files = {f"data/table{i}.txt": _text(pool, rng, rng.randint(30_000, 80_000))
             for i in range(2)}
    files["data/calib.bin"] = rng.randbytes(rng.randint(80_000, 200_000))
    files["data/index.json"] = json.dumps(
        {"package": p.name, "files": sorted(files), "level": p.level}).encode()
    return files


def _lookup_table(rng: random.Random) -> str:
    return ", ".join(str(rng.randrange(1 << 30)) for _ in range(512))


def functions(prefix: str, rng: random.Random, count: int) -> str:
    """``count`` exported functions ``<prefix>0``... with loops, branches and a switch over a
    table (about 5 ms of ``gcc -O2`` each: the bulk of a package's compile time)."""
    out = [f"static const int {prefix}_table[512] = {{{_lookup_table(rng)}}};"]
    for k in range(count):
        out.append(
            f"int {prefix}{k}(int x) {{ int s = {rng.randrange(1000)}; "
            f"for (int i = 0; i < (x & 63); i++) {{ s = s * {rng.randrange(3, 99)} + "
            f"(i ^ {rng.randrange(99)}); if (s & {1 << rng.randrange(5)}) "
            f"s ^= {prefix}_table[(i + {k}) & 511]; else s += x >> {rng.randrange(1, 7)}; }} "
            f"switch (x % 5) {{ case 0: return s; case 1: return s ^ {rng.randrange(999)}; "
            f"case 2: return s + {prefix}{max(k - 1, 0)}(0); default: return -s; }} }}")
    return "\n".join(out) + "\n"


def _calls(deps: list[str], fn: str) -> str:
    return " ^ ".join(f"{d}_{fn}(x + {i})" for i, d in enumerate(deps)) or "0"


MAKE_RULES = """\
%.o: %.c
\t$(CC) $(CFLAGS) -fPIC -I. $(DEP_CFLAGS) -c $< -o $@
"""


def library_sources(p: Package, rng: random.Random, pool: bytes, funcs: int, tweak: int = 0
                    ) -> dict[str, bytes]:
    """A shared library ``lib<name>.so.1`` of three C files (``funcs`` generated functions
    each), its header, pkg-config file, a program ``<name>-info`` and data; ``make install
    PREFIX=...`` installs them."""
    n, deps = p.name, p.deps
    includes = "".join(f"#include <{d}.h>\n" for d in deps)
    files = {
        f"{n}.h": (f"#ifndef {n.upper()}_H\n#define {n.upper()}_H\n"
                   f"int {n}_f0(int x);\nint {n}_f1(int x);\nint {n}_f2(int x);\n#endif\n"),
        f"{n}_a.c": (f'#include "{n}.h"\n{includes}{functions(f"{n}_a", rng, funcs)}'
                     f"int {n}_f0(int x) {{ return {n}_f1(x) + {n}_a{funcs - 1}(x) + "
                     f"({_calls(deps, 'f2')}) + {rng.randrange(1000) + tweak}; }}\n"),
        f"{n}_b.c": (f'#include "{n}.h"\n{functions(f"{n}_b", rng, funcs)}'
                     f"int {n}_f1(int x) {{ int s = 0; for (int i = 0; i < (x & 15); i++) "
                     f"s += {n}_f2(i) + {n}_b{funcs - 1}(i); return s; }}\n"),
        f"{n}_c.c": (f'#include "{n}.h"\n{functions(f"{n}_c", rng, funcs)}'
                     f"int {n}_f2(int x) {{ return {n}_c{funcs - 1}(x) & 0xffff; }}\n"),
        f"{n}_info.c": (f'#include <stdio.h>\n#include "{n}.h"\n'
                        f'int main(void) {{ printf("{n} %d\\n", {n}_f0(3)); return 0; }}\n'),
        f"{n}.pc.in": (f"prefix=@PREFIX@\nlibdir=${{prefix}}/lib\nincludedir=${{prefix}}/include"
                       f"\nName: {n}\nDescription: generated library {n}\nVersion: 1.{p.level}\n"
                       f"Requires: {' '.join(deps)}\nLibs: -L${{libdir}} -l{n}\n"
                       "Cflags: -I${includedir}\n"),
        "Makefile": (f"OBJS = {n}_a.o {n}_b.o {n}_c.o\n"
                     f"all: lib{n}.so.1 {n}-info\n{MAKE_RULES}"
                     f"lib{n}.so.1: $(OBJS)\n"
                     f"\t$(CC) -shared -Wl,-soname,lib{n}.so.1 -o $@ $(OBJS) $(DEP_LIBS) "
                     "$(LDFLAGS)\n"
                     f"{n}-info: {n}_info.o lib{n}.so.1\n"
                     f"\t$(CC) -o $@ {n}_info.o lib{n}.so.1 $(DEP_LIBS) $(LDFLAGS)\n"
                     "install: all\n"
                     f"\tmkdir -p $(PREFIX)/lib/pkgconfig $(PREFIX)/include $(PREFIX)/bin "
                     f"$(PREFIX)/share/{n}\n"
                     f"\tcp lib{n}.so.1 $(PREFIX)/lib/ && ln -sf lib{n}.so.1 "
                     f"$(PREFIX)/lib/lib{n}.so\n"
                     f"\tcp {n}.h $(PREFIX)/include/ && cp {n}-info $(PREFIX)/bin/\n"
                     f"\tcp -R data/. $(PREFIX)/share/{n}/\n"
                     f"\tsed 's|@PREFIX@|$(PREFIX)|' {n}.pc.in > $(PREFIX)/lib/pkgconfig/{n}.pc\n"),
    }
    out = {k: v.encode() for k, v in files.items()}
    out.update(_data_files(p, rng, pool))
    return out


def tool_sources(p: Package, rng: random.Random, pool: bytes, funcs: int, tweak: int = 0
                 ) -> dict[str, bytes]:
    """A tool: ``bin/<name>`` and ``bin/<name>-report`` linking all its libraries (code of
    ``funcs`` generated functions in two files), a plugin ``lib/<name>/plugin.so``, data; its
    test checks the program's first line."""
    n, deps = p.name, p.deps
    includes = "".join(f"#include <{d}.h>\n" for d in deps)
    files = {
        "work.h": "int work(int x);\n",
        "work.c": (f'#include "work.h"\n{includes}{functions("work", rng, funcs)}'
                   f"int work(int x) {{ return ({_calls(deps, 'f0')}) + work{funcs - 1}(x) + "
                   f"{7 + tweak}; }}\n"),
        "main.c": (f'#include <stdio.h>\n#include "work.h"\n'
                   f'int main(void) {{ printf("{n} ok %d\\n", work(5)); return 0; }}\n'),
        "report.c": (f'#include <stdio.h>\n#include "work.h"\n'
                     f'int main(void) {{ for (int i = 0; i < 4; i++) '
                     f'printf("{n} %d %d\\n", i, work(i)); return 0; }}\n'),
        "plugin.c": (functions(f"{n}_plugin", rng, funcs)
                     + f"int {n}_plugin(int x) {{ return {n}_plugin{funcs - 1}(x); }}\n"),
        "Makefile": ("all: prog report plugin.so\n" + MAKE_RULES
                     + "prog: main.o work.o\n\t$(CC) -o $@ main.o work.o $(DEP_LIBS) $(LDFLAGS)\n"
                     "report: report.o work.o\n"
                     "\t$(CC) -o $@ report.o work.o $(DEP_LIBS) $(LDFLAGS)\n"
                     "plugin.so: plugin.o\n\t$(CC) -shared -o $@ plugin.o $(LDFLAGS)\n"
                     "install: all\n"
                     f"\tmkdir -p $(PREFIX)/bin $(PREFIX)/lib/{n} $(PREFIX)/share/{n}\n"
                     f"\tcp prog $(PREFIX)/bin/{n} && cp report $(PREFIX)/bin/{n}-report\n"
                     f"\tcp plugin.so $(PREFIX)/lib/{n}/\n"
                     f"\tcp -R data/. $(PREFIX)/share/{n}/\n"),
    }
    out = {k: v.encode() for k, v in files.items()}
    out.update(_data_files(p, rng, pool))
    return out


def write_tarball(files: dict[str, bytes], top: str, dest: Path) -> str:
    """A tar.gz of ``files`` below ``top/`` with fixed owners and times; its sha256."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({top} | {f"{top}/{os.path.dirname(n)}" for n in files if "/" in n})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tf.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tf.addfile(info, io.BytesIO(files[name]))
    data = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _recipe(p: Package) -> str:
    deps = " ".join(p.deps)
    flags = (f' DEP_CFLAGS="$(pkg-config --cflags {deps})"'
             f' DEP_LIBS="$(pkg-config --libs {deps})"') if deps else ""
    return (f'make -j"$JOBS" CC="$CC" CFLAGS="$CFLAGS" LDFLAGS="$LDFLAGS"{flags}\n'
            'make install PREFIX="$PREFIX"')


def _entry(p: Package, src: Path, sha: str) -> dict:
    entry: dict = {"version": f"1.{p.level}", "source": {"url": src.resolve().as_uri(),
                                                         "sha256": sha},
                   "build": _recipe(p)}
    if p.deps:
        entry["depends"] = p.deps
    if p.tool:
        entry["test"] = f'"$PREFIX/bin/{p.name}" | grep -q "^{p.name} ok "'
    if p.generator:
        entry["directory"] = f"MCGenerators/{p.name}"
    return entry


def generate_stack(root: Path, count: int, *, seed: int = 1, funcs: int = 40
                   ) -> GeneratedStack:
    """Write the sources and two descriptions below ``root`` (the same inputs give the same
    bytes): ``stack.yaml`` and ``stack-changed.yaml`` where one leaf tool's source differs;
    ``funcs`` generated functions per C file."""
    rng = random.Random(seed)
    pool = _text_pool(rng)
    dag = make_dag(count, rng)
    needed = {d for p in dag for d in p.deps}
    leaf = next(p for p in reversed(dag) if p.name not in needed)
    entries: dict[str, dict] = {}
    changed: dict[str, dict] = {}
    for p in dag:
        make = tool_sources if p.tool else library_sources
        top = f"{p.name}-1.{p.level}"
        state = rng.getstate()
        src = root / "sources" / f"{top}.tar.gz"
        entries[p.name] = _entry(p, src, write_tarball(make(p, rng, pool, funcs), top, src))
        if p is leaf:
            rng2 = random.Random()
            rng2.setstate(state)
            alt = root / "sources" / f"{top}-changed.tar.gz"
            changed[p.name] = _entry(p, alt, write_tarball(make(p, rng2, pool, funcs, tweak=1),
                                                           top, alt))
    for name, data in (("stack.yaml", entries), ("stack-changed.yaml", {**entries, **changed})):
        desc = {"release": RELEASE, "repository": FQRN, "packages": data}
        (root / name).write_text(yaml.safe_dump(desc, sort_keys=False))
    return GeneratedStack(root / "stack.yaml", root / "stack-changed.yaml", leaf.name, dag)


# -- measuring -------------------------------------------------------------------------------

@dataclass
class Child:
    """What one child process took, and its standard output."""

    seconds: float
    user: float      # CPU seconds of the child and the descendants it waited for
    system: float
    rss: int         # bytes, the largest of those processes
    machine: float   # busy CPU seconds of the whole machine meanwhile
    out: str

    def line(self) -> str:
        return (f"{self.seconds:.2f} s (user {self.user:.2f} s, system {self.system:.2f} s, "
                f"machine busy {self.machine:.1f} CPU s, peak RSS {self.rss / 2**20:.0f} MB)")


def machine_busy() -> float:
    """CPU seconds the machine has been busy (not idle or waiting for I/O) since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], log: Path, env: dict[str, str]) -> Child:
    """Run ``cmd`` (standard output to ``log``, errors to ``log``.err); seconds, CPU and peak
    RSS of it and its waited-for descendants (``os.wait4``)."""
    errors = log.with_suffix(".err")
    with open(log, "wb") as out, open(errors, "wb") as err:
        busy, t0 = machine_busy(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **env})
        _, status, usage = os.wait4(proc.pid, 0)
        secs, busy = time.perf_counter() - t0, machine_busy() - busy
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}); {errors}:\n"
                           + errors.read_text(errors="replace")[-3000:])
    return Child(secs, usage.ru_utime, usage.ru_stime, usage.ru_maxrss * 1024, busy,
                 log.read_text())


def new_repository(where: Path):
    """A fresh repository ``FQRN`` with its storage and configuration below ``where``."""
    from pycvmfs.publish.config import ServerSettings
    from pycvmfs.publish.repository import Publisher

    return Publisher.mkfs(FQRN, where / "srv" / FQRN, config_dir=where / "etc",
                          settings=ServerSettings())


def _config_env(pub) -> dict[str, str]:
    return {"PYCVMFS_CONFIG_DIR": str(pub.config.config_dir)}


def stack_publish(pub, stack_file: Path, node: Path, log: Path, args, *extra: str
                  ) -> tuple[Child, dict]:
    """``pycvmfs stack publish --json`` into ``pub`` with work and cache below ``node``."""
    cmd = [*CLI, "stack", "publish", FQRN, str(stack_file), "--work", str(node / "work"),
           "--cache", str(node / "cache"), "--parallel", str(args.parallel), "--json", *extra]
    if args.jobs:
        cmd += ["--jobs", str(args.jobs)]
    child = run_child(cmd, log, _config_env(pub))
    return child, json.loads(child.out)


def built(report: dict) -> list[str]:
    return [p["name"] for p in (report.get("results") or {}).get("packages", [])
            if p["status"] == "built"]


def build_steps(report: dict) -> str:
    """The recipes' own seconds (build steps, tests apart) of the packages a report built."""
    runs = [p for p in (report.get("results") or {}).get("packages", [])
            if p["status"] == "built"]
    if not runs:
        return "no build steps"
    steps = [p["duration"] for p in runs]
    tests = sum(p["test_duration"] for p in runs)
    return (f"build steps {sum(steps):.1f} s in all (median {statistics.median(steps):.2f} s), "
            f"tests {tests:.1f} s")


def depth(packages: list[Package]) -> int:
    """Packages on the longest dependency chain."""
    longest: dict[str, int] = {}
    for p in packages:  # topological order
        longest[p.name] = 1 + max((longest[d] for d in p.deps), default=0)
    return max(longest.values())


def release_tree(report: dict, node: Path, dest: Path) -> int:
    """Copies of the install trees of ``report``'s plan laid out as in the repository, each
    with a ``.cvmfscatalog`` marker; the bytes of regular files copied."""
    shutil.rmtree(dest, ignore_errors=True)
    prefix = f"/cvmfs/{FQRN}/"
    total = 0
    for p in report["plan"]["packages"]:
        target = dest / p["prefix"].removeprefix(prefix)
        shutil.copytree(node / "work" / "installs" / p["full_hash"], target, symlinks=True)
        (target / ".cvmfscatalog").write_bytes(b"")
        total += sum(f.stat().st_size for f in target.rglob("*")
                     if f.is_file() and not f.is_symlink())
    return total


def forget_reader_cache(node: Path) -> None:
    """Drop the reader cache of the work directory: it remembers repository FQRN at the
    revision it last read, so another repository of the same name looks like a rollback."""
    shutil.rmtree(node / "work" / "reader-cache", ignore_errors=True)


def publish_from(pub, tree: Path, log: Path) -> tuple[Child, dict]:
    child = run_child([*CLI, "publish", FQRN, "--from", str(tree), "--json"], log,
                      _config_env(pub))
    return child, json.loads(child.out)


def one_round(i: int, gen: GeneratedStack, work: Path, args) -> dict:
    tag = f"[round {i + 1}]"
    node = work / "node"
    node.mkdir(parents=True)
    repo = new_repository(work / "repo-a")
    cold, rep = stack_publish(repo, gen.original, node, work / "cold.json", args)
    if len(built(rep)) != len(gen.packages):
        raise RuntimeError(f"cold publish built {len(built(rep))} of {len(gen.packages)}")
    print(f"{tag} cold build+publish of {len(gen.packages)} packages: {cold.line()}; "
          f"revision {rep['revision']}, {rep['publish']['files']} files, "
          f"{rep['publish']['bytes_in'] / 1e6:.1f} MB, transaction "
          f"{rep['publish']['seconds']:.2f} s; {build_steps(rep)}", flush=True)
    noop, rep = stack_publish(repo, gen.original, node, work / "noop.json", args)
    print(f"{tag} no-op republish: {noop.line()}; built {len(built(rep))}, revision "
          f"{rep['revision'] or 'none (nothing changed)'}, plan {rep['plan']['counts']}",
          flush=True)
    leaf, rep = stack_publish(repo, gen.changed, node, work / "leaf.json", args)
    leaf_built = built(rep)
    print(f"{tag} one leaf ({gen.leaf}) changed: {leaf.line()} = "
          f"{leaf.seconds / cold.seconds * 100:.1f} % of cold; built {leaf_built}, revision "
          f"{rep['revision']}, transaction {rep['publish']['seconds']:.2f} s; "
          f"{build_steps(rep)}", flush=True)
    tree = work / "from-tree"
    size = release_tree(rep, node, tree)
    row = {"cold_s": cold.seconds, "cold_user": cold.user, "cold_sys": cold.system,
           "cold_rss": cold.rss, "cold_busy": cold.machine, "noop_s": noop.seconds,
           "noop_rss": noop.rss,
           "leaf_s": leaf.seconds, "leaf_pct": leaf.seconds / cold.seconds * 100,
           "leaf_built": len(leaf_built)}
    order = ["stack", "from"] if i % 2 == 0 else ["from", "stack"]
    for which in order:
        if which == "stack":
            forget_reader_cache(node)
            row["stack"], srep = stack_publish(new_repository(work / "repo-b"), gen.changed,
                                               node, work / "nobuild.json", args, "--no-build")
            row["stack_txn"] = srep["publish"]["seconds"]
            if srep["plan"]["counts"]["cached"] != len(gen.packages) or built(srep):
                raise RuntimeError(f"--no-build publish planned {srep['plan']['counts']}")
        else:
            row["from"], frep = publish_from(new_repository(work / "repo-c"), tree,
                                             work / "from.json")
            row["from_txn"] = frep["seconds"]
    ratio = row["stack"].seconds / row["from"].seconds
    print(f"{tag} publish alone ({' then '.join(order)}; {size / 1e6:.1f} MB of install "
          f"trees): stack publish --no-build {row['stack'].line()}, transaction "
          f"{row['stack_txn']:.2f} s; publish --from {row['from'].line()}, transaction "
          f"{row['from_txn']:.2f} s; ratio {ratio:.2f}x (transactions "
          f"{row['stack_txn'] / row['from_txn']:.2f}x)", flush=True)
    if args.profile and i == args.rounds - 1:
        forget_reader_cache(node)
        profile_noop(repo, gen.changed, node, args)
    row.update(ratio=ratio, txn_ratio=row["stack_txn"] / row["from_txn"],
               stack_s=row["stack"].seconds, from_s=row["from"].seconds)
    del row["stack"], row["from"]
    return row


def profile_noop(pub, stack_file: Path, node: Path, args, top: int = 30) -> None:
    """cProfile of an in-process no-op ``publish_release`` (everything published already)."""
    from pycvmfs.publish.repository import Publisher
    from pycvmfs.stacks.service import StackSettings, publish_release

    pub = Publisher.open(FQRN, config_dir=pub.config.config_dir)
    settings = StackSettings(work_dir=node / "work", cache=str(node / "cache"),
                             parallel=args.parallel, jobs=args.jobs)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    report = prof.runcall(publish_release, pub, stack_file, settings)
    print(f"\n== cProfile of an in-process no-op publish_release: "
          f"{time.perf_counter() - t0:.2f} s (profiled), revision {report.revision} ==")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def _verdict(ok: bool, text: str) -> str:
    return f"{text}: {'MET' if ok else 'NOT MET'}"


def summarize(rows: list[dict]) -> None:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\n== medians of {len(rows)} rounds ==")
    print(f"cold build+publish: {med['cold_s']:.1f} s (user {med['cold_user']:.1f} s, system "
          f"{med['cold_sys']:.1f} s outside the sandboxes; machine busy {med['cold_busy']:.0f} "
          f"CPU s; peak RSS {med['cold_rss'] / 2**20:.0f} MB)")
    print(_verdict(med["noop_s"] <= TARGET_NOOP_S,
                   f"  target no-op <= {TARGET_NOOP_S:g} s ({med['noop_s']:.2f} s, peak RSS "
                   f"{med['noop_rss'] / 2**20:.0f} MB)"))
    one = all(r["leaf_built"] == 1 for r in rows)
    print(_verdict(one and med["leaf_pct"] <= TARGET_LEAF_PCT,
                   f"  target one-leaf change <= {TARGET_LEAF_PCT:g} % of cold with one "
                   f"package built ({med['leaf_s']:.2f} s = {med['leaf_pct']:.1f} %; built "
                   f"{[r['leaf_built'] for r in rows]} per round)"))
    print(_verdict(med["ratio"] <= TARGET_RATIO,
                   f"  target stack publish --no-build <= {TARGET_RATIO:g}x publish --from "
                   f"({med['stack_s']:.2f} s vs {med['from_s']:.2f} s = {med['ratio']:.2f}x; "
                   f"transactions alone {med['txn_ratio']:.2f}x)"))


def _check_tools() -> None:
    for tool, package in (("gcc", "gcc"), ("make", "make"), ("pkg-config", "pkgconf"),
                          ("bwrap", "bubblewrap")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian package {package})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--work", type=Path, help="where the stack and rounds go (default: a "
                    "temporary directory, removed at the end)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--packages", type=int, default=50)
    ap.add_argument("--jobs", type=int, help="make jobs per build (default: the CPUs)")
    ap.add_argument("--parallel", type=int, default=2, help="packages built at once")
    ap.add_argument("--functions", type=int, default=40,
                    help="generated functions per C file (about 5 ms of gcc -O2 each)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile an in-process no-op publish after the last round")
    args = ap.parse_args()
    _check_tools()
    with contextlib.ExitStack() as cleanup:
        if args.work is None:
            args.work = Path(cleanup.enter_context(
                tempfile.TemporaryDirectory(prefix="pycvmfs-bench-stacks-")))
        work = args.work.absolute()
        t0 = time.perf_counter()
        gen = generate_stack(work / f"stack-{args.packages}-{args.functions}-{args.seed}",
                             args.packages, seed=args.seed, funcs=args.functions)
        deps = [len(p.deps) for p in gen.packages if p.deps]
        print(f"generated {len(gen.packages)} packages ({sum(p.tool for p in gen.packages)} "
              f"tools, {sum(not p.deps for p in gen.packages)} roots, {min(deps)}-{max(deps)} "
              f"dependencies, depth {depth(gen.packages)}, leaf {gen.leaf}) in "
              f"{time.perf_counter() - t0:.1f} s; "
              f"parallel {args.parallel}, jobs {args.jobs or os.cpu_count()}", flush=True)
        runs = work / "runs"
        rows = []
        for i in range(args.rounds):
            shutil.rmtree(runs, ignore_errors=True)
            rows.append(one_round(i, gen, runs / f"round{i}", args))
        shutil.rmtree(runs, ignore_errors=True)
        summarize(rows)


if __name__ == "__main__":
    main()
