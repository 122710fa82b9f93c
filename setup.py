"""The compiled parts of pycvmfs: the FUSE session (libfuse3's low-level API) and the
replica's verified HTTP copy engine (libcurl, OpenSSL). Everything else about the package is in
pyproject.toml."""

import atexit
import shlex
import shutil
import subprocess
import tempfile

from setuptools import Extension, setup


def _pkg_config(flag: str, package: str, fallback: list[str]) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", flag, package], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return fallback
    return shlex.split(out)


def _scratch() -> str:
    """A folder of this build's own for setuptools' egg-info and build trees, removed at exit:
    nothing is written into the source tree (a root-owned clone installs for any user, and a
    root build leaves nothing behind that a later user build would have to overwrite)."""
    path = tempfile.mkdtemp(prefix="pycvmfs-build-")
    atexit.register(shutil.rmtree, path, True)
    return path


_WARNINGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
_SCRATCH = _scratch()

setup(options={"egg_info": {"egg_base": _SCRATCH}, "build": {"build_base": f"{_SCRATCH}/build"}},
      ext_modules=[
    Extension(
        "pycvmfs.client._fuse_lowlevel",
        sources=["src/pycvmfs/client/_fuse_lowlevel.c"],
        extra_compile_args=[*_pkg_config("--cflags", "fuse3", ["-I/usr/include/fuse3"]),
                            *_WARNINGS],
        extra_link_args=_pkg_config("--libs", "fuse3", ["-lfuse3", "-lpthread"]),
    ),
    Extension(
        "pycvmfs.storage._httpcopy",
        sources=["src/pycvmfs/storage/_httpcopy.c"],
        extra_compile_args=[*_pkg_config("--cflags", "libcurl libcrypto", []), *_WARNINGS],
        extra_link_args=_pkg_config("--libs", "libcurl libcrypto",
                                    ["-lcurl", "-lcrypto", "-lpthread"]),
    ),
])
