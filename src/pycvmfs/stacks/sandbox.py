"""Running build steps: inside a bubblewrap sandbox where the package's install tree is mounted
at its FINAL published path (``/cvmfs/<repo>/lcg/releases/<dir>/<ver>-<hash>/<platform>``), or
directly on the host (the relocation fallback); output streamed to a log file, a timeout kills
the whole process group.

The sandbox (:func:`bwrap_argv`) is built from nothing: its root is a fresh tmpfs holding only
read-only binds of ``/usr``, ``/etc`` and ``/opt``, the host's ``/bin``, ``/lib``, ``/lib64``,
``/sbin`` recreated as they are on the host (a symlink where the host has one, else a read-only
bind), a private ``/proc``, ``/dev`` and ``/tmp``, and the :class:`Mount` s the caller gives
(the sources at ``/build/src``, a home at ``/build/home``, the stage writable at the package's
prefix, every dependency read-only at its own prefix). Every namespace is unshared (no network),
the environment is cleared and replaced by the given one, and the sandbox dies with its parent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import StackError

__all__ = ["SANDBOX_HOME", "SANDBOX_SRC", "Mount", "StepOutcome", "bwrap_argv",
           "bwrap_available", "run_in_final_layout", "run_logged"]

#: Where the sources are seen inside the sandbox (no host work path leaks into binaries).
SANDBOX_SRC = "/build/src"
#: The build's HOME inside the sandbox.
SANDBOX_HOME = "/build/home"

_SYSTEM_DIRS = ("/usr", "/etc", "/opt")
_SYSTEM_LINKS = ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")


@dataclass(frozen=True)
class Mount:
    """A host directory seen at ``target`` inside the sandbox (read-only unless writable)."""

    host: Path
    target: str
    writable: bool = False


@dataclass(frozen=True)
class StepOutcome:
    """How a logged command ended: its exit status (None when it was killed on timeout)."""

    returncode: int | None
    timed_out: bool
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _bwrap() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def bwrap_available() -> bool:
    """Whether bubblewrap works here (probed once: ``bwrap --ro-bind / / true``)."""
    exe = _bwrap()
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "--ro-bind", "/", "/", "true"], capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _system_layout() -> list[str]:
    """The read-only system part of the sandbox, recreated from the host's layout."""
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for d in _SYSTEM_LINKS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return [*args, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def bwrap_argv(command: Sequence[str], *, mounts: Sequence[Mount], env: Mapping[str, str],
               cwd: str = SANDBOX_SRC, network: bool = False) -> list[str]:
    """The ``bwrap`` command line running ``command`` in a fresh sandbox with ``mounts`` (made
    parents first, so a mount inside another one is not hidden), ``env`` as the whole
    environment and ``cwd`` as the working directory."""
    exe = _bwrap()
    if exe is None:
        raise StackError("bwrap is not installed (Debian package bubblewrap)")
    for m in mounts:
        if not m.target.startswith("/") or m.target.rstrip("/") in ("", *_SYSTEM_DIRS):
            raise StackError(f"cannot mount {m.host} at {m.target!r} in the build sandbox")
        if not Path(m.host).is_dir():
            raise StackError(f"cannot mount {m.host} at {m.target} in the build sandbox: "
                             "not a directory")
    args = [exe, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    if network:
        args.append("--share-net")
    args += _system_layout()
    for m in sorted(mounts, key=lambda m: m.target.rstrip("/").count("/")):
        args += ["--bind" if m.writable else "--ro-bind", str(m.host), m.target]
    args += ["--chdir", cwd]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", *command]


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` exits WITHOUT reaping it (so its number, which is also its process
    group's, cannot be reused while the group is killed); False on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def run_logged(argv: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path | str,
               timeout: float) -> StepOutcome:
    """Run ``argv`` in its own process group with stdout and stderr streamed into ``log``
    (created or truncated) and stdin from /dev/null. When it exits, whatever it left running
    in its group is killed; after ``timeout`` seconds the whole group is killed (a sandbox
    dies with it)."""
    started = time.monotonic()
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                    start_new_session=True)
        except OSError as e:
            raise StackError(f"cannot run {argv[0]} (cwd {cwd}): {e}") from e
        try:
            exited = _wait_unreaped(proc.pid, timeout)
        finally:
            _kill_group(proc.pid)
            rc = proc.wait()
        if not exited:
            out.write(f"\n*** killed after {timeout:g} s (timeout)\n".encode())
    return StepOutcome(returncode=rc if exited else None, timed_out=not exited,
                       duration=time.monotonic() - started)


def run_in_final_layout(argv: Sequence[str], mounts: Mapping[str, Path], *,
                        env: Mapping[str, str] | None = None, cwd: str = "/",
                        timeout: float = 600.0) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in a sandbox where each install tree ``mounts[prefix]`` is seen read-only
    at its final ``prefix``, as a user of the repository would see it; output captured.
    ``env`` defaults to ``PATH=/usr/bin:/bin``, ``LANG=C.UTF-8``, ``HOME=/tmp``."""
    if env is None:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
    cmd = bwrap_argv(argv, mounts=[Mount(Path(host), prefix) for prefix, host in mounts.items()],
                     env=env, cwd=cwd)
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise StackError(f"{argv[0]} did not finish within {timeout:g} s in the final "
                         "layout sandbox") from e
