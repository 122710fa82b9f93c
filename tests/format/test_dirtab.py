"""Tests of .cvmfsdirtab parsing and matching, differential against the real glibc glob()."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pycvmfs.errors import FormatError
from pycvmfs.format.dirtab import Dirtab, LocalDirtabTree, _fnmatch

# glibc values, checked against /usr/include/glob.h by test_glob_flags_match_the_system_header.
GLOB_NOSORT, GLOB_PERIOD, GLOB_ALTDIRFUNC, GLOB_ONLYDIR = 1 << 2, 1 << 7, 1 << 9, 1 << 13
STOCK_FLAGS = GLOB_ONLYDIR | GLOB_NOSORT | GLOB_PERIOD | GLOB_ALTDIRFUNC
FNM_PERIOD = 1 << 2
REG_EXTENDED, REG_NEWLINE, REG_NOSUB = 1, 1 << 2, 1 << 3
LC_CTYPE_MASK, LC_COLLATE_MASK = 1 << 0, 1 << 3

_CLOSEDIR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_READDIR = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
_OPENDIR = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_STAT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class GlobT(ctypes.Structure):
    """glibc's ``glob_t`` (x86-64 / LP64 layout)."""

    _fields_ = [
        ("gl_pathc", ctypes.c_size_t), ("gl_pathv", ctypes.POINTER(ctypes.c_char_p)),
        ("gl_offs", ctypes.c_size_t), ("gl_flags", ctypes.c_int),
        ("gl_closedir", _CLOSEDIR), ("gl_readdir", _READDIR), ("gl_opendir", _OPENDIR),
        ("gl_lstat", _STAT), ("gl_stat", _STAT),
    ]


class Glibc:
    """The real glob(), fnmatch() and regcomp()/regexec(), run in the C locale like stock."""

    def __init__(self) -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        for name, res, args in [
            ("opendir", ctypes.c_void_p, [ctypes.c_char_p]),
            ("readdir", ctypes.c_void_p, [ctypes.c_void_p]),
            ("closedir", ctypes.c_int, [ctypes.c_void_p]),
            ("lstat", ctypes.c_int, [ctypes.c_char_p, ctypes.c_void_p]),
            ("stat", ctypes.c_int, [ctypes.c_char_p, ctypes.c_void_p]),
            ("realpath", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]),
            ("glob", ctypes.c_int,
             [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(GlobT)]),
            ("globfree", None, [ctypes.POINTER(GlobT)]),
            ("fnmatch", ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]),
            ("regcomp", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]),
            ("regexec", ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                       ctypes.c_void_p, ctypes.c_int]),
            ("regfree", None, [ctypes.c_void_p]),
            ("newlocale", ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]),
            ("uselocale", ctypes.c_void_p, [ctypes.c_void_p]),
        ]:
            getattr(libc, name).restype = res
            getattr(libc, name).argtypes = args
        self.libc = libc
        self._c = libc.newlocale(LC_CTYPE_MASK | LC_COLLATE_MASK, b"C", None)
        assert self._c

    @contextmanager
    def c_locale(self) -> Iterator[None]:
        """swissknife never calls setlocale(), so it runs in "C"; Python does not."""
        old = self.libc.uselocale(self._c)
        try:
            yield
        finally:
            self.libc.uselocale(old)

    def fnmatch(self, pattern: bytes, name: bytes, period: bool) -> bool:
        with self.c_locale():
            return self.libc.fnmatch(pattern, name, FNM_PERIOD if period else 0) == 0

    def regex_search(self, regex: bytes, text: bytes) -> bool:
        buf = ctypes.create_string_buffer(256)  # sizeof(regex_t) is 64
        with self.c_locale():
            assert self.libc.regcomp(buf, regex, REG_EXTENDED | REG_NEWLINE | REG_NOSUB) == 0
            try:
                return self.libc.regexec(buf, text, 0, None, 0) == 0
            finally:
                self.libc.regfree(buf)

    def stock_glob(self, root: bytes, pattern: bytes) -> list[bytes]:
        """glob() as ``DetermineNestedCatalogCandidates`` calls it, with its callbacks that
        refuse any path whose realpath() leaves the union directory ``root``."""
        libc = self.libc

        def inside(name: bytes) -> bool:
            buf = ctypes.create_string_buffer(4096)
            if not libc.realpath(name, buf):
                return False
            return buf.value == root or buf.value.startswith(root + b"/")

        @_OPENDIR
        def opendir(name: bytes) -> int | None:
            return libc.opendir(name) if inside(name) else None

        @_READDIR
        def readdir(handle: int) -> int | None:
            return libc.readdir(handle)

        @_CLOSEDIR
        def closedir(handle: int) -> None:
            libc.closedir(handle)

        @_STAT
        def lstat(name: bytes, buf: int) -> int:
            return libc.lstat(name, buf) if inside(name) else -1

        @_STAT
        def stat_(name: bytes, buf: int) -> int:
            return libc.stat(name, buf) if inside(name) else -1

        g = GlobT(gl_opendir=opendir, gl_readdir=readdir, gl_closedir=closedir,
                  gl_lstat=lstat, gl_stat=stat_)
        with self.c_locale():
            rc = libc.glob(root + pattern, STOCK_FLAGS, None, ctypes.byref(g))
        try:
            return [g.gl_pathv[i] for i in range(g.gl_pathc)] if rc == 0 else []
        finally:
            libc.globfree(ctypes.byref(g))

    def stock_apply(self, root: bytes, dirtab: Dirtab) -> set[tuple[bytes, bytes]]:
        """(path, real path) of what ``FilterCandidatesFromGlobResult`` keeps (before the catalog
        lookups): directories per lstat, not ending in /. or /.., not opposed by a negative."""
        kept = set()
        for rule in dirtab.positive:
            for found in self.stock_glob(root, rule.glob_string):
                rel = found[len(root):]
                if not stat.S_ISDIR(os.lstat(found).st_mode) or rel.endswith((b"/.", b"/..")):
                    continue
                if any(self.regex_search(neg.regex, rel) for neg in dirtab.negative):
                    continue
                real = os.fsencode(os.path.realpath(found))[len(root):] or b"/"
                kept.add((rel, real))
        return kept


@pytest.fixture(scope="module")
def glibc() -> Glibc:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("differential tests need glibc")
    return Glibc()


@contextmanager
def tree_dir() -> Iterator[bytes]:
    """A fresh directory whose real path has no glob metacharacters (unlike tmp_path)."""
    path = tempfile.mkdtemp(prefix="dirtab-root-")
    try:
        yield os.fsencode(os.path.realpath(path))
    finally:
        shutil.rmtree(path)


def build(root: bytes, spec: dict[bytes, bytes | None]) -> None:
    """Create ``spec``: path -> None (directory), b"" (empty file) or b"->target" (symlink)."""
    for rel, what in sorted(spec.items()):
        full = root + b"/" + rel
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if what is None:
            os.makedirs(full, exist_ok=True)
        elif what.startswith(b"->"):
            os.symlink(what[2:].replace(b"@ROOT@", root), full)
        else:
            Path(os.fsdecode(full)).write_bytes(what)


def ours(root: bytes, dirtab: Dirtab) -> set[tuple[bytes, bytes]]:
    found = dirtab.candidates(LocalDirtabTree(root))
    assert len({m.path for m in found}) == len(found), "duplicate matches"
    return {(m.path, m.real_path) for m in found}


# --- parsing ----------------------------------------------------------------------------------

def test_parse_skips_comments_blank_lines_and_trims_blanks() -> None:
    dirtab = Dirtab.parse(b"# comment\n\n   \n   # indented comment\n /sw/*  \t\n"
                          b"/data/*/run?\n/x # not a comment\n")
    assert [r.text for r in dirtab.positive] == [b"/sw/*", b"/data/*/run?", b"/x # not a comment"]
    assert [r.line for r in dirtab.positive] == [5, 6, 7]
    assert dirtab.negative == []


def test_parse_negative_rules_allow_blanks_after_the_bang_and_relative_patterns() -> None:
    dirtab = Dirtab.parse("/sw/*\n!   /sw/tmp \n!\t*.d\n! \n!")
    assert [(r.text, r.absolute) for r in dirtab.negative] == [(b"/sw/tmp", True),
                                                                (b"*.d", False)]


def test_parse_only_spaces_may_precede_comment_or_bang() -> None:
    # Dirtab::SkipWhitespace skips ' ' only; the tab survives until Trim, so "# c" and "!/a"
    # become (relative, hence invalid) positive rules.
    for text in ("\t# comment\n", "/a\n\t!/a/b\n"):
        with pytest.raises(FormatError, match="not an absolute path"):
            Dirtab.parse(text)


def test_parse_rejects_relative_positive_rules_naming_file_and_line() -> None:
    with pytest.raises(FormatError, match=r"^/cvmfs/r/\.cvmfsdirtab, line 2: positive rule"):
        Dirtab.parse(b"/ok\nsw/*\n", what="/cvmfs/r/.cvmfsdirtab")


@pytest.mark.parametrize("positive, negative", [
    ("/sw/*", "!/sw/*"), ("/sw/*", "! /sw//*/"), ("/a\\*b", "!/a\\*b"),
])
def test_parse_rejects_identical_positive_and_negative_patterns(positive: str,
                                                                negative: str) -> None:
    with pytest.raises(FormatError, match=r"dirtab: line 2 .* line 4 .*same pattern"):
        Dirtab.parse(f"# x\n{positive}\n/other\n{negative}\n", what="dirtab")


@pytest.mark.parametrize("positive, negative", [
    ("/a*", "!/a\\*"), ("/sw/**", "!/sw/*"), ("/sw/*", "!sw/*"), ("/a?", "!/a\\?"),
])
def test_parse_accepts_rules_that_only_look_alike(positive: str, negative: str) -> None:
    dirtab = Dirtab.parse(f"{positive}\n{negative}\n")
    assert len(dirtab.positive) == len(dirtab.negative) == 1


@pytest.mark.parametrize("line", ["/a\\x", "/a/\\/b", "/", "! //", "/*\\", "!/a\\b"])
def test_parse_rejects_bad_escapes_and_empty_elements(line: str) -> None:
    with pytest.raises(FormatError, match="line 1: invalid pattern"):
        Dirtab.parse(line)


def test_parse_keeps_carriage_returns_so_crlf_blank_lines_are_invalid() -> None:
    assert Dirtab.parse(b"/a\r\n# c\r\n").positive[0].text == b"/a\r"  # Trim keeps CR
    with pytest.raises(FormatError, match="line 2: positive rule"):
        Dirtab.parse(b"/a\r\n\r\n/b\r\n")


def test_glob_string_reescapes_only_star_and_question_mark() -> None:
    rules = Dirtab.parse(r"/a\*b/?/[x]/c\\d//e\/*" "\n/tail\\\n").positive
    # "\\" is a literal backslash for pathspec but stays an escape for glob(); "[" is a bracket.
    assert rules[0].glob_string == b"/a\\*b/?/[x]/c\\d/e/*"
    assert rules[1].glob_string == b"/tail"  # a lone trailing escape is dropped


def test_negative_regex_is_the_stock_relaxed_regex() -> None:
    rules = Dirtab.parse("!/a.b/*?/x+(y)\n!rel*|{z}\n").negative
    assert rules[0].regex == b"^/a\\.b/.*[^/]/x\\+\\(y\\)/?$"
    assert rules[1].regex == b"^rel.*|\\{z\\}/?$"


# --- negative rules ---------------------------------------------------------------------------

def test_negative_star_crosses_slashes_and_trailing_slash_is_allowed() -> None:
    dirtab = Dirtab.parse("/x\n!/sw/*/tmp\n")
    assert dirtab.is_excluded(b"/sw/a/b/tmp")
    assert dirtab.is_excluded(b"/sw/a/tmp/")
    assert not dirtab.is_excluded(b"/sw/a/tmp/x")
    assert not dirtab.is_excluded(b"/other/sw/a/tmp")


def test_relative_negative_rule_matches_only_from_the_start() -> None:
    dirtab = Dirtab.parse("/x\n!b\n!*.d\n")
    assert not dirtab.is_excluded(b"/a/b")
    assert dirtab.is_excluded(b"/a/c.d")
    assert not dirtab.is_excluded(b"/a/cxd")


def test_pipe_in_negative_rule_is_an_alternation_like_stock(glibc: Glibc) -> None:
    rule = Dirtab.parse("/x\n!/a|b\n").negative[0]
    for path, expected in [(b"/zzzb", True), (b"/a/anything", True), (b"/q", False)]:
        assert rule.excludes(path) is expected
        assert glibc.regex_search(rule.regex, path) is expected


def test_question_mark_in_negative_rule_does_not_match_newline(glibc: Glibc) -> None:
    rule = Dirtab.parse("!/a?b").negative[0]
    assert not rule.excludes(b"/a\nb") and not glibc.regex_search(rule.regex, b"/a\nb")
    assert rule.excludes(b"/a.b") and glibc.regex_search(rule.regex, b"/a.b")


_NEG_PIECES = [b"a", b"b", b"/", b"*", b"?", b"|", b".", b"\\*", b"\\\\", b"(", b")", b"{",
               b"}", b"+", b"^", b"$", b"[", b"]", b"\xc3\xa9", b"-"]
_PATH_CHARS = [b"a", b"b", b"/", b"|", b".", b"\\", b"(", b"*", b"\xc3", b"\xa9", b"\n", b"x"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_NEG_PIECES), min_size=1, max_size=7),
       st.lists(st.lists(st.sampled_from(_PATH_CHARS), max_size=7), min_size=1, max_size=6))
def test_negative_rules_agree_with_glibc_regexec(glibc: Glibc, pieces: list[bytes],
                                                 paths: list[list[bytes]]) -> None:
    try:
        rules = Dirtab.parse(b"!" + b"".join(pieces)).negative
    except FormatError:
        assume(False)
    assume(rules)
    for chars in paths:
        path = b"/" + b"".join(chars)
        assert rules[0].excludes(path) == glibc.regex_search(rules[0].regex, path), path


# --- fnmatch port -------------------------------------------------------------------------------

_FN_PIECES = [b"[", b"]", b"!", b"^", b"-", b"\\", b":", b"=", b".", b"*", b"?", b"a", b"b",
              b"z", b"A", b"1", b"\xc3", b"\xa9", b"[:alpha:]", b"[:digit:]", b"[:bogus:]",
              b"[:punct:]", b"[=a=]", b"[.a.]", b"[.-.]", b"[:", b":]", b"[!", b"[]", b"a-",
              b"\\]", b"[[:", b"[[.", b".]", b"[[=", b"=]"]
_FN_CHARS = [b"a", b"b", b".", b"-", b"]", b"[", b"\\", b"!", b"^", b"1", b"A", b"z", b"\xc3",
             b"\xa9", b":", b"="]


def test_fnmatch_port_agrees_with_glibc_on_many_random_patterns(glibc: Glibc) -> None:
    rnd = random.Random(20241018)
    for _ in range(12000):
        pattern = b"".join(rnd.choice(_FN_PIECES) for _ in range(rnd.randint(0, 8)))
        name = b"".join(rnd.choice(_FN_CHARS) for _ in range(rnd.randint(1, 5)))
        period = rnd.random() < 0.5
        assert _fnmatch(pattern, name, period) == glibc.fnmatch(pattern, name, period), \
            (pattern, name, period)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FN_PIECES), max_size=8),
       st.lists(st.sampled_from(_FN_CHARS), min_size=1, max_size=6), st.booleans())
def test_fnmatch_port_agrees_with_glibc(glibc: Glibc, pieces: list[bytes], chars: list[bytes],
                                        period: bool) -> None:
    pattern, name = b"".join(pieces), b"".join(chars)
    assert _fnmatch(pattern, name, period) == glibc.fnmatch(pattern, name, period)


@pytest.mark.parametrize("pattern, name", [
    (b"[[:z:]]", b"z]"), (b"[[:alpha:]", b"a"), (b"[a-]", b"-"), (b"[]-a]", b"^"),
    (b"[!]a]", b"b"), (b"[\\]]", b"]"), (b"[[.-.]-z]", b"q"), (b"[[=a=]b]", b"a"),
    (b"*[", b"x["), (b"[", b"["), (b"a\\", b"a"), (b"*\\", b"a\\"), (b"[[:alpha:]-z]", b"-"),
    (b"[a-[.z.]]", b"y"), (b"[[:bogus:]a]", b"a"), (b"[a[:bogus:]]", b"a"), (b"[!a", b"[!a"),
    (b"*.d", b".x.d"), (b"[.]x", b".x"), (b"\\.x", b".x"), (b"?*", b".x"),
])
def test_fnmatch_port_handles_bracket_corner_cases_like_glibc(glibc: Glibc, pattern: bytes,
                                                              name: bytes) -> None:
    for period in (False, True):
        assert _fnmatch(pattern, name, period) == glibc.fnmatch(pattern, name, period), period


def test_c_locale_question_mark_matches_one_byte_not_one_character() -> None:
    assert not _fnmatch(b"?", "é".encode(), False)
    assert _fnmatch(b"??", "é".encode(), False)


# --- matching: the documented quirks ------------------------------------------------------------

def test_wildcards_before_the_last_component_skip_hidden_directories(glibc: Glibc) -> None:
    with tree_dir() as root:
        build(root, {b"a/.d/e": None, b"a/x/y": None, b"a/.cvmfs-ish": None})
        dirtab = Dirtab.parse("/a/*\n/a/*/*\n")
        expected = {b"/a/.d", b"/a/x", b"/a/.cvmfs-ish", b"/a/x/y"}
        assert {p for p, _ in ours(root, dirtab)} == expected  # no /a/.d/e
        assert ours(root, dirtab) == glibc.stock_apply(root, dirtab)


def test_symlink_in_a_middle_component_is_followed_to_the_real_directory(glibc: Glibc) -> None:
    with tree_dir() as root:
        build(root, {b"a/p/1.1/bin": None, b"a/latest": b"->p/1.1"})
        dirtab = Dirtab.parse("/a/*\n/a/*/*\n")
        found = {m.path: m.real_path for m in dirtab.candidates(LocalDirtabTree(root))}
        assert found == {b"/a/p": b"/a/p", b"/a/p/1.1": b"/a/p/1.1",
                         b"/a/latest/bin": b"/a/p/1.1/bin"}  # /a/latest itself is skipped
        assert set(found.items()) == glibc.stock_apply(root, dirtab)


def test_negative_rules_exclude_matches_as_spelled(glibc: Glibc) -> None:
    with tree_dir() as root:
        build(root, {b"a/p/1.1/bin": None, b"a/latest": b"->p/1.1", b"a/q/bin": None})
        dirtab = Dirtab.parse("/a/*/*\n!/a/latest/*\n!*/q/*\n")
        assert dirtab.matches(LocalDirtabTree(root)) == [b"/a/p/1.1"]
        assert ours(root, dirtab) == glibc.stock_apply(root, dirtab)


def test_links_leaving_the_tree_are_not_followed(glibc: Glibc) -> None:
    with tree_dir() as root:
        build(root, {b"a/in/x": None, b"a/abs": b"->@ROOT@/a/in", b"a/out": b"->/usr",
                     b"a/up": b"->../../..", b"a/loop": b"->loop", b"a/dangling": b"->nope",
                     b"a/file": b"", b"a/tofile": b"->file"})
        dirtab = Dirtab.parse("/a/*/*\n")
        assert {p for p, _ in ours(root, dirtab)} == {b"/a/in/x", b"/a/abs/x"}
        assert ours(root, dirtab) == glibc.stock_apply(root, dirtab)


def test_dot_entries_match_explicit_dot_patterns_but_never_as_last_component(
        glibc: Glibc) -> None:
    with tree_dir() as root:
        build(root, {b"a/x": None, b"b/x": None, b"a/.h/x": None})
        dirtab = Dirtab.parse("/a/.*/x\n/a/.*/b\n/.*/*\n/a/*/..\n/a/.\n")
        found = ours(root, dirtab)
        assert (b"/a/./x", b"/a/x") in found and (b"/a/../b", b"/b") in found
        assert (b"/./a", b"/a") in found and (b"/a/.h/x", b"/a/.h/x") in found
        assert not any(p.endswith((b"/.", b"/..")) for p, _ in found)
        assert found == glibc.stock_apply(root, dirtab)


def test_files_and_odd_names_are_matched_like_glibc(glibc: Glibc) -> None:
    with tree_dir() as root:
        build(root, {b"d/*": None, b"d/?": None, b"d/[a]": None, b"d/a": None, b"d/b": b"",
                     "d/é".encode(): None, b"d/\\": None, b"d/.h": None, b"d/a b": None})
        for text, expected in [
            ("/d/\\*", {b"/d/*"}), ("/d/\\?", {b"/d/?"}), ("/d/[[]a]", {b"/d/[a]"}),
            ("/d/[a]", {b"/d/a"}), ("/d/?", {b"/d/*", b"/d/?", b"/d/a", b"/d/\\"}),
            ("/d/??", {"/d/é".encode(), b"/d/.h"}), ("/d/[!a]", {b"/d/*", b"/d/?", b"/d/\\"}),
            ("/d/\\\\\\\\", {b"/d/\\"}), ("/d/[[:alpha:]]", {b"/d/a"}), ("/d/b", set()),
            ("/d/* b", {b"/d/a b"}),
        ]:
            dirtab = Dirtab.parse(text)
            assert {p for p, _ in ours(root, dirtab)} == expected, text
            assert ours(root, dirtab) == glibc.stock_apply(root, dirtab), text


_RICH_TREE: dict[bytes, bytes | None] = {
    b"sw/v1/bin": None, b"sw/v2/lib": None, b"sw/.old/bin": None, b"sw/latest": b"->v2",
    b"sw/README": b"", b"sw/v1/bin/tool": b"", b"data/2024/run1": None, b"data/2024/run2": None,
    b"data/.tmp/run3": None, b"data/link": b"->2024/run1", b"data/abs": b"->@ROOT@/sw",
    b"data/out": b"->/etc", b"weird/[x]/y": None, b"weird/*/y": None, b"weird/x/y": None,
    b"weird/a\\b": None, "weird/ünï/y".encode(): None, b"weird/sp ace": None,
    b"top": b"->sw/../data", b"loop": b"->loop",
}
_RICH_RULES = [
    "/sw/*", "/sw/*/*", "/*/*/*", "/sw/latest/*", "/data/*/run?", "/data/link/..",
    "/*/[a-z]*/*", "/weird/[[]x]/*", "/weird/\\*/y", "/weird/?/y", "/weird/*\\\\\\\\b",
    "/weird/[!x]/y", "/weird/??????/y", "/top/*", "/top/../sw/*", "/*", "/.*/*", "/sw/.*",
    "/weird/[[:alpha:]]/y", "/weird/[x", "/weird/sp ace", "/data/abs/v1", "/loop/*",
    "/[sd]*/*/*\n!/sw/v1/*\n!*/run2", "/sw/*\n!*", "/sw/*\n!/sw/v1|2024",
    # a lone "\\" element (a literal backslash for pathspec) is a glob escape of "/":
    "/\\\\/*", "/\\\\/sw/*", "/*/\\\\/*", "/s*/\\\\/\\\\/v?", "/sw/\\\\",
]


@pytest.mark.parametrize("text", _RICH_RULES)
def test_hand_written_rules_agree_with_glibc(glibc: Glibc, text: str) -> None:
    with tree_dir() as root:
        build(root, _RICH_TREE)
        dirtab = Dirtab.parse(text)
        assert ours(root, dirtab) == glibc.stock_apply(root, dirtab)


def test_candidates_are_reported_once_in_rule_order() -> None:
    with tree_dir() as root:
        build(root, {b"a/b": None, b"a/c": None})
        dirtab = Dirtab.parse("/a/c\n/a/*\n/a/b\n")
        assert dirtab.matches(LocalDirtabTree(root)) == [b"/a/c", b"/a/b"]


# --- random trees and rules against glibc -------------------------------------------------------

_NAMES = [b"a", b"b", b"ab", b".h", b"lp", b"*", b"?", b"[a]", b"\\", b"a\\b", "é".encode(),
          b"-", b"!"]
_TARGETS = [b"a", b"../a", b"..", b".", b"../..", b"b/ab", b"/etc", b"@ROOT@/a",
            b"@ROOT@/b/.h", b"nonexistent", b"../../../..", b"[a]", b"lp", b"../lp", b"\\"]
_COMPONENTS = [b"a", b"b", b"*", b"?", b".*", b"*a*", b"[ab]", b"[!a]", b"[^a]", b"[]a]",
               b"[a-c]", b"[[:alpha:]]", b"[", b"]", b"\\*", b"\\?", b"\\\\", b"\\\\*", b".",
               b"..", b".h", b"?*", b"[.]", "é".encode(), b"?\xa9", b"[\xc3]*", b"\\\\[a]",
               b"[*]", b"a\\\\", b"*\\\\", b"[!.]*", b".[a-z]", b"[[.a.]]", b"[[=a=]]",
               b"\\\\\\\\", b"[\\\\]", b"lp"]
_NEGATIVES = [b"!*h", b"!/a/*", b"!b", b"!*/b", b"!/?", b"!/a|b", b"!*\xa9"]

_entry = st.tuples(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3),
                   st.sampled_from(["dir", "dir", "dir", "file", "link"]),
                   st.sampled_from(_TARGETS))
_rule = st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=4).map(
    lambda parts: b"/" + b"/".join(parts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, min_size=1, max_size=14), st.lists(_rule, min_size=1, max_size=3),
       st.lists(st.sampled_from(_NEGATIVES), max_size=2))
def test_random_trees_and_rules_agree_with_glibc(glibc: Glibc, entries: list, rules: list[bytes],
                                                 negatives: list[bytes]) -> None:
    try:
        dirtab = Dirtab.parse(b"\n".join(rules + negatives))
    except FormatError:
        assume(False)
    with tree_dir() as root:
        spec: dict[bytes, bytes | None] = {}
        for parts, kind, target in entries:
            path = b"/".join(parts)
            if any(path.startswith(p + b"/") and spec[p] is not None for p in spec):
                continue  # below a file or link
            spec.setdefault(path, None if kind == "dir" else b"" if kind == "file"
                            else b"->" + target)
        for path in list(spec):  # a later entry below it needs it to be a directory
            if any(other.startswith(path + b"/") for other in spec):
                spec[path] = None
        build(root, spec)
        assert ours(root, dirtab) == glibc.stock_apply(root, dirtab)


# --- LocalDirtabTree ----------------------------------------------------------------------------

def test_local_tree_lists_kinds_and_resolves_without_leaving_root() -> None:
    with tree_dir() as root:
        build(root, {b"a/b": None, b"a/f": b"", b"a/l": b"->b", b"a/abs": b"->@ROOT@/a/b",
                     b"a/out": b"->/usr", b"a/up": b"->../..", b"a/loop": b"->loop",
                     b"a/tofile": b"->f", b"a/mnt": b"->/cvmfs/repo.test/a/b"})
        tree = LocalDirtabTree(root)
        assert tree.listdir(b"/a") == [(b"abs", "symlink"), (b"b", "dir"), (b"f", "file"),
                                       (b"l", "symlink"), (b"loop", "symlink"),
                                       (b"mnt", "symlink"), (b"out", "symlink"),
                                       (b"tofile", "symlink"), (b"up", "symlink")]
        assert tree.resolve_dir(b"/") == b"/"
        assert tree.resolve_dir(b"/a/l") == b"/a/b"
        assert tree.resolve_dir(b"/a/abs/.././l/") == b"/a/b"
        assert tree.resolve_dir(b"/a/l/..") == b"/a"
        for path in (b"/..", b"/a/../..", b"/a/out", b"/a/up", b"/a/loop", b"/a/tofile",
                     b"/a/f", b"/a/missing", b"/a/mnt"):
            assert tree.resolve_dir(path) is None, path
        mounted = LocalDirtabTree(os.fsdecode(root), mount_point="/cvmfs/repo.test")
        assert mounted.resolve_dir(b"/a/mnt") == b"/a/b"


def test_glob_flags_match_the_system_header() -> None:
    header = Path("/usr/include/glob.h")
    if not header.exists():
        pytest.skip("no glibc headers")
    text = header.read_text()
    for name, value in [("GLOB_NOSORT", GLOB_NOSORT), ("GLOB_PERIOD", GLOB_PERIOD),
                        ("GLOB_ALTDIRFUNC", GLOB_ALTDIRFUNC), ("GLOB_ONLYDIR", GLOB_ONLYDIR)]:
        shift = re.search(rf"#\s*define\s+{name}\s+\(1 << (\d+)\)", text)
        assert shift is not None and 1 << int(shift.group(1)) == value, name
