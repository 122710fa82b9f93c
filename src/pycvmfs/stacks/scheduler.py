"""Build a planned stack: packages in parallel along the dependency graph, each from verified
sources in its sandbox, finished builds stored in the binary cache; a failure skips its
dependents and is reported, never hidden."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from pycvmfs.errors import BuildError, StackError
from pycvmfs.stacks.binarycache import BinaryCache
from pycvmfs.stacks.builder import Builder, BuildRequest, DepInstall
from pycvmfs.stacks.plan import BUILD, CACHED, PUBLISHED, PlannedPackage, StackPlan
from pycvmfs.stacks.results import PackageResult, RunResults
from pycvmfs.stacks.sources import SourceCache

__all__ = ["StackBuilder", "installed_dir"]

_TAIL = 4096


def installed_dir(work_dir: Path, full: str) -> Path:
    """Where a build's install tree lives on this node (made here or unpacked from a cache)."""
    return Path(work_dir) / "installs" / full


def _tail(path: Path | None, limit: int = _TAIL) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class StackBuilder:
    """Builds the packages of a plan that are neither published nor cached.

    ``parallel`` packages build at once, each with ``jobs`` make jobs. ``only``: build just
    these (a CI job's group); everything else they need must be in the cache already.
    ``progress(event, name, done, total)`` is called as packages start and finish."""

    def __init__(self, plan: StackPlan, *, cache: BinaryCache, work_dir: Path,
                 sources: SourceCache, parallel: int = 2, jobs: int | None = None,
                 run_tests: bool = True, sandbox: str = "auto",
                 progress: Callable[[str, str, int, int], None] | None = None) -> None:
        self.plan = plan
        self.cache = cache
        self.work_dir = Path(work_dir)
        self.sources = sources
        self.parallel = max(1, parallel)
        self.jobs = jobs or max(1, os.cpu_count() or 1)
        self.run_tests = run_tests
        self.sandbox = sandbox
        self.progress = progress
        self.builder = Builder(self.work_dir)
        self._lock = threading.Lock()
        self._unpacking: dict[str, threading.Lock] = {}

    # -- local install trees ------------------------------------------------------------------
    def ensure_local(self, p: PlannedPackage) -> Path:
        """The install tree of ``p`` on this node, unpacked from the cache when missing (one
        thread unpacks a given build; the others wait for it)."""
        where = installed_dir(self.work_dir, p.full)
        with self._lock:
            lock = self._unpacking.setdefault(p.full, threading.Lock())
        with lock:
            if where.is_dir():
                return where
            if not self.cache.has(p.full):
                raise StackError(f"{p.name} {p.spec.version} ({p.full[:12]}) is neither built "
                                 f"on this node nor in the binary cache "
                                 f"{self.cache.describe()}")
            where.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{p.full[:16]}-", dir=where.parent))
            try:
                self.cache.unpack(p.full, tmp)
                os.replace(tmp, where)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return where

    # -- one package --------------------------------------------------------------------------
    def _build_one(self, p: PlannedPackage) -> PackageResult:
        started = time.time()
        result = PackageResult(name=p.name, version=p.spec.version, short=p.short,
                               full_hash=p.full, status="built", started=started,
                               is_generator=p.spec.is_generator,
                               has_test=p.spec.test is not None)
        scratch = self.work_dir / "build" / f"{p.name}-{p.full[:16]}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            src = None
            if p.spec.source is not None:
                self.sources.fetch(p.spec)
                src = self.sources.unpack(p.spec, scratch / "src")
            deps = [DepInstall(name=d.name, version=d.spec.version, full_hash=d.full,
                               short=d.short, prefix=d.prefix, local_dir=self.ensure_local(d))
                    for d in self.plan.closure(p.name)]
            req = BuildRequest(spec=p.spec, platform=self.plan.stack.platform, full_hash=p.full,
                               short=p.short, prefix=p.prefix, source_dir=src, deps=deps,
                               direct=p.deps, toolchain=self.plan.toolchain,
                               stack_env=self.plan.stack.env, jobs=self.jobs,
                               run_tests=self.run_tests, sandbox=self.sandbox,
                               extra_record={"recipe_hash": p.recipe,
                                             "stack": self.plan.stack.name})
            built = self.builder.build(req)
            self.cache.put(p.full, built.install_dir, built.record)
            steps = built.record.get("steps", {})
            test = steps.get("test", {})
            result.duration = float(steps.get("build", {}).get("duration", 0.0))
            result.log = str(built.log_dir / "build.log")
            result.test_status = {"passed": "passed", "failed": "failed"}.get(
                test.get("status", "none"), "notrun")
            result.test_duration = float(test.get("duration", 0.0))
            if result.test_status != "notrun":
                result.test_log = str(built.log_dir / "test.log")
                result.test_output = _tail(built.log_dir / "test.log", 64 << 10)
        except BuildError as e:
            result.status = "failed"
            result.log = e.log
            result.error = f"{e}\n{_tail(Path(e.log))}"
        except StackError as e:
            result.status = "failed"
            result.error = str(e)
        except Exception as e:
            result.status = "failed"
            result.error = f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result.finished = time.time()
        if result.status == "failed" and not result.duration:
            result.duration = result.finished - started
        return result

    # -- the whole plan -----------------------------------------------------------------------
    def run(self, *, only: Iterable[str] | None = None) -> RunResults:
        plan = self.plan
        wanted = set(plan.packages) if only is None else set(only)
        unknown = wanted - set(plan.packages)
        if unknown:
            raise StackError(f"--only names packages the stack does not have: "
                             f"{', '.join(sorted(unknown))}")
        run = RunResults(stack=plan.stack.name, kind=plan.stack.kind, platform=plan.platform,
                         day=None, site=socket.gethostname(), started=time.time(),
                         finished=0.0, packages=[])
        results: dict[str, PackageResult] = {}
        todo = [n for n, p in plan.packages.items() if p.state == BUILD and n in wanted]
        for n, p in plan.packages.items():  # packages outside --only are another job's
            if p.state in (PUBLISHED, CACHED) and n in wanted:
                results[n] = PackageResult(name=n, version=p.spec.version, short=p.short,
                                           full_hash=p.full, status="reused",
                                           is_generator=p.spec.is_generator)
        for n in todo:  # a dependency outside --only must come from the cache
            for d in plan.graph.closure(n):
                dp = plan.packages[d]
                if dp.state == BUILD and d not in wanted and not self.cache.has(dp.full):
                    raise StackError(f"{n} needs {d} {dp.spec.version}, which is not in the "
                                     f"binary cache {self.cache.describe()} and not part of "
                                     "this build (--only)")
        pending = set(todo)
        failed: set[str] = set()
        running: dict[Future, str] = {}
        total, done = len(todo), 0
        with ThreadPoolExecutor(max_workers=self.parallel,
                                thread_name_prefix="stack-build") as pool:
            while pending or running:
                for n in [n for n in todo if n in pending]:
                    deps = plan.graph.closure(n)
                    if any(d in failed for d in deps):
                        pending.discard(n)
                        failed.add(n)
                        bad = sorted(d for d in deps if d in failed)
                        p = plan.packages[n]
                        results[n] = PackageResult(
                            name=n, version=p.spec.version, short=p.short, full_hash=p.full,
                            status="skipped", is_generator=p.spec.is_generator,
                            has_test=p.spec.test is not None,
                            error=f"not built: {', '.join(bad)} failed")
                        done += 1
                        continue
                    if len(running) >= self.parallel:
                        break
                    if all(d not in pending and d not in running.values() for d in deps):
                        pending.discard(n)
                        if self.progress:
                            self.progress("start", n, done, total)
                        running[pool.submit(self._build_one, plan.packages[n])] = n
                if not running:
                    continue
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    n = running.pop(fut)
                    res = fut.result()
                    results[n] = res
                    if res.status == "failed":
                        failed.add(n)
                    done += 1
                    if self.progress:
                        self.progress(res.status, n, done, total)
        run.packages = [results[n] for n in plan.packages if n in results]
        run.finished = time.time()
        return run
