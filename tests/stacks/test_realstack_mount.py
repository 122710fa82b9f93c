"""The acceptance test of the stacks: a release of real upstream packages (Debian's source
tarballs: zlib, xz, libpng, libxml2, expat, lz4, libyaml; CMake, autotools and plain make) plus
two of our own, built by pycvmfs in its sandbox for two build types, published, served over
HTTP and mounted with ``pycvmfs mount`` at ``/cvmfs/<fqrn>``: the view's ``setup.sh`` is
sourced in bash and zsh under ``set -eu``, twice, its tools run, and ``ldd`` resolves every
library of the stack inside the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pycvmfs.publish.config import ServerSettings
from pycvmfs.stacks.platform import host_platform
from pycvmfs.stacks.service import StackSettings, publish_release

from helpers.debsources import fetch_sources, local_tarballs, localise_stack
from helpers.fuse import mount, needs_fuse
from helpers.loopback import LoopbackServer
from helpers.publishing import new_repository

pytestmark = [needs_fuse, pytest.mark.slow]

FQRN = "sft.pycvmfs-test.org"
OPT = str(host_platform())
DBG = str(host_platform(buildtype="dbg"))
ROOT = Path("/cvmfs") / FQRN
VIEW = ROOT / "lcg" / "views" / "LCG_900" / OPT
STACK_LIBS = ("libz.so", "libpng16.so", "libxml2.so", "liblzma.so", "libyaml", "libexpat.so")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    for prog, pkg in (("bwrap", "bubblewrap"), ("cmake", "cmake"), ("zsh", "zsh"),
                      ("autoconf", "autoconf"), ("patch", "patch")):
        if shutil.which(prog) is None:
            pytest.fail(f"{prog} is missing (Debian package {pkg}): run tools/test.sh")
    tmp = tmp_path_factory.mktemp("realstack")
    files = {}
    for path in fetch_sources().values():
        import hashlib

        files[hashlib.sha256(path.read_bytes()).hexdigest()] = path
    for path, sha in local_tarballs(tmp / "local").values():
        files[sha] = path
    desc = localise_stack(tmp / "desc", files)
    pub = new_repository(tmp / "repo", FQRN, ServerSettings())
    settings = StackSettings(work_dir=tmp / "work", cache=str(tmp / "cache"), parallel=2,
                             jobs=2)
    opt = publish_release(pub, desc, settings, tag="LCG_900")
    dbg = publish_release(pub, desc.parent / "dbg.yaml", settings)
    server = LoopbackServer(pub.config.storage)
    if ROOT.exists():
        if os.path.ismount(ROOT):
            subprocess.run(["umount", "-l", str(ROOT)], check=False)
        ROOT.rmdir()
    ROOT.parent.mkdir(exist_ok=True)
    mp = mount(FQRN, ROOT, server.url, pub.config.key_path("pub"), tmp / "client-cache",
               log_file=tmp / "mount.log")
    try:
        yield {"opt": opt, "dbg": dbg, "mp": mp, "pub": pub}
    finally:
        subprocess.run(["umount", "-l", str(mp)], check=False)
        server.stop()
        if ROOT.exists() and not os.path.ismount(ROOT):
            ROOT.rmdir()


def _shell(shell: str, script: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    return subprocess.run([shell, "-c", script], env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def test_everything_was_built_and_the_generator_validated(published):
    report = published["opt"]
    status = {p["name"]: p for p in report.results["packages"]}
    assert {p["status"] for p in status.values()} == {"built"}
    assert status["toygen"]["test_status"] == "passed"
    assert published["dbg"].published


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_setup_sh_sourced_twice_under_set_eu_gives_working_tools(published, shell):
    res = _shell(shell, f"""set -eu
. {VIEW}/setup.sh
. {VIEW}/setup.sh
pngxml --version
xmllint --version 2>&1
xz --version | head -1
xmlwf -v
lz4 --version
toygen --version
printf 'PATH=%s\\n' "$PATH"
printf 'LCG_VERSION=%s\\n' "$LCG_VERSION"
test -f "$TOYGEN_DATA/reference.dat"
printf 'TOYGEN_DATA=%s\\n' "$TOYGEN_DATA"
""")
    assert res.returncode == 0, res.stderr + res.stdout
    out = res.stdout
    assert "libpng 1.6.39" in out and "zlib 1.2.13" in out
    assert "xz (XZ Utils) 5.4.1" in out and "expat_2.5.0" in out
    assert re.search(r"Zlib.*Lzma|Lzma.*Zlib", out.replace("\n", " "))
    path = next(line for line in out.splitlines() if line.startswith("PATH="))[5:]
    assert path.split(":").count(f"{VIEW}/bin") == 1 and "" not in path.split(":")
    assert "LCG_VERSION=900" in out
    data = next(ln for ln in out.splitlines() if ln.startswith("TOYGEN_DATA="))[12:]
    assert re.fullmatch(rf"/cvmfs/{FQRN}/lcg/releases/MCGenerators/toygen/1\.0-[0-9a-f]{{5,}}/"
                        rf"{OPT}/share/toygen", data), data


def test_ldd_resolves_every_stack_library_inside_the_repository(published):
    checked = 0
    for tool in ("pngxml", "xmllint", "xz", "xmlwf", "lz4", "toygen", "pngfix"):
        exe = VIEW / "bin" / tool
        if not exe.exists():
            continue
        res = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=False,
                             env={"PATH": "/usr/bin:/bin"})  # no LD_LIBRARY_PATH: RPATHs only
        assert res.returncode == 0, res.stderr
        assert "not found" not in res.stdout, res.stdout
        for line in res.stdout.splitlines():
            if any(lib in line for lib in STACK_LIBS):
                assert f"=> /cvmfs/{FQRN}/lcg/releases/" in line, f"{tool}: {line}"
                checked += 1
    assert checked >= 8


def test_a_tool_round_trip_through_the_view(published, tmp_path):
    sample = VIEW / "share" / "pngxml" / "sample.xml"
    res = _shell("bash", f"""set -eu
. {VIEW}/setup.sh
pngxml topng {sample} {tmp_path}/x.png
pngfix {tmp_path}/x.png
""")
    assert res.returncode == 0, res.stderr + res.stdout
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_both_build_types_share_the_hashed_directories(published):
    releases = ROOT / "lcg" / "releases"
    ext_opt = (releases / "LCG_900" / f"LCG_externals_{OPT}.txt").read_text()
    ext_dbg = (releases / "LCG_900" / f"LCG_externals_{DBG}.txt").read_text()
    assert f"PLATFORM: {DBG}" in ext_dbg
    line = next(ln for ln in ext_opt.splitlines() if ln.startswith("libxml2;"))
    short = line.split(";")[1].strip()
    both = sorted(os.listdir(releases / "libxml2" / f"2.9.14-{short}"))
    assert both == sorted([OPT, DBG])
    # the dbg build really is a debug build, and a different one
    rec_opt = json.loads((releases / "libxml2" / f"2.9.14-{short}" / OPT /
                          ".pycvmfs-build.json").read_text())
    rec_dbg = json.loads((releases / "libxml2" / f"2.9.14-{short}" / DBG /
                          ".pycvmfs-build.json").read_text())
    assert rec_opt["hash"] != rec_dbg["hash"]
    assert rec_dbg["platform"] == DBG
