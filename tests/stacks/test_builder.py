"""Real builds of small generated C packages: libfoo (CMake, shared library + header + foo.pc)
and footool (a Makefile using pkg-config and $LIBFOO_HOME), built in the bwrap sandbox at
their final /cvmfs paths; the build environment; failures, tests, timeouts; the relocation
fallback (a shell-script package relocates, a compiled-in path is refused)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pycvmfs.errors import BuildError, StackError
from pycvmfs.stacks.builder import Builder, BuildRequest, BuildResult, DepInstall
from pycvmfs.stacks.buildinfo import read_record
from pycvmfs.stacks.hashing import Toolchain
from pycvmfs.stacks.model import PackageSpec, Source
from pycvmfs.stacks.platform import Platform
from pycvmfs.stacks.relocate import find_build_paths
from pycvmfs.stacks.sandbox import bwrap_available, run_in_final_layout

RELEASES = "/cvmfs/test.example.org/lcg/releases"
PLATFORM = Platform.parse("x86_64-debian12-gcc12-opt")
TOOLS = {"bwrap": "bubblewrap", "cmake": "cmake", "make": "make", "gcc": "gcc",
         "pkg-config": "pkg-config", "readelf": "binutils"}


def _need_tools() -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items()
               if shutil.which(tool) is None]
    if missing:
        pytest.fail("the builder tests need " + ", ".join(missing))
    if not bwrap_available():
        pytest.fail("bwrap is installed but does not run (bwrap --ro-bind / / true failed)")


def _hashes(name: str, salt: str = "") -> tuple[str, str]:
    full = hashlib.sha1(f"{name}{salt}".encode()).hexdigest()
    return full, full[:5]


def _request(spec: PackageSpec, *, source: Path | None = None, deps: tuple = (),
             direct: tuple[str, ...] = (), platform: Platform = PLATFORM, salt: str = "",
             **kw) -> BuildRequest:
    full, short = _hashes(spec.name, salt + str(platform))
    prefix = f"{RELEASES}/{spec.dest}/{spec.version}-{short}/{platform}"
    return BuildRequest(spec=spec, platform=platform, full_hash=full, short=short,
                        prefix=prefix, source_dir=source, deps=list(deps), direct=direct,
                        toolchain=Toolchain.detect({}), **kw)


def _installed(req: BuildRequest, result: BuildResult) -> DepInstall:
    return DepInstall(name=req.spec.name, version=req.spec.version, full_hash=req.full_hash,
                      short=req.short, prefix=req.prefix, local_dir=result.install_dir)


def _runpath(binary: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[([^\]]*)\]", out)
    assert m, f"no RUNPATH in {binary}:\n{out}"
    return m.group(1).split(":")


# -- the generated packages ---------------------------------------------------------------------

LIBFOO = {
    "foo.h": "int foo_answer(void);\nconst char *foo_greeting(void);\n",
    "foo.c": '#include "foo.h"\nint foo_answer(void) { return 42; }\n'
             'const char *foo_greeting(void) { return "hello from foo"; }\n',
    "foo.pc.in": "prefix=@CMAKE_INSTALL_PREFIX@\nlibdir=${prefix}/lib\n"
                 "includedir=${prefix}/include\n\nName: foo\nDescription: test library\n"
                 "Version: 1.0\nLibs: -L${libdir} -lfoo\nCflags: -I${includedir}\n",
    "CMakeLists.txt": """cmake_minimum_required(VERSION 3.13)
project(foo C)
add_library(foo SHARED foo.c)
set_target_properties(foo PROPERTIES PUBLIC_HEADER foo.h)
install(TARGETS foo LIBRARY DESTINATION lib PUBLIC_HEADER DESTINATION include)
configure_file(foo.pc.in foo.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/foo.pc DESTINATION lib/pkgconfig)
""",
}
LIBFOO_BUILD = """cmake -S . -B _build -DCMAKE_INSTALL_PREFIX="$PREFIX" \\
    -DCMAKE_BUILD_TYPE="$CMAKE_BUILD_TYPE"
cmake --build _build -j "$JOBS"
cmake --install _build
"""

FOOTOOL = {
    "footool.c": '#include <stdio.h>\n#include <foo.h>\n'
                 'int main(void) { printf("%s %d\\n", foo_greeting(), foo_answer()); '
                 "return 0; }\n",
    "Makefile": """FOO_CFLAGS := $(shell pkg-config --cflags foo)
FOO_LIBS := $(shell pkg-config --libs foo)
footool: footool.c
\t$(CC) $(CFLAGS) $(FOO_CFLAGS) -o $@ footool.c $(LDFLAGS) $(FOO_LIBS)
install: footool
\tmkdir -p $(PREFIX)/bin
\tcp footool $(PREFIX)/bin/
""",
}
FOOTOOL_BUILD = """test -f "$LIBFOO_HOME/include/foo.h"
make -j"$JOBS"
make install
"""


def _sources(where: Path, files: dict[str, str]) -> Path:
    where.mkdir(parents=True)
    for name, text in files.items():
        (where / name).write_text(text)
    return where


class Built:
    """libfoo and footool, built once for the module."""

    def __init__(self, root: Path) -> None:
        self.work = root / "work"
        self.builder = Builder(self.work)
        libfoo = PackageSpec(name="libfoo", version="1.0", build=LIBFOO_BUILD,
                             source=Source(urls=("https://example.org/libfoo-1.0.tar.gz",),
                                           sha256="ab" * 32),
                             metadata=(("license", "MIT"),))
        self.libfoo_req = _request(libfoo, source=_sources(root / "src-libfoo", LIBFOO))
        self.libfoo = self.builder.build(self.libfoo_req)
        self.libfoo_dep = _installed(self.libfoo_req, self.libfoo)
        footool = PackageSpec(name="footool", version="2.1", build=FOOTOOL_BUILD,
                              depends=("libfoo",), test='./footool | grep -x "hello from foo 42"')
        self.footool_req = _request(footool, source=_sources(root / "src-footool", FOOTOOL),
                                    deps=(self.libfoo_dep,), direct=("libfoo",))
        self.footool = self.builder.build(self.footool_req)
        self.footool_dep = _installed(self.footool_req, self.footool)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    _need_tools()
    return Built(tmp_path_factory.mktemp("builder"))


# -- builds in the sandbox at the final path ----------------------------------------------------

def test_libfoo_installs_at_its_final_prefix(built: Built):
    inst = built.libfoo.install_dir
    assert inst == built.work / "installs" / built.libfoo_req.full_hash
    assert not (built.work / "stage" / built.libfoo_req.full_hash).exists()
    assert sorted(p.name for p in inst.iterdir()) == [
        ".buildinfo_libfoo.txt", ".pycvmfs-build.json", "include", "lib", "logs",
        "version.txt"]
    pc = (inst / "lib" / "pkgconfig" / "foo.pc").read_text()
    assert pc.startswith(f"prefix={built.libfoo_req.prefix}\n")
    assert f"{built.libfoo_req.prefix}/lib" in _runpath(inst / "lib" / "libfoo.so")
    record = read_record(inst)
    assert record == built.libfoo.record
    assert record["builder"]["sandbox"] == "bwrap"
    assert record["source"] == {"urls": ["https://example.org/libfoo-1.0.tar.gz"],
                                "sha256": "ab" * 32}
    assert record["steps"]["test"] == {"status": "none", "duration": 0.0, "log": None}
    assert record["metadata"] == {"license": "MIT"}
    assert "Installing:" in (inst / "logs" / "build.log").read_text()
    assert not (inst / "logs" / "test.log").exists()


def test_footool_runpath_names_libfoo_final_lib_dir(built: Built):
    paths = _runpath(built.footool.install_dir / "bin" / "footool")
    assert f"{built.libfoo_req.prefix}/lib" in paths
    assert f"{built.footool_req.prefix}/lib" in paths
    assert not [p for p in paths if str(built.work) in p or "/build/" in p]
    assert find_build_paths(built.footool.install_dir, [str(built.work)]) == []


def test_footool_runs_in_the_final_layout(built: Built):
    tool = f"{built.footool_req.prefix}/bin/footool"
    done = run_in_final_layout([tool], {built.footool_req.prefix: built.footool.install_dir,
                                        built.libfoo_req.prefix: built.libfoo.install_dir})
    assert (done.returncode, done.stdout) == (0, b"hello from foo 42\n"), done.stderr
    # without libfoo at its final path the loader finds nothing: the RUNPATH is what works
    alone = run_in_final_layout([tool], {built.footool_req.prefix: built.footool.install_dir})
    assert alone.returncode != 0 and b"libfoo.so" in alone.stderr


def test_footool_records(built: Built):
    inst, req = built.footool.install_dir, built.footool_req
    record = built.footool.record
    assert record["steps"]["test"]["status"] == "passed"
    assert record["steps"]["build"]["status"] == "ok"
    assert record["depends"] == [{"name": "libfoo", "version": "1.0",
                                  "hash": built.libfoo_req.full_hash,
                                  "short": built.libfoo_req.short}]
    assert record["closure"] == {"libfoo": "1.0", "footool": "2.1"}
    assert record["prefix"] == req.prefix and record["platform"] == str(PLATFORM)
    assert (inst / "version.txt").read_text() == "footool=2.1/libfoo=1.0\n"
    tc = req.toolchain
    assert (inst / ".buildinfo_footool.txt").read_text() == (
        f" COMPILER: GNU {tc.full_version}, HOSTNAME: {record['builder']['host']}, "
        f"GITHASH: '{record['builder']['pycvmfs']}', HASH: {req.short}, "
        f"DESTINATION: footool, NAME: footool, VERSION: 2.1, REVISION: {req.full_hash[:12]}, "
        f"DEPENDS: libfoo-{built.libfoo_req.short},\n")
    assert (inst / "logs" / "test.log").is_file()
    assert (built.footool.log_dir / "build.log").is_file()


def test_environment_seen_by_a_recipe(built: Built, tmp_path: Path):
    """A recipe dumps `env`: exactly the documented variables, dependencies at their final
    paths in search order, the stack's and the package's env expanded over the defaults."""
    work = str(built.work)
    spec = PackageSpec(
        name="envdump", version="0.1", depends=("footool",),
        build=f'env > "$PREFIX/env.txt"\ntest -f "$LIBFOO_HOME/lib/libfoo.so"\n'
              f'test ! -e "{work}"\n',
        env=(("CFLAGS", "${CFLAGS} -fPIC"), ("DATA", "$PREFIX/share"),
             ("LITERAL", "$ORIGIN/../lib costs $$5")))
    platform = Platform.parse("x86_64-debian12-gcc12-dbg")
    req = _request(spec, deps=(built.libfoo_dep, built.footool_dep), direct=("footool",),
                   platform=platform, jobs=3,
                   stack_env=(("CFLAGS", "$CFLAGS -Wall"), ("STACK", "lcg")))
    result = built.builder.build(req)
    seen = dict(line.split("=", 1)
                for line in (result.install_dir / "env.txt").read_text().splitlines())
    for shell_own in ("PWD", "SHLVL", "_", "OLDPWD"):
        seen.pop(shell_own, None)
    foo, tool, me = built.libfoo_req.prefix, built.footool_req.prefix, req.prefix
    assert seen == {
        "PREFIX": me, "JOBS": "3", "NAME": "envdump", "VERSION": "0.1",
        "PLATFORM": "x86_64-debian12-gcc12-dbg", "BUILDTYPE": "dbg",
        "CMAKE_BUILD_TYPE": "Debug", "CFLAGS": "-O0 -g -Wall -fPIC", "CXXFLAGS": "-O0 -g",
        "LDFLAGS": f"-Wl,-rpath,{me}/lib -Wl,-rpath,{me}/lib64 -Wl,-rpath,{tool}/lib "
                   f"-Wl,-rpath,{tool}/lib64 -Wl,-rpath,{foo}/lib -Wl,-rpath,{foo}/lib64",
        "CC": req.toolchain.cc, "CXX": req.toolchain.cxx, "SOURCE_DIR": "/build/src",
        "LIBFOO_HOME": foo, "FOOTOOL_HOME": tool,
        "PATH": f"{tool}/bin:{foo}/bin:/usr/local/bin:/usr/bin:/bin",
        "CMAKE_PREFIX_PATH": f"{tool}:{foo}",
        "PKG_CONFIG_PATH": f"{tool}/lib/pkgconfig:{tool}/lib64/pkgconfig:"
                           f"{tool}/share/pkgconfig:{foo}/lib/pkgconfig:"
                           f"{foo}/lib64/pkgconfig:{foo}/share/pkgconfig",
        "CPATH": f"{tool}/include:{foo}/include",
        "LIBRARY_PATH": f"{tool}/lib:{tool}/lib64:{foo}/lib:{foo}/lib64",
        "LD_LIBRARY_PATH": f"{tool}/lib:{tool}/lib64:{foo}/lib:{foo}/lib64",
        "HOME": "/build/home", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "TZ": "UTC",
        "SOURCE_DATE_EPOCH": "315532800", "STACK": "lcg", "DATA": f"{me}/share",
        "LITERAL": "$ORIGIN/../lib costs $5",
    }
    assert result.record["depends"][0]["name"] == "footool"


def test_environment_direct_dependencies_first_then_reverse_topological(tmp_path: Path):
    deps = [DepInstall(name=n, version="1", full_hash=n * 8, short=n * 5, prefix=f"/p/{n}",
                       local_dir=tmp_path) for n in ("a", "b", "c", "d")]
    req = _request(PackageSpec(name="top", version="1"), deps=deps, direct=("c", "a"))
    env = Builder(tmp_path).environment(req, prefix="/p/top",
                                        homes={d.name: d.prefix for d in deps})
    assert env["CMAKE_PREFIX_PATH"] == "/p/c:/p/a:/p/d:/p/b"
    lone = _request(PackageSpec(name="lone", version="1"))
    env = Builder(tmp_path).environment(lone, prefix="/p/lone", homes={})
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert not {"CPATH", "LIBRARY_PATH", "LD_LIBRARY_PATH", "PKG_CONFIG_PATH",
                "CMAKE_PREFIX_PATH"} & set(env)
    with pytest.raises(StackError, match="top 1: direct dependencies x are not in"):
        Builder(tmp_path).environment(_request(PackageSpec(name="top", version="1"),
                                               deps=deps, direct=("x",)),
                                      prefix="/p", homes={})


# -- failures, tests, timeouts, leftovers -------------------------------------------------------

def test_build_failure_names_its_log(built: Built):
    req = _request(PackageSpec(name="broken", version="1", build="echo about to fail\nfalse"))
    with pytest.raises(BuildError) as err:
        built.builder.build(req)
    log = built.work / "logs" / f"broken-{req.full_hash[:16]}" / "build.log"
    assert str(log) in str(err.value) and "exit status 1" in str(err.value)
    assert err.value.log == str(log)
    assert log.read_text() == "about to fail\n"
    assert not (built.work / "installs" / req.full_hash).exists()


def test_failing_test_is_recorded_not_fatal(built: Built):
    spec = PackageSpec(name="flaky", version="1", build='mkdir -p "$PREFIX/bin"',
                       test="echo checking things\nexit 3")
    result = built.builder.build(_request(spec))
    assert result.record["steps"]["test"]["status"] == "failed"
    assert result.record["steps"]["test"]["log"] == "logs/test.log"
    assert (result.install_dir / "logs" / "test.log").read_text() == "checking things\n"
    assert read_record(result.install_dir)["steps"]["test"]["status"] == "failed"
    skipped = built.builder.build(_request(spec, salt="no-tests", run_tests=False))
    assert skipped.record["steps"]["test"]["status"] == "none"


def test_timeout_kills_the_whole_process_group(built: Built, tmp_path: Path):
    pidfile = tmp_path / "sleeper.pid"
    spec = PackageSpec(name="slow", version="1",
                       build=f"sleep 300 &\necho $! > {pidfile}\nwait")
    with pytest.raises(BuildError, match=r"timed out after 1 s"):
        built.builder.build(_request(spec, sandbox="relocate", timeout=1.0))
    pid = int(pidfile.read_text())
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X"), f"sleep {pid} survived the timeout (state {state})"


def test_crash_leftovers_are_cleaned(built: Built):
    spec = PackageSpec(name="again", version="1",
                       build='mkdir -p "$PREFIX/share"\necho fresh > "$PREFIX/share/new"')
    req = _request(spec)
    stage = built.work / "stage" / req.full_hash
    (stage / "share").mkdir(parents=True)
    (stage / "share" / "junk").write_text("half-built\n")
    (stage / "share").chmod(0o555)
    old = built.work / "installs" / req.full_hash
    old.mkdir(parents=True)
    (old / "old-tree").write_text("previous\n")
    result = built.builder.build(req)
    assert sorted(p.name for p in (result.install_dir / "share").iterdir()) == ["new"]
    assert not (result.install_dir / "old-tree").exists()
    assert not stage.exists()


def test_sandbox_build_leaking_the_work_dir_is_refused(built: Built):
    spec = PackageSpec(name="leaky", version="1",
                       build=f'mkdir -p "$PREFIX/share"\necho "{built.work}/x" '
                             '> "$PREFIX/share/where.txt"')
    with pytest.raises(BuildError) as err:
        built.builder.build(_request(spec))
    assert f"leftover build path {built.work} in share/where.txt (text)" in str(err.value)
    assert "bwrap check failed" in str(err.value)


def test_unknown_sandbox_is_refused(built: Built):
    with pytest.raises(StackError, match="unknown sandbox 'docker'"):
        built.builder.build(_request(PackageSpec(name="x", version="1"), sandbox="docker"))


# -- the relocation fallback --------------------------------------------------------------------

SCRIPT_PACKAGE = """mkdir -p "$PREFIX/bin" "$PREFIX/share"
echo "hello relocated" > "$PREFIX/share/msg"
printf '#!/bin/bash\\nexec cat "%s/share/msg"\\n' "$PREFIX" > "$PREFIX/bin/hello"
chmod 755 "$PREFIX/bin/hello"
echo "libfoo=$LIBFOO_HOME" > "$PREFIX/share/deps.txt"
touch -d @1000000000 "$PREFIX/share/deps.txt"
ln -s "$PREFIX/share/msg" "$PREFIX/share/link"
"""


def test_relocate_a_shell_script_package(built: Built):
    spec = PackageSpec(name="hello", version="1.0", build=SCRIPT_PACKAGE, depends=("libfoo",),
                       test='"$PREFIX/bin/hello" | grep -x "hello relocated"')
    req = _request(spec, deps=(built.libfoo_dep,), direct=("libfoo",), sandbox="relocate")
    result = built.builder.build(req)
    inst, me = result.install_dir, req.prefix
    assert result.record["builder"]["sandbox"] == "relocate"
    assert result.record["steps"]["test"]["status"] == "passed"
    assert (inst / "bin" / "hello").read_text() == f'#!/bin/bash\nexec cat "{me}/share/msg"\n'
    assert os.stat(inst / "bin" / "hello").st_mode & 0o777 == 0o755
    assert (inst / "share" / "deps.txt").read_text() == f"libfoo={built.libfoo_req.prefix}\n"
    assert os.stat(inst / "share" / "deps.txt").st_mtime == 1000000000
    assert os.readlink(inst / "share" / "link") == f"{me}/share/msg"
    leftovers = [x for x in find_build_paths(inst, [str(built.work)])
                 if not x.file.startswith("logs/")]
    assert leftovers == []
    done = run_in_final_layout([f"{me}/bin/hello"], {me: inst})
    assert (done.returncode, done.stdout) == (0, b"hello relocated\n"), done.stderr


def test_relocate_refuses_a_compiled_in_path(built: Built):
    build = """mkdir -p "$PREFIX/bin"
printf '#include <stdio.h>\\nint main(void) { puts(DATADIR); return 0; }\\n' > prog.c
$CC $CFLAGS -DDATADIR="\\"$PREFIX/share\\"" prog.c -o "$PREFIX/bin/prog" $LDFLAGS
"""
    # the package asks for relocation: it wins over an explicit sandbox request
    req = _request(PackageSpec(name="datadir", version="1", build=build, relocate=True),
                   sandbox="bwrap")
    with pytest.raises(BuildError) as err:
        built.builder.build(req)
    stage = built.work / "stage" / req.full_hash
    msg = str(err.value)
    assert f"leftover build path {stage} in bin/prog (binary)" in msg
    assert "relocate check failed" in msg
    assert str(built.work / "logs" / f"datadir-{req.full_hash[:16]}" / "build.log") in msg
    assert not (built.work / "installs" / req.full_hash).exists()


@pytest.mark.parametrize("variable", ["SOURCE_DIR", "HOME", "TMPDIR"])
def test_relocate_refuses_the_source_dir_home_and_tmpdir(tmp_path: Path, variable: str):
    """A relocated tree naming a build directory that is not a prefix is refused — also when
    the source directory lies outside the work directory."""
    source = tmp_path / "elsewhere" / "src"
    source.mkdir(parents=True)
    spec = PackageSpec(name="leaks", version="1",
                       build=f'mkdir -p "$PREFIX/share"\necho "${variable}/x" '
                             '> "$PREFIX/share/paths"')
    req = _request(spec, source=source, sandbox="relocate", salt=variable)
    builder = Builder(tmp_path / "work")
    home = tmp_path / "work" / "home" / req.full_hash
    where = {"SOURCE_DIR": source, "HOME": home, "TMPDIR": home / "tmp"}[variable]
    with pytest.raises(BuildError) as err:
        builder.build(req)
    assert f"leftover build path {where} in share/paths (text)" in str(err.value)
    assert "relocate check failed" in str(err.value)
    assert not (tmp_path / "work" / "installs" / req.full_hash).exists()


def test_relocate_refuses_resolved_spellings_and_the_work_dir(tmp_path: Path):
    real = tmp_path / "real"
    (real / "src").mkdir(parents=True)
    (tmp_path / "via").symlink_to(real)
    work = tmp_path / "work"
    builder = Builder(work)
    # the source dir given through a link, the recipe writes the resolved path
    spec = PackageSpec(name="resolved", version="1",
                       build='mkdir -p "$PREFIX/share"\npwd -P > "$PREFIX/share/where"')
    req = _request(spec, source=tmp_path / "via" / "src", sandbox="relocate")
    with pytest.raises(BuildError, match=f"leftover build path {real / 'src'} in share/where"):
        builder.build(req)
    # a path of the work directory that is none of the build's own directories
    spec = PackageSpec(name="workdir", version="1",
                       build=f'mkdir -p "$PREFIX/share"\necho "{work}/logs" > '
                             '"$PREFIX/share/where"')
    with pytest.raises(BuildError, match=f"leftover build path {work} in share/where"):
        builder.build(_request(spec, sandbox="relocate"))
    # a clean tree still builds
    clean = PackageSpec(name="clean", version="1",
                        build='mkdir -p "$PREFIX/share"\necho "$PREFIX" > "$PREFIX/share/p"')
    req = _request(clean, sandbox="relocate")
    result = builder.build(req)
    assert (result.install_dir / "share" / "p").read_text() == f"{req.prefix}\n"
