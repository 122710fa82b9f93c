"""The one compiled part of pycvmfs: the FUSE session (libfuse3's low-level API). Everything
else about the package is in pyproject.toml."""

import shlex
import subprocess

from setuptools import Extension, setup


def _pkg_config(flag: str, fallback: list[str]) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", flag, "fuse3"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return fallback
    return shlex.split(out)


setup(ext_modules=[Extension(
    "pycvmfs.client._fuse_lowlevel",
    sources=["src/pycvmfs/client/_fuse_lowlevel.c"],
    extra_compile_args=[*_pkg_config("--cflags", ["-I/usr/include/fuse3"]), "-O2",
                        "-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=_pkg_config("--libs", ["-lfuse3", "-lpthread"]),
)])
