"""Fixtures for the command-line tests: the installed ``pycvmfs`` command run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

GOLDEN_FQRN = "golden.example.org"
#: environment variables that would give the command a key or a cache behind the tests' back
_SCRUBBED = ("CVMFS_PUBLIC_KEY", "CVMFS_KEYS_DIR", "PYCVMFS_CACHE_DIR", "CVMFS_HTTP_PROXY",
             "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def pycvmfs_command() -> list[str]:
    """The installed console script next to the interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("pycvmfs")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pycvmfs.cli.main"]


@dataclass(frozen=True)
class Run:
    """One finished ``pycvmfs`` invocation."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8")

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> object:
        return json.loads(self.out)

    def describe(self) -> str:
        return (f"pycvmfs {' '.join(self.args)} -> exit {self.returncode}\n"
                f"stderr: {self.stderr}\nstdout: {self.stdout[:2000]!r}")


def base_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYCVMFS_CACHE_DIR"] = str(cache_dir)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"
    return env


class Runner:
    """Runs the real ``pycvmfs`` command line with a given default object cache."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir

    def __call__(self, *args: str | os.PathLike, expect: int | None = 0,
                 env: Mapping[str, str] | None = None, cache: Path | None = None,
                 timeout: float = 60) -> Run:
        """Run ``pycvmfs ARGS``; ``expect`` is the exit code to insist on (None: any)."""
        argv = [os.fspath(a) for a in args]
        full_env = base_env(cache or self.cache_dir) if env is None else dict(env)
        p = subprocess.run(pycvmfs_command() + argv, capture_output=True, env=full_env,
                           timeout=timeout, check=False)
        r = Run(tuple(argv), p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"))
        if expect is not None:
            assert r.returncode == expect, r.describe()
        return r

    def many(self, *commands: Sequence[str | os.PathLike], expect: int | None = 0) -> list[Run]:
        """Run independent commands concurrently (the tests are dominated by start-up time)."""
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            return list(pool.map(lambda args: self(*args, expect=expect), commands))


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One object cache shared by the tests of a module that are not about caching."""
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture(scope="session")
def pycvmfs_argv() -> list[str]:
    """The command line that starts ``pycvmfs`` (for tests that need their own Popen)."""
    return pycvmfs_command()


@pytest.fixture(scope="module")
def cli_env(cli_cache: Path) -> Callable[[], dict[str, str]]:
    """``cli_env()``: a fresh copy of the environment the tests run ``pycvmfs`` in (no keys
    from the environment, ``PYCVMFS_CACHE_DIR`` set to the module's cache)."""
    return lambda: base_env(cli_cache)


@pytest.fixture(scope="module")
def pycvmfs(cli_cache: Path) -> Runner:
    """``pycvmfs(*args, expect=0, env=None, cache=None)`` runs the real command line."""
    return Runner(cli_cache)


@pytest.fixture(scope="session")
def golden_url(golden_server) -> str:
    """The golden repository over HTTP on 127.0.0.1."""
    return f"{golden_server.url}/{GOLDEN_FQRN}"


@pytest.fixture(params=["local", "http"])
def golden_location(request: pytest.FixtureRequest, golden_repo: Path) -> str:
    """The golden repository as a local storage directory and as an HTTP URL."""
    if request.param == "local":
        return str(golden_repo)
    return request.getfixturevalue("golden_url")
