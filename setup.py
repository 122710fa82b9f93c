"""The compiled parts of pycvmfs: the FUSE session (libfuse3's low-level API) and the
replica's verified HTTP copy engine (libcurl, OpenSSL). Everything else about the package is in
pyproject.toml."""

import shlex
import subprocess

from setuptools import Extension, setup


def _pkg_config(flag: str, package: str, fallback: list[str]) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", flag, package], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return fallback
    return shlex.split(out)


_WARNINGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(ext_modules=[
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
