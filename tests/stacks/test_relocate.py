"""The relocation fallback on real trees: text files and symlinks rewritten (mode, mtime, hard
links kept), binaries left alone, and every leftover build path found and named."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pycvmfs.errors import StackError
from pycvmfs.stacks.relocate import find_build_paths, relocate_tree, verify_no_build_paths

OLD = "/work/stage/0123abcd"
OLD_DEP = "/work/installs/99ff00aa"
NEW = "/cvmfs/test.example.org/lcg/releases/tool/1.0-01234/x86_64-debian12-gcc12-opt"
NEW_DEP = "/cvmfs/test.example.org/lcg/releases/dep/2.0-99ff0/x86_64-debian12-gcc12-opt"
MOVES = [(OLD, NEW), (OLD_DEP, NEW_DEP)]


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "share").mkdir()
    (root / "bin" / "tool").write_text(f"#!/bin/sh\nexec {OLD}/libexec/tool --dep {OLD_DEP}\n")
    (root / "bin" / "tool").chmod(0o755)
    os.utime(root / "bin" / "tool", ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
    (root / "share" / "prog").write_bytes(b"\x7fELF\0\0" + OLD.encode() + b"/share\0")
    (root / "share" / "plain.txt").write_text("nothing to see\n")
    os.symlink(f"{OLD}/share/plain.txt", root / "share" / "abs-link")
    os.symlink("plain.txt", root / "share" / "rel-link")
    os.symlink(f"{OLD_DEP}/lib", root / "deplib")     # a symlink to a directory
    return root


def test_relocate_rewrites_text_files_and_symlinks(tmp_path: Path):
    root = _tree(tmp_path / "t")
    changed = relocate_tree(root, MOVES)
    assert changed == ["bin/tool", "deplib", "share/abs-link"]
    assert (root / "bin" / "tool").read_text() == (
        f"#!/bin/sh\nexec {NEW}/libexec/tool --dep {NEW_DEP}\n")
    assert os.readlink(root / "share" / "abs-link") == f"{NEW}/share/plain.txt"
    assert os.readlink(root / "deplib") == f"{NEW_DEP}/lib"
    assert os.readlink(root / "share" / "rel-link") == "plain.txt"
    # a file with a NUL byte is binary: never patched
    assert (root / "share" / "prog").read_bytes() == b"\x7fELF\0\0" + OLD.encode() + b"/share\0"


def test_relocate_keeps_mode_mtime_and_hard_links(tmp_path: Path):
    root = _tree(tmp_path / "t")
    os.link(root / "bin" / "tool", root / "bin" / "tool-again")
    ro = root / "share" / "readonly.cfg"
    ro.write_text(f"prefix={OLD}\n")
    ro.chmod(0o444)
    relocate_tree(root, MOVES)
    st = os.stat(root / "bin" / "tool")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o755, 1_000_000_000 * 10**9)
    assert os.path.samefile(root / "bin" / "tool", root / "bin" / "tool-again")
    assert ro.read_text() == f"prefix={NEW}\n"
    assert os.stat(ro).st_mode & 0o7777 == 0o444


def test_relocate_longest_old_path_wins(tmp_path: Path):
    (tmp_path / "f").write_text(f"{OLD}/x {OLD}/sub/y {OLD}sub\n")
    relocate_tree(tmp_path, [(OLD, "/A"), (f"{OLD}/sub", "/B")])
    assert (tmp_path / "f").read_text() == "/A/x /B/y /Asub\n"


def test_relocate_treats_a_late_nul_as_binary(tmp_path: Path):
    data = (OLD + "\n").encode() * 10_000 + b"\0"     # the NUL far beyond the first block
    (tmp_path / "late").write_bytes(data)
    assert relocate_tree(tmp_path, MOVES) == []
    assert (tmp_path / "late").read_bytes() == data


def test_find_names_text_binary_and_symlink_offenders(tmp_path: Path):
    root = _tree(tmp_path / "t")
    found = find_build_paths(root, [OLD, OLD_DEP])
    assert [(x.file, x.path, x.kind) for x in found] == [
        ("bin/tool", OLD_DEP, "text"),        # the longest path is reported first
        ("deplib", OLD_DEP, "symlink"),
        ("share/abs-link", OLD, "symlink"),
        ("share/prog", OLD, "binary"),
    ]


def test_verify_after_relocation_refuses_only_the_binary(tmp_path: Path):
    root = _tree(tmp_path / "t")
    relocate_tree(root, MOVES)
    with pytest.raises(StackError) as err:
        verify_no_build_paths(root, [OLD, OLD_DEP])
    assert str(err.value) == f"leftover build path {OLD} in share/prog (binary) (below {root})"


def test_verify_passes_a_clean_tree(tmp_path: Path):
    root = _tree(tmp_path / "t")
    (root / "share" / "prog").unlink()
    relocate_tree(root, MOVES)
    verify_no_build_paths(root, [OLD, OLD_DEP])
    verify_no_build_paths(root, [])


@pytest.mark.parametrize("offset", range(0, 40, 3))
def test_verify_finds_a_path_across_block_boundaries(tmp_path: Path, offset: int):
    data = b"\0" + b"x" * offset + OLD.encode() + b"y" * 50
    (tmp_path / "blob").write_bytes(data)
    with pytest.raises(StackError, match=re.escape(f"{OLD} in blob (binary)")):
        verify_no_build_paths(tmp_path, [OLD], block=16)
    (tmp_path / "blob").write_bytes(data.replace(OLD.encode()[-1:], b"!"))
    verify_no_build_paths(tmp_path, [OLD], block=16)


def test_verify_names_the_first_few_and_counts_the_rest(tmp_path: Path):
    for i in range(8):
        (tmp_path / f"f{i}.txt").write_text(f"at {OLD}\n")
    with pytest.raises(StackError) as err:
        verify_no_build_paths(tmp_path, [OLD], limit=3)
    msg = str(err.value)
    assert msg.startswith(f"leftover build path {OLD} in f0.txt (text); "
                          f"leftover build path {OLD} in f1.txt (text); "
                          f"leftover build path {OLD} in f2.txt (text); and 5 more files")
