"""View setup scripts sourced by real shells: bash and zsh under ``set -eu``, twice; tcsh twice;
run-time location below a repository root that is not the mount root (with a space in its
path); the opt-outs; the fallback; no leftovers; syntax checks; MANPATH keeping man's default
places (checked with man-db's ``manpath``); the reserved variable names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.setupscripts import (
    RESERVED_VARIABLES,
    render_setup_csh,
    render_setup_sh,
    reserved_variable,
    search_paths,
)

PLATFORM = "x86_64-debian12-gcc12-opt"
VIEW_REL = f"lcg/views/LCG_900/{PLATFORM}"
MOUNT = "/cvmfs/sft.example.org"       # does not exist here: run-time location must be used
GENERATED = "Mon Jan  6 10:00:00 2025"
DIRS = ["bin", "scripts", "lib", "lib64", "lib/pkgconfig", "lib/python3.11",
        "lib/python3.11/site-packages", "python", "man", "share", "share/man", "share/aclocal",
        "include", "etc"]
HOMES = {"ZLIB_HOME": f"lcg/releases/zlib/1.3.1-507fd/{PLATFORM}",
         "TAUOLA___HOME": f"lcg/releases/MCGenerators/tauola++/1.1.8-0a1b2/{PLATFORM}"}
USER_PYTHONPATH = "/home/user/my py"
SHELLS = {"bash": "bash", "zsh": "zsh", "tcsh": "tcsh", "dash": "dash", "manpath": "man-db"}
COLON_VARS = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "MANPATH", "CMAKE_PREFIX_PATH",
              "PKG_CONFIG_PATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "ACLOCAL_PATH")


def shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the Debian package {SHELLS[name]}")
    return path


def kwargs(**over: object) -> dict:
    base = {"view_rel": VIEW_REL, "mount_root": MOUNT, "name": "LCG_900", "platform": PLATFORM,
            "generated": GENERATED, "dirs": DIRS, "pythonpath": True, "homes": HOMES}
    base.update(over)
    return base


def make_view(root: Path, view_rel: str = VIEW_REL, **over: object) -> Path:
    """A view tree below ``root`` with both scripts and one command in bin/."""
    view = root / view_rel
    for d in DIRS:
        (view / d).mkdir(parents=True, exist_ok=True)
    hello = view / "bin" / "lcg-hello"
    hello.write_text("#!/bin/sh\necho hello from the view\n")
    hello.chmod(0o755)
    (view / "setup.sh").write_text(render_setup_sh(**kwargs(view_rel=view_rel, **over)))
    (view / "setup.csh").write_text(render_setup_csh(**kwargs(view_rel=view_rel, **over)))
    return view


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": USER_PYTHONPATH}
    proc = subprocess.run(argv, env={**base, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"{argv}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def source_twice(sh: str, script: Path | str, env: dict[str, str] | None = None,
                 cwd: Path | None = None, how: str = '. "$1"; . "$1"') -> dict[str, str]:
    if sh == "tcsh":
        cmd = [shell("tcsh"), "-f", "-c", 'source "$1"; source "$1"; lcg-hello; env -0',
               str(script)]   # tcsh -c: the first argument after the command is $1
    else:
        cmd = [shell(sh), *(["-f"] if sh == "zsh" else []), "-c",
               f'set -eu; {how}; lcg-hello; env -0', sh, str(script)]
    out = run(cmd, env, cwd)
    text, _, envdump = out.partition("hello from the view\n")
    assert text == ""
    return dict(item.split("=", 1) for item in envdump.split("\0") if item)


def expected(view: Path, root: Path, *, pythonpath: bool = True, ld: bool = True) -> dict:
    v = str(view)
    exp = {
        "LCG_VIEW": v, "LCG_VERSION": "900", "LCG_PLATFORM": PLATFORM,
        "PATH": f"{v}/bin:{v}/scripts:/usr/bin:/bin",
        "MANPATH": f"{v}/man:{v}/share/man:",   # was unset: the trailing ':' keeps man's own
        "CMAKE_PREFIX_PATH": v,
        "PKG_CONFIG_PATH": f"{v}/lib/pkgconfig",
        "C_INCLUDE_PATH": f"{v}/include",
        "CPLUS_INCLUDE_PATH": f"{v}/include",
        "ACLOCAL_PATH": f"{v}/share/aclocal",
        "ZLIB_HOME": f"{root}/{HOMES['ZLIB_HOME']}",
        "TAUOLA___HOME": f"{root}/{HOMES['TAUOLA___HOME']}",
        "PYTHONPATH": USER_PYTHONPATH,
    }
    if pythonpath:
        exp["PYTHONPATH"] = (f"{v}/lib:{v}/python:{v}/lib/python3.11/site-packages:"
                             f"{USER_PYTHONPATH}")
    if ld:
        exp["LD_LIBRARY_PATH"] = f"{v}/lib:{v}/lib64"
    return exp


def check(env: dict[str, str], exp: dict[str, str], *, ld: bool = True) -> None:
    for var, value in exp.items():
        assert env.get(var) == value, var
    if not ld:
        assert "LD_LIBRARY_PATH" not in env
    for var in COLON_VARS:
        if var in env:
            value = env[var].removesuffix(":") if var == "MANPATH" else env[var]
            parts = value.split(":")
            assert "" not in parts, f"{var} has an empty element: {env[var]!r}"
            assert len(parts) == len(set(parts)), f"{var} has a duplicate: {env[var]!r}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repository root"   # a space in the path, and not the mount root
    root.mkdir()
    return root.resolve()


@pytest.mark.parametrize("sh", ["bash", "zsh"])
def test_setup_sh_sourced_twice_under_set_eu(sh: str, repo: Path) -> None:
    view = make_view(repo)
    env = source_twice(sh, view / "setup.sh")
    check(env, expected(view, repo))


@pytest.mark.parametrize("sh", ["bash", "zsh"])
def test_setup_sh_through_a_symlink_and_a_relative_path(sh: str, repo: Path) -> None:
    view = make_view(repo)
    (view.parent / "latest").symlink_to(PLATFORM)
    env = source_twice(sh, Path("latest/setup.sh"), cwd=view.parent)
    check(env, expected(view, repo))
    # no directory part at all (zsh's "." looks only in PATH for a bare name)
    env = source_twice(sh, "setup.sh" if sh == "bash" else "./setup.sh", cwd=view)
    check(env, expected(view, repo))


@pytest.mark.parametrize("sh", ["bash", "zsh"])
def test_opt_outs(sh: str, repo: Path) -> None:
    view = make_view(repo)
    env = source_twice(sh, view / "setup.sh", env={"LCG_VIEW_NO_PYTHONPATH": "1",
                                                  "LCG_VIEW_NO_LD_LIBRARY_PATH": "1"})
    check(env, expected(view, repo, pythonpath=False, ld=False), ld=False)
    # anything but 1 does not opt out
    env = source_twice(sh, view / "setup.sh", env={"LCG_VIEW_NO_PYTHONPATH": "0"})
    check(env, expected(view, repo))


@pytest.mark.parametrize("sh", ["bash", "zsh"])
def test_view_made_without_pythonpath(sh: str, repo: Path) -> None:
    view = make_view(repo, pythonpath=False)
    code = [ln for ln in (view / "setup.sh").read_text().splitlines() if not ln.startswith("#")]
    assert not any("PYTHONPATH" in ln for ln in code)
    env = source_twice(sh, view / "setup.sh")
    check(env, expected(view, repo, pythonpath=False))


def test_no_helpers_left_behind(repo: Path) -> None:
    script = make_view(repo) / "setup.sh"
    out = run([shell("bash"), "-c", 'set -eu; before=$(compgen -v | sort); . "$1"; '
               'comm -13 <(echo "$before") <(compgen -v | grep -vx before | sort); '
               'echo "functions: $(declare -F | wc -l)"', "bash", str(script)])
    assert out.split() == ["ACLOCAL_PATH", "CMAKE_PREFIX_PATH", "CPLUS_INCLUDE_PATH",
                           "C_INCLUDE_PATH", "LCG_PLATFORM", "LCG_VERSION", "LCG_VIEW",
                           "LD_LIBRARY_PATH", "MANPATH", "PKG_CONFIG_PATH", "TAUOLA___HOME",
                           "ZLIB_HOME", "functions:", "0"]
    out = run([shell("zsh"), "-f", "-c", 'set -eu; . "$1"; print -l ${(k)parameters[(I)_lcg*]}; '
               'print "functions: ${#functions}"', "zsh", str(script)])
    assert out.split() == ["functions:", "0"]


def test_fallback_to_the_mount_root(tmp_path: Path, repo: Path) -> None:
    mount = str(tmp_path / "mount root")
    view = make_view(repo, mount_root=mount)
    fixed = Path(mount) / VIEW_REL
    # the path of the script is unknown: eval'd text (bash), dash
    for argv in ([shell("bash"), "-c", 'set -eu; eval "$(cat "$1")"; env -0', "bash",
                  str(view / "setup.sh")],
                 [shell("dash"), "-c", 'set -eu; . "$1"; env -0', "dash",
                  str(view / "setup.sh")]):
        env = dict(i.split("=", 1) for i in run(argv).split("\0") if i)
        check(env, expected(fixed, Path(mount)))
    # a copy of the script outside the view does not make up a repository root
    copy = tmp_path / "a" / "b" / "c" / "d" / "e" / "setup.sh"
    copy.parent.mkdir(parents=True)
    shutil.copy(view / "setup.sh", copy)
    env = dict(i.split("=", 1) for i in run(
        [shell("bash"), "-c", 'set -eu; . "$1"; env -0', "bash", str(copy)]).split("\0") if i)
    check(env, expected(fixed, Path(mount)))


def test_repository_at_the_filesystem_root_form(repo: Path) -> None:
    """A one-component view path (the shortest form) still finds its root."""
    view = make_view(repo, view_rel="v")
    env = source_twice("bash", view / "setup.sh")
    assert env["LCG_VIEW"] == str(view) and env["ZLIB_HOME"] == f"{repo}/{HOMES['ZLIB_HOME']}"


@pytest.mark.parametrize("opt_out", [False, True])
def test_setup_csh_with_tcsh_twice(tmp_path: Path, opt_out: bool) -> None:
    mount = tmp_path / "mount root"           # the csh script uses the fixed mount path
    view = make_view(mount, mount_root=str(mount))
    env = {"LCG_VIEW_NO_PYTHONPATH": "1", "LCG_VIEW_NO_LD_LIBRARY_PATH": "1"} if opt_out else {}
    got = source_twice("tcsh", view / "setup.csh", env=env)
    check(got, expected(view, mount, pythonpath=not opt_out, ld=not opt_out), ld=not opt_out)


def test_setup_csh_leaves_no_helpers(tmp_path: Path) -> None:
    view = make_view(tmp_path, mount_root=str(tmp_path))
    out = run([shell("tcsh"), "-f", "-c", 'source "$1"; set', str(view / "setup.csh")])
    assert "_lcg" not in out


def test_syntax_checks_and_header(repo: Path) -> None:
    script = make_view(repo) / "setup.sh"
    run([shell("bash"), "-n", str(script)])
    run([shell("zsh"), "-n", str(script)])
    for text in (script.read_text(), script.with_name("setup.csh").read_text()):
        assert text.splitlines()[1] == f"#   Generated: {GENERATED}"
        assert text.endswith("\n")
    assert render_setup_sh(**kwargs()) == render_setup_sh(**kwargs())


def test_only_present_directories_are_added() -> None:
    got = dict(search_paths(["bin", "lib64/", "lib64/python3.12/site-packages", "share/man"],
                            pythonpath=True))
    assert got == {"PATH": ["bin"], "LD_LIBRARY_PATH": ["lib64"], "MANPATH": ["share/man"],
                   "PYTHONPATH": ["lib64/python3.12/site-packages"], "CMAKE_PREFIX_PATH": [""]}
    assert "PYTHONPATH" not in dict(search_paths(["lib"], pythonpath=False))


@pytest.mark.parametrize(("over", "message"), [
    ({"view_rel": "../x"}, "view path '../x'"),
    ({"view_rel": "lcg/my view"}, "view path 'lcg/my view'"),
    ({"mount_root": "/cvmfs/it's"}, "mount root"),
    ({"mount_root": "relative"}, "mount root"),
    ({"mount_root": "/cvmfs/$HOME"}, "mount root"),
    ({"homes": {"1BAD": "lcg/x"}}, "'1BAD' is not a variable name"),
    ({"homes": {"X_HOME": "lcg/a b"}}, "prefix 'lcg/a b' of X_HOME"),
    ({"dirs": ["bin", "we ird"]}, "view directory 'we ird'"),
    ({"platform": "x'y"}, "platform"),
    ({"generated": "a\nb"}, "line break"),
])
def test_refuses_values_it_cannot_quote(over: dict, message: str) -> None:
    for render in (render_setup_sh, render_setup_csh):
        with pytest.raises(StackError, match=re.escape(message)):
            render(**kwargs(**over))



def _manpath_after_sourcing(sh: str, script: Path, env: dict[str, str]) -> str:
    """``manpath -q`` (man-db) after sourcing ``script`` twice in ``sh``."""
    tool = shell("manpath")
    if sh == "tcsh":
        cmd = [shell("tcsh"), "-f", "-c", f'source "$1"; source "$1"; {tool} -q; '
               'printenv MANPATH', str(script)]
    else:
        cmd = [shell(sh), *(["-f"] if sh == "zsh" else []), "-c",
               f'set -eu; . "$1"; . "$1"; {tool} -q; printenv MANPATH', sh, str(script)]
    return run(cmd, env)


@pytest.mark.parametrize("sh", ["bash", "zsh", "tcsh"])
@pytest.mark.parametrize("before", [None, ""])
def test_manpath_keeps_the_system_manual_pages(sh: str, before: str | None,
                                               tmp_path: Path) -> None:
    """MANPATH unset or empty: the view's man dirs, then man's defaults (a trailing ':');
    the same after a second source; man-db's manpath then lists both."""
    root = (tmp_path / "mount root").resolve()
    view = make_view(root, mount_root=str(root))
    script = view / ("setup.csh" if sh == "tcsh" else "setup.sh")
    env = {} if before is None else {"MANPATH": before}
    searched, value = _manpath_after_sourcing(sh, script, env).splitlines()
    assert value == f"{view}/man:{view}/share/man:"
    dirs = searched.split(":")
    assert dirs[:2] == [f"{view}/man", f"{view}/share/man"]
    assert "/usr/share/man" in dirs[2:], searched   # the system's pages are still found


@pytest.mark.parametrize("sh", ["bash", "zsh", "tcsh"])
def test_manpath_set_by_the_user_is_prepended_to_as_it_is(sh: str, tmp_path: Path) -> None:
    root = (tmp_path / "mount root").resolve()
    view = make_view(root, mount_root=str(root))
    script = view / ("setup.csh" if sh == "tcsh" else "setup.sh")
    mine = tmp_path / "my man"
    (mine / "man1").mkdir(parents=True)
    for before, after in ((str(mine), f"{view}/man:{view}/share/man:{mine}"),
                          (f"{mine}:", f"{view}/man:{view}/share/man:{mine}:")):
        searched, value = _manpath_after_sourcing(sh, script, {"MANPATH": before}).splitlines()
        assert value == after
        assert ("/usr/share/man" in searched.split(":")) == before.endswith(":"), searched


def test_reserved_variables() -> None:
    for var in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "MANPATH", "CMAKE_PREFIX_PATH",
                "PKG_CONFIG_PATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "ACLOCAL_PATH"):
        assert var in RESERVED_VARIABLES
        assert reserved_variable(var) == "a search path the setup scripts extend"
    for var in ("LCG_VIEW", "LCG_VIEW_NO_PYTHONPATH", "_lcg_root"):
        assert "prefix" in (reserved_variable(var) or "")
    assert "_HOME" in (reserved_variable("ZLIB_HOME") or "")
    for var in ("GEN_DATA", "HOME_DIR", "lcg_x", "ROOTSYS", "XPATH"):
        assert reserved_variable(var) is None
