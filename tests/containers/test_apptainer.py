"""Apptainer files: the env script and runscript run by real shells, the actions in bwrap."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from containers.conftest import require_tool
from pycvmfs.containers.apptainer import (
    ENV_DIR,
    MOUNT_POINTS,
    apptainer_files,
    env_script,
    runscript,
)
from pycvmfs.containers.model import GeneratedEntry, materialise
from pycvmfs.errors import ContainerError

NASTY = {
    "QUOTE": 'a"b',
    "DOLLAR": "$HOME and ${X:-y} and $(id)",
    "TICK": "`id` done",
    "BACKSLASH": "c:\\new\\\\",
    "BRACES": "}{ ${",
    "SINGLE": "it's 'quoted'",
    "NEWLINE": "line1\nline2\n",
    "EQUALS": "a=b=c",
    "SPACES": "  two  spaces  ",
    "EMPTY": "",
}
ENV = (["PATH=/opt/x/bin:/usr/bin:/bin"] + [f"{k}={v}" for k, v in NASTY.items()]
       + ["BARE", "DUP=first", "DUP=second", "weird.name=x", "=nameless"])
SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}


def _shells() -> list[str]:
    found = [shutil.which("sh"), shutil.which("bash")]
    if not all(found):
        pytest.fail("sh and bash are needed: run tools/test.sh on a Debian system")
    return found


def _sourced_env(shell: str, scripts: list[Path], preset: dict[str, str]) -> dict[str, str]:
    """The exported environment after ``shell`` sources ``scripts`` starting from ``preset``
    only (env -i)."""
    sources = "".join(f'. "{s}"\n' for s in scripts)
    out = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in preset.items()), shell, "-c",
                          sources + "exec env -0"], capture_output=True, check=True).stdout
    pairs = (item.decode().split("=", 1) for item in out.split(b"\0") if item)
    return {k: v for k, v in pairs if k not in SHELL_OWN}


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "10-docker2singularity.sh"
    path.write_text(env_script({"config": {"Env": ENV}, "rootfs": {}}))
    return path


@pytest.mark.parametrize("shell", _shells())
def test_env_equals_config_env(shell: str, env_file: Path) -> None:
    expected = dict(NASTY, PATH="/opt/x/bin:/usr/bin:/bin", BARE="", DUP="second")
    assert _sourced_env(shell, [env_file], {}) == expected


@pytest.mark.parametrize("shell", _shells())
def test_env_path_unconditional_others_default_if_unset(shell: str, env_file: Path) -> None:
    preset = {"PATH": "/host/bin", "QUOTE": "from the host", "BARE": "kept", "DOLLAR": "",
              "OTHER": "untouched"}
    got = _sourced_env(shell, [env_file], preset)
    assert got["PATH"] == "/opt/x/bin:/usr/bin:/bin"
    assert got["QUOTE"] == "from the host"
    assert got["BARE"] == "kept"
    assert got["DOLLAR"] == NASTY["DOLLAR"]  # set but empty counts as unset (${K:-V})
    assert got["OTHER"] == "untouched"
    assert got["TICK"] == NASTY["TICK"]


def test_env_script_names_what_it_leaves_out() -> None:
    text = env_script({"Env": ENV})
    assert '# not a shell variable name, left out: "weird.name"' in text
    assert '# not a shell variable name, left out: ""' in text


@pytest.fixture
def entrypoint(tmp_path: Path) -> Path:
    """A real entrypoint: prints its parent pid, then each argument NUL-terminated."""
    ep = tmp_path / "ep dir" / "ep.sh"
    ep.parent.mkdir()
    ep.write_text('#!/bin/sh\nprintf "%s\\0" "$PPID"\nfor a in "$@"; do printf "%s\\0" "$a"; '
                  "done\n")
    ep.chmod(0o755)
    return ep


def _run(script: Path, args: list[str], shell: str) -> tuple[int, list[str], str]:
    proc = subprocess.Popen([shell, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out.decode().split("\0")[:-1], err.decode()


@pytest.mark.parametrize("shell", _shells())
def test_runscript_docker_semantics(shell: str, tmp_path: Path, entrypoint: Path) -> None:
    tricky = ["c 2", "$HOME", "it's", "`id`", 'q"uote', "back\\slash", ""]
    script = tmp_path / "runscript"
    script.write_text(runscript({"Entrypoint": [str(entrypoint), "fixed arg"],
                                 "Cmd": ["c1", *tricky]}))
    rc, out, err = _run(script, [], shell)
    assert (rc, err) == (0, "")
    # exec: the entrypoint's parent is this test's process, not a shell left in between
    assert out == [str(os.getpid()), "fixed arg", "c1", *tricky]
    rc, out, _ = _run(script, ["x", "y z", "$PATH"], shell)
    assert out[1:] == ["fixed arg", "x", "y z", "$PATH"]  # arguments replace CMD

    script.write_text(runscript({"Cmd": [str(entrypoint), "from cmd"]}))
    assert _run(script, [], shell)[1][1:] == ["from cmd"]
    assert _run(script, [str(entrypoint), "mine"], shell)[1][1:] == ["mine"]

    script.write_text(runscript({"Entrypoint": [str(entrypoint)]}))
    assert _run(script, [], shell)[1][1:] == []
    assert _run(script, ["a"], shell)[1][1:] == ["a"]

    script.write_text(runscript({}))
    rc, out, err = _run(script, [], shell)
    assert rc == 1 and out == [] and "no ENTRYPOINT or CMD" in err


def test_files_listed_parents_first_with_modes(tmp_path: Path) -> None:
    entries = apptainer_files({"config": {"Env": ["PATH=/bin"], "Labels": {"b": "2", "a": "1"}},
                               "rootfs": {"type": "layers", "diff_ids": []}})
    by_path = {e.path: e for e in entries}
    assert len(by_path) == len(entries)
    seen: set[str] = set()
    for e in entries:
        parent = os.path.dirname(e.path)
        assert not parent or parent in seen, f"{e.path} listed before {parent}"
        seen.add(e.path)
    for d in MOUNT_POINTS:
        assert by_path[d].kind == "dir"
    assert by_path["tmp"].mode == by_path["var/tmp"].mode == 0o1777
    for f in ("etc/hosts", "etc/resolv.conf"):
        assert (by_path[f].kind, by_path[f].mode, by_path[f].data) == ("file", 0o644, b"")
    for name in ("exec", "run", "shell", "start", "test"):
        assert by_path[f".singularity.d/actions/{name}"].mode == 0o755
    for name in ("01-base.sh", "10-docker2singularity.sh", "90-environment.sh", "95-apps.sh",
                 "99-base.sh", "99-runtimevars.sh"):
        assert by_path[f"{ENV_DIR}/{name}"].kind == "file"
    links = {e.path: e.target for e in entries if e.kind == "symlink"}
    assert links == {"singularity": ".singularity.d/runscript",
                     ".run": ".singularity.d/actions/run",
                     ".exec": ".singularity.d/actions/exec",
                     ".test": ".singularity.d/actions/test",
                     ".shell": ".singularity.d/actions/shell",
                     "environment": ".singularity.d/env/90-environment.sh"}
    assert json.loads(by_path[".singularity.d/labels.json"].data) == {"a": "1", "b": "2"}
    materialise(entries, tmp_path)
    for e in entries:
        st = os.lstat(tmp_path / e.path)
        if e.kind != "symlink":
            assert stat.S_IMODE(st.st_mode) == e.mode, e.path
        else:
            assert (tmp_path / e.path).resolve().is_file(), e.path
    # same config, same entries
    assert apptainer_files({"Env": ["PATH=/bin"], "Labels": {"a": "1", "b": "2"}}) == entries


def _bwrap(root: Path, *command: str) -> subprocess.CompletedProcess:
    require_tool("bwrap", "bubblewrap")
    return subprocess.run(
        ["bwrap", "--clearenv", "--setenv", "HOME", "/root", "--ro-bind", str(root), "/",
         "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
         "--tmpfs", "/tmp", *command], capture_output=True, timeout=60)


def test_actions_run_in_a_container(tmp_path: Path) -> None:
    """The image's root with our files, the host's /usr for a shell: ``/.run`` and
    ``/.exec`` as Apptainer calls them, environment from the image config."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "usr").mkdir()
    for link in ("bin", "lib", "lib64"):
        os.symlink(f"usr/{link}", root / link)
    ep = root / "entry.sh"
    ep.write_text('#!/bin/sh\necho "entry:$*:$GREETING:$LD_LIBRARY_PATH:$PATH"\n')
    ep.chmod(0o755)
    config = {"Env": ["PATH=/usr/bin:/bin", "GREETING=hello \"$USER\""],
              "Entrypoint": ["/entry.sh"], "Cmd": ["default"]}
    materialise([e for e in apptainer_files(config) if not os.path.lexists(root / e.path)],
                root)
    run = _bwrap(root, "/.run")
    assert run.returncode == 0, run.stderr
    assert run.stdout == b'entry:default:hello "$USER":/.singularity.d/libs:/usr/bin:/bin\n'
    run = _bwrap(root, "/.run", "a b", "c")
    assert run.stdout.startswith(b"entry:a b c:hello")
    run = _bwrap(root, "/singularity", "x")  # the runscript itself: no environment sourced
    assert run.stdout.startswith(b"entry:x:::")
    run = _bwrap(root, "/.exec", "/bin/sh", "-c", 'echo "$GREETING|$PS1"')
    assert run.stdout == b'hello "$USER"|Apptainer> \n'
    run = _bwrap(root, "/usr/bin/env", "SING_USER_DEFINED_PREPEND_PATH=/pre", "/.exec",
                 "/bin/sh", "-c", 'echo "$PATH"')
    assert run.stdout == b"/pre:/usr/bin:/bin\n"
    run = _bwrap(root, "/.test")
    assert run.returncode == 0 and b"no test script" in run.stdout
    run = _bwrap(root, "/.shell", "-c", "echo from shell")
    assert run.stdout == b"from shell\n"
    run = _bwrap(root, "/usr/bin/env", "SINGULARITY_SHELL=/usr/bin/dash", "/.shell", "-c",
                 'echo "$0"')
    assert run.stdout == b"/usr/bin/dash\n"


@pytest.mark.parametrize("config, needle", [
    ({"Env": "PATH=/bin"}, "Env must be a list of strings"),
    ({"Entrypoint": "/bin/sh -c"}, "Entrypoint must be a list of strings"),
    ({"Cmd": [1]}, "Cmd must be a list of strings"),
    ({"Cmd": ["a\0b"]}, "NUL"),
    ({"Labels": ["x"]}, "Labels must be an object"),
])
def test_bad_config_refused(config: dict, needle: str) -> None:
    with pytest.raises(ContainerError, match=needle):
        apptainer_files(config)
    with pytest.raises(ContainerError, match=f"^oci:/x:1 config: .*{needle}"):
        apptainer_files({"config": config, "rootfs": {}}, "oci:/x:1 config")


def test_generated_entry_refuses_escaping_paths() -> None:
    for path in ("../x", "/etc/x", "a/../../b", ".", "a//b"):
        with pytest.raises(ContainerError, match="not a normalised relative path"):
            GeneratedEntry(path, "file")
    with pytest.raises(ContainerError):
        GeneratedEntry("a", "fifo")


def test_materialise_never_writes_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "etc")  # an image's etc -> somewhere else
    for entries in ([GeneratedEntry("etc/hosts", "file", 0o644)],
                    [GeneratedEntry("etc", "dir")],
                    [GeneratedEntry("link", "symlink", target=str(outside)),
                     GeneratedEntry("link/x", "file")],
                    [GeneratedEntry("missing/x", "file")]):
        with pytest.raises(ContainerError, match="not writing it"):
            materialise(entries, root)
    assert list(outside.iterdir()) == []
    (root / "afile").write_text("")
    with pytest.raises(ContainerError, match="a file is in the way"):
        materialise([GeneratedEntry("afile", "dir")], root)
    os.symlink(outside / "f", root / "dangling")
    with pytest.raises(ContainerError, match="not writing it"):
        materialise([GeneratedEntry("dangling", "file")], root)
    assert list(outside.iterdir()) == []
