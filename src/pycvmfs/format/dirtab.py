"""``.cvmfsdirtab``: parsing, and matching exactly like the stock publisher's glibc ``glob()``."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from pycvmfs.errors import FormatError

__all__ = ["Dirtab", "DirtabMatch", "DirtabRule", "DirtabTree", "LocalDirtabTree"]

_STAR, _QMARK = 0, 1  # element tokens besides plaintext bytes
Element = tuple[int | bytes, ...]

# Characters escaped by stock in plaintext for the regex (``IsSpecialRegexCharacter``); ``|`` is
# missing from that list, so it stays an alternation in negative rules (reproduced on purpose).
_REGEX_SPECIAL = frozenset(b".\\*?[](){}^$+")
_MAX_SYMLINKS = 40  # Linux MAXSYMLINKS: realpath() gives up with ELOOP after that many


class DirtabMatch(NamedTuple):
    """A directory selected by the dirtab: ``path`` as glob spelled it, ``real_path`` with every
    symlink, ``.`` and ``..`` resolved (where the marker goes), and the positive rule."""

    path: bytes
    real_path: bytes
    rule: DirtabRule


class DirtabTree(Protocol):
    """The directory tree the dirtab is applied to; paths are absolute (``b"/a/b"``, root ``b"/"``).

    ``listdir`` is only called with paths returned by ``resolve_dir``; it returns the entries
    without ``.``/``..`` as ``(name, kind)``, kind per ``lstat``: "dir", "symlink", "file" or
    "other". ``resolve_dir`` resolves a path like ``realpath()`` (symlinks in every component
    followed, ``.``/``..`` taken physically) and returns the real directory path, or None when it
    does not exist, is not a directory, loops or leaves the tree.
    """

    def listdir(self, path: bytes) -> list[tuple[bytes, str]]: ...

    def resolve_dir(self, path: bytes) -> bytes | None: ...


# --- rules -----------------------------------------------------------------------------------

def _parse_element(raw: bytes) -> Element | None:
    """One ``/``-free pathspec element (``PathspecElementPattern``); None if invalid."""
    tokens: list[int | bytes] = []
    i, n = 0, len(raw)
    while i < n:
        if raw[i] in b"*?":
            tokens.append(_STAR if raw[i] == 0x2A else _QMARK)
            i += 1
            continue
        text, escaped = bytearray(), False
        while i < n:
            c = raw[i]
            if c in b"*?" and not escaped:
                break
            if c == 0x5C and not escaped:
                escaped = True
            elif escaped:
                if c not in b"*?\\":
                    return None  # only *, ? and \ may be escaped
                text.append(c)
                escaped = False
            else:
                text.append(c)
            i += 1
        if not text:
            return None  # e.g. an element that is a lone backslash
        tokens.append(bytes(text))
    return tuple(tokens)


@dataclass(frozen=True)
class DirtabRule:
    """One dirtab line: the trimmed pattern text, its line number and the parsed elements."""

    text: bytes
    line: int
    negative: bool
    absolute: bool
    elements: tuple[Element, ...]
    _regex: re.Pattern[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Under REG_NEWLINE a non-matching list excludes newline; "[^/]" only comes from "?".
        python = self.regex.replace(b"[^/]", b"[^/\n]")
        object.__setattr__(self, "_regex", re.compile(python, re.MULTILINE))

    @property
    def same_pathspec(self) -> tuple[bool, tuple[Element, ...]]:
        """What stock compares (``Pathspec::operator==``) to find contradicting rules."""
        return self.absolute, self.elements

    @property
    def glob_string(self) -> bytes:
        """``Pathspec::GetGlobString``: only ``*`` and ``?`` of plaintext are re-escaped, so
        ``[`` starts a glob bracket and a literal backslash (written ``\\\\``) escapes."""
        text = (b"/" if self.absolute else b"") + self._render(b"*", b"?", b"*?")
        return text.split(b"\0", 1)[0]  # glob() gets a C string

    @property
    def regex(self) -> bytes:
        """The "relaxed" POSIX ERE stock compiles (``REG_EXTENDED|REG_NEWLINE``) for negatives."""
        text = (b"^/" if self.absolute else b"^") + self._render(b".*", b"[^/]", _REGEX_SPECIAL)
        return (text + b"/?$").split(b"\0", 1)[0]  # regcomp() gets a C string

    def _render(self, star: bytes, qmark: bytes, escaped: bytes | frozenset[int]) -> bytes:
        parts = []
        for element in self.elements:
            chunk = bytearray()
            for token in element:
                if isinstance(token, bytes):
                    for c in token:
                        chunk += b"\\%c" % c if c in escaped else b"%c" % c
                else:
                    chunk += star if token == _STAR else qmark
            parts.append(bytes(chunk))
        return b"/".join(parts)

    def excludes(self, path: bytes) -> bool:
        """``Pathspec::IsMatchingRelaxed``: an unanchored ``regexec`` of :attr:`regex`."""
        path = path.split(b"\0", 1)[0]
        return bool(path) and self._regex.search(path) is not None


def _trim(text: bytes) -> bytes:
    return text.strip(b" \t")  # stock ``Trim``: blanks and tabs only, never CR


@dataclass
class Dirtab:
    """The rules of a ``.cvmfsdirtab``, in file order, and their application to a tree.

    Stock (``CommandApplyDirtab``, ``cvmfs/swissknife_sync.cc``) runs glibc ``glob()`` on each
    positive rule's :attr:`~DirtabRule.glob_string` with ``GLOB_ONLYDIR|GLOB_NOSORT|GLOB_PERIOD|
    GLOB_ALTDIRFUNC`` in the C locale on the union directory, its callbacks refusing any path whose
    ``realpath`` leaves the union; it keeps results that are directories per ``lstat``, do not end
    in ``/.`` or ``/..`` and that no negative rule matches *as spelled*. :meth:`candidates`
    emulates that on a :class:`DirtabTree`: glibc's ``__glob``/``glob_in_dir`` recursion (a
    wildcard in a non-final component never matches a leading ``.``; ``.`` and ``..`` are entries;
    symlinks to directories are followed in non-final components, skipped as the final one) and
    its single-byte ``fnmatch`` (``[...]`` with ``!``/``^``, ranges, ``[:class:]``, ``[=c=]``,
    ``[.c.]``, ``\\`` escapes, an unterminated ``[`` matching itself).

    Stock creates each marker with ``open(path + "/.cvmfscatalog", O_CREAT)``, i.e. through any
    symlink: the publisher should create it at :attr:`DirtabMatch.real_path` unless a marker
    exists there already.
    """

    positive: list[DirtabRule] = field(default_factory=list)
    negative: list[DirtabRule] = field(default_factory=list)

    @classmethod
    def parse(cls, text: bytes | str, *, what: str = ".cvmfsdirtab") -> Dirtab:
        """Parse like ``Dirtab::Parse``; FormatError (naming ``what`` and the line) where stock
        would declare the dirtab invalid and fail the publish.

        Per line: leading *spaces* skipped (not tabs); then ``#`` makes a comment and ``!`` a
        negative rule (spaces after it skipped); the rest is trimmed of blanks and tabs.
        """
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
        result = cls()
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        for lineno, line in enumerate(lines, 1):
            i = len(line) - len(line.lstrip(b" "))
            negative = False
            if line[i:i + 1] == b"#":
                continue
            if line[i:i + 1] == b"!":
                negative = True
                rest = line[i + 1:]
                i = len(line) - len(rest.lstrip(b" "))
            spec = _trim(line[i:])
            if not spec:
                continue
            where = f"{what}, line {lineno}"
            elements = []
            for raw in spec.split(b"/"):
                if raw:
                    element = _parse_element(raw)
                    if element is None:
                        raise FormatError(f"{where}: invalid pattern {spec!r} (an escape other "
                                          "than \\*, \\? or \\\\, or an empty element)")
                    elements.append(element)
            if not elements:
                raise FormatError(f"{where}: invalid pattern {spec!r} (no path element)")
            absolute = spec.startswith(b"/")
            if not negative and not absolute:
                raise FormatError(f"{where}: positive rule {spec!r} is not an absolute path")
            rule = DirtabRule(spec, lineno, negative, absolute, tuple(elements))
            (result.negative if negative else result.positive).append(rule)
        for pos in result.positive:
            for neg in result.negative:
                if pos.same_pathspec == neg.same_pathspec:
                    raise FormatError(f"{what}: line {pos.line} ({pos.text!r}) and line "
                                      f"{neg.line} ({neg.text!r}) select and exclude the same "
                                      "pattern; stock rejects this dirtab")
        return result

    def is_excluded(self, path: bytes) -> bool:
        """True if a negative rule matches ``path`` (``Dirtab::IsOpposing``)."""
        return any(rule.excludes(path) for rule in self.negative)

    def candidates(self, tree: DirtabTree) -> list[DirtabMatch]:
        """Every directory the positive rules select and no negative rule excludes, first match
        first (rule order, then tree listing order; stock's glob order is unspecified)."""
        glob = _Glob(tree)
        seen: set[bytes] = set()
        result: list[DirtabMatch] = []
        for rule in self.positive:
            for path in glob.run(rule.glob_string):
                if path in seen:
                    continue
                real = glob.real_directory(path)
                if real is None or self.is_excluded(path):
                    continue
                seen.add(path)
                result.append(DirtabMatch(path, real, rule))
        return result

    def matches(self, tree: DirtabTree) -> list[bytes]:
        """The paths (as spelled by glob) of :meth:`candidates`."""
        return [match.path for match in self.candidates(tree)]


# --- glibc glob() emulation ---------------------------------------------------------------------

_SPECIAL, _BACKSLASH, _BRACKET = 1, 2, 4


def _pattern_type(pattern: bytes) -> int:
    """glibc ``__glob_pattern_type`` with backslash quoting."""
    kind, i = 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c in b"*?":
            return _SPECIAL
        if c == 0x5C:
            if i + 1 < len(pattern):
                i += 1
            kind |= _BACKSLASH
        elif c == 0x5B:
            kind |= _BRACKET
        elif c == 0x5D and kind & _BRACKET:
            return _SPECIAL
        i += 1
    return kind


def _unescape(text: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == 0x5C:
            i += 1
            if i == len(text):
                break
        out.append(text[i])
        i += 1
    return bytes(out)


def _strip_escape(dirname: bytes) -> bytes:
    """Drop a final backslash that is not itself escaped ("foo\\/bar": the "/" was escaped)."""
    trailing = len(dirname) - len(dirname.rstrip(b"\\"))
    return dirname[:-1] if trailing % 2 else dirname


def _join(directory: bytes, name: bytes) -> bytes:
    return directory + name if directory.endswith(b"/") else directory + b"/" + name


class _Glob:
    """One dirtab application: glob runs over a tree, with its answers cached."""

    def __init__(self, tree: DirtabTree) -> None:
        self._tree = tree
        self._resolved: dict[bytes, bytes | None] = {}
        self._listings: dict[bytes, dict[bytes, str]] = {}

    def _resolve(self, path: bytes) -> bytes | None:
        if path not in self._resolved:
            self._resolved[path] = self._tree.resolve_dir(path)
        return self._resolved[path]

    def _entries(self, real: bytes) -> dict[bytes, str]:
        """name -> kind, with the "." and ".." that readdir() also returns."""
        if real not in self._listings:
            listing = {b".": "dir", b"..": "dir"}
            listing.update((n, k) for n, k in self._tree.listdir(real) if n not in listing)
            self._listings[real] = listing
        return self._listings[real]

    def real_directory(self, path: bytes) -> bytes | None:
        """Stock's post-filter: the real path if ``path`` is a directory per ``lstat`` and does
        not end in ``/.`` or ``/..``; else None."""
        if path.endswith(b"/"):  # lstat("dir/") follows a symlink (only via a NUL in the rule)
            return self._resolve(path)
        parent, _, name = path.rpartition(b"/")
        if name in (b".", b".."):
            return None
        real_parent = self._resolve(parent or b"/")
        if real_parent is None or self._entries(real_parent).get(name) != "dir":
            return None
        return _join(real_parent, name)

    def run(self, pattern: bytes, period: bool = True, mark: bool = False) -> list[bytes]:
        """``__glob(pattern, GLOB_ONLYDIR|GLOB_NOSORT|GLOB_ALTDIRFUNC [|GLOB_PERIOD|GLOB_MARK])``
        where the pattern stands for union directory + pattern (no dirname is ever just "/")."""
        slash = pattern.rfind(b"/")
        if slash < 0:
            return []  # relative: never produced from a (necessarily absolute) positive rule
        dirname, filename = pattern[:slash], pattern[slash + 1:]
        if not filename and slash > 1:
            # "pattern/" (reachable through a lone "\\" element): glob the dirname with
            # GLOB_MARK, which appends "/" to every result that stat()s as a directory.
            return self.run(_strip_escape(dirname), period, mark=True)
        if _pattern_type(dirname) & (_SPECIAL | _BRACKET):
            # The directory part is globbed WITHOUT GLOB_PERIOD (glibc quirk).
            found = [d + b"/" + name for d in self.run(_strip_escape(dirname), period=False)
                     for name in self._in_dir(filename, d, period)]
        else:
            dirname = _unescape(dirname)
            found = [dirname + b"/" + name
                     for name in self._in_dir(filename, dirname or b"/", period)]
        if mark:
            found = [p + b"/" if self._resolve(p) is not None else p for p in found]
        return found

    def _in_dir(self, pattern: bytes, directory: bytes, period: bool) -> list[bytes]:
        """glibc ``glob_in_dir`` with GLOB_ONLYDIR."""
        if _pattern_type(pattern) == 0:
            # glibc only lstat()s DIRECTORY/PATTERN here; every later step (opening it as a
            # directory, or stock's final lstat) checks it again, so the answer is deferred.
            return [pattern]
        real = self._resolve(directory)  # gl_opendir, refused outside the tree
        if real is None:
            return []
        names = []
        for name, kind in self._entries(real).items():
            if kind == "symlink":  # DT_LNK: glibc stat()s it (gl_stat, refused outside)
                if self._resolve(_join(directory, name)) is None:
                    continue
            elif kind != "dir":
                continue
            if _fnmatch(pattern, name, not period):
                names.append(name)
        return names


# --- glibc fnmatch() (single-byte C locale, no FNM_PATHNAME, POSIXLY_CORRECT unset) ----------

_CHARCLASS_NAME_MAX = 2048
_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_GRAPH = bytes(range(33, 127))
_CLASSES = {
    b"alnum": _ALNUM, b"alpha": _ALNUM[10:], b"blank": b" \t", b"digit": _ALNUM[:10],
    b"cntrl": bytes([*range(32), 127]), b"graph": _GRAPH, b"lower": _ALNUM[36:],
    b"print": bytes(range(32, 127)), b"punct": bytes(c for c in _GRAPH if c not in _ALNUM),
    b"space": b" \t\n\v\f\r", b"upper": _ALNUM[10:36], b"xdigit": b"0123456789ABCDEFabcdef",
}
_BS, _LB, _RB, _COLON, _EQ, _DOT, _DASH = b"\\[]:=.-"


def _fnmatch(pattern: bytes, name: bytes, no_leading_period: bool) -> bool:
    """glibc ``fnmatch(pattern, name, no_leading_period ? FNM_PERIOD : 0) == 0``."""
    return _fct(pattern, 0, name, 0, no_leading_period, False) is not None


def _fct(pat: bytes, pi: int, s: bytes, ni: int, nlp: bool, segment: bool
         ) -> tuple[int, int, bool] | tuple[()] | None:
    """glibc ``internal_fnmatch`` (FCT). None: no match; (): match; with ``segment`` (the
    ``ends`` argument), stop at the next ``*`` and return where: (pattern, string, period)."""
    plen, slen = len(pat), len(s)
    while pi < plen:
        c = pat[pi]
        pi += 1
        if c == 0x3F:  # ?
            if ni == slen or (nlp and s[ni] == _DOT):
                return None
        elif c == _BS:
            if pi == plen:
                return None  # trailing backslash loses
            if ni == slen or s[ni] != pat[pi]:
                return None
            pi += 1
        elif c == 0x2A:  # *
            if segment:
                return (pi - 1, ni, nlp)
            if nlp and ni < slen and s[ni] == _DOT:
                return None
            while pi < plen and pat[pi] in b"?*":
                if pat[pi] == 0x3F:
                    if ni == slen:
                        return None
                    ni += 1
                pi += 1
            if pi == plen:
                return ()
            first = literal = pat[pi]
            if first == _BS:  # "\\x": the escaped byte; a trailing backslash matches nothing
                literal = pat[pi + 1] if pi + 1 < plen else -1
            found = None
            while ni < slen:
                if first == _LB or s[ni] == literal:
                    found = _fct(pat, pi, s, ni, nlp, True)
                    if found is not None:
                        break
                ni += 1
                nlp = False
            if found is None or found == ():
                return found
            pi, ni, nlp = found  # type: ignore[misc]
            continue
        elif c == _LB:
            if ni == slen or (nlp and s[ni] == _DOT):
                return None
            outcome, after = _bracket(pat, pi, s[ni])
            if outcome is None:
                return None
            if not outcome and s[ni] != _LB:  # unterminated: "[" matches itself
                return None
            pi = after
        elif ni == slen or s[ni] != c:
            return None
        nlp = False
        ni += 1
    return () if ni == slen else None


def _collating_symbol(pat: bytes, pi: int) -> tuple[int | None, int]:
    """``[.c.]`` starting at the ``.`` (pi): (the byte or None for "no match", index after)."""
    start, count = pi, 0
    while True:
        pi += 1
        c = pat[pi] if pi < len(pat) else 0
        if c == _DOT and pat[pi + 1:pi + 2] == b"]":
            pi += 2
            break
        if c == 0:
            return None, pi
        count += 1
    return (pat[start + 1] if count == 1 else None), pi


def _bracket(pat: bytes, pi: int, fn: int) -> tuple[bool | None, int]:
    """A ``[...]`` (pi just after ``[``) against byte ``fn``: (True, index after) if it matches,
    (None, _) for no match, (False, pi) if unterminated (then ``[`` is an ordinary character)."""

    def at(i: int) -> int:
        return pat[i] if i < len(pat) else 0

    p_init = pi
    negate = at(pi) in b"!^"
    if negate:
        pi += 1
    c = at(pi)
    pi += 1
    matched = False
    while True:
        normal = ranged = False
        if c == _BS:
            if at(pi) == 0:
                return None, pi
            c = at(pi)
            pi += 1
            normal = True
        elif c == _LB and at(pi) == _COLON:
            start, cls = pi, bytearray()
            while True:
                if len(cls) == _CHARCLASS_NAME_MAX:
                    return None, pi
                pi += 1
                c = at(pi)
                if c == _COLON and at(pi + 1) == _RB:
                    pi += 2
                    break
                if not 0x61 <= c < 0x7A:  # glibc accepts a-y only
                    pi, c, normal = start, _LB, True
                    break
                cls.append(c)
            if not normal:
                members = _CLASSES.get(bytes(cls))
                if members is None:
                    return None, pi
                if fn in members:
                    matched = True
                    break
                c = at(pi)
                pi += 1
        elif c == _LB and at(pi) == _EQ:
            start = pi
            if at(pi + 1) == 0 or at(pi + 2) != _EQ or at(pi + 3) != _RB:
                c, normal = _LB, True
            else:
                pi += 4
                if fn == pat[start + 1]:
                    matched = True
                    break
                c = at(pi)
                pi += 1
        elif c == 0:
            return False, p_init
        elif c == _LB and at(pi) == _DOT:
            symbol, pi = _collating_symbol(pat, pi)
            if symbol is None:
                return None, pi
            is_range = at(pi) == _DASH and at(pi + 1) != 0
            if not is_range and fn == symbol:
                matched = True
                break
            cold, ranged = symbol, True
            c = at(pi)
            pi += 1
        else:
            normal = True
        if normal:
            is_range = at(pi) == _DASH and at(pi + 1) not in (0, _RB)
            if not is_range and c == fn:
                matched = True
                break
            cold, ranged = c, True
            c = at(pi)
            pi += 1
        if ranged and c == _DASH and at(pi) != _RB:
            cend = at(pi)
            pi += 1
            if cend == _LB and at(pi) == _DOT:
                symbol, pi = _collating_symbol(pat, pi)
                if symbol is None:
                    return None, pi
                cend = symbol
            else:
                if cend == _BS:
                    cend = at(pi)
                    pi += 1
                if cend == 0:
                    return None, pi
            if cold <= fn <= cend:
                matched = True
                break
            c = at(pi)
            pi += 1
        if c == _RB:
            break
    if not matched:
        return (True, pi) if negate else (None, pi)
    # Skip the rest of the bracket that already matched.
    while True:
        c = at(pi)
        pi += 1
        if c == _RB:
            break
        if c == 0:
            return False, p_init
        if c == _BS:
            if at(pi) == 0:
                return None, pi
            pi += 1
        elif c == _LB and at(pi) == _COLON:
            start, count = pi, 0
            while True:
                pi += 1
                c = at(pi)
                count += 1
                if count == _CHARCLASS_NAME_MAX:
                    return None, pi
                if c == _COLON and at(pi + 1) == _RB:
                    break
                if not 0x61 <= c < 0x7A:
                    pi = start - 2
                    break
            pi += 2
        elif c == _LB and at(pi) == _EQ:
            if at(pi + 1) == 0 or at(pi + 2) != _EQ or at(pi + 3) != _RB:
                return None, pi
            pi += 4
        elif c == _LB and at(pi) == _DOT:
            while True:
                pi += 1
                c = at(pi)
                if c == 0:
                    return None, pi
                if c == _DOT and at(pi + 1) == _RB:
                    break
            pi += 2
    return (None, pi) if negate else (True, pi)


# --- a tree on the local file system -----------------------------------------------------------

def resolve_links(path: bytes, entry: Callable[[bytes], tuple[str, bytes] | None],
                  absolute: Callable[[bytes], list[bytes] | None]) -> bytes | None:
    """Follow the symbolic links along ``path`` like ``realpath()``, inside a tree.

    ``entry(p)`` gives ``(kind, link target)`` of the tree path ``p`` (``b"/a/b"``) or ``None``
    when it does not exist; ``absolute(target)`` maps an absolute link target to components
    inside the tree, or ``None`` when it leads outside. Returns the real directory path
    (``b"/"`` for the root), or ``None`` if the path does not lead to a directory, leaves the
    tree, or loops.
    """
    pending = [c for c in path.split(b"/") if c][::-1]
    real: list[bytes] = []
    links = 0
    while pending:
        name = pending.pop()
        if name == b".":
            continue
        if name == b"..":
            if not real:
                return None
            real.pop()
            continue
        found = entry(b"/" + b"/".join([*real, name]))
        if found is None:
            return None
        kind, target = found
        if kind == "symlink":
            links += 1
            if links > _MAX_SYMLINKS:
                return None
            if target.startswith(b"/"):
                inside = absolute(target)
                if inside is None:
                    return None
                real = []
                pending.extend(reversed(inside))
            else:
                pending.extend(c for c in reversed(target.split(b"/")) if c)
        elif kind == "dir":
            real.append(name)
        else:
            return None
    return b"/" + b"/".join(real)


class LocalDirtabTree:
    """A :class:`DirtabTree` over a local directory ``root`` (e.g. the union mount).

    Absolute symlink targets are taken as host paths, except that those inside ``mount_point``
    (e.g. ``b"/cvmfs/repo.example.org"``, where the tree would be mounted) map into ``root``.
    Resolution never leaves ``root``: a ``..`` above it or a target outside it gives None (stock
    refuses such paths too, except the absurd case of re-entering the union by its own name).
    """

    def __init__(self, root: str | os.PathLike[str] | bytes,
                 *, mount_point: str | bytes | None = None) -> None:
        self.root = os.fsencode(os.path.realpath(os.fsdecode(root))).rstrip(b"/")
        self.mount_point: bytes | None = None
        if mount_point is not None:
            self.mount_point = os.fsencode(mount_point).rstrip(b"/")

    def _host(self, path: bytes) -> bytes:
        inner = path.strip(b"/")
        return self.root + b"/" + inner if inner else self.root or b"/"

    def listdir(self, path: bytes) -> list[tuple[bytes, str]]:
        entries = []
        try:
            with os.scandir(self._host(path)) as it:
                for entry in it:
                    if entry.is_symlink():
                        kind = "symlink"
                    elif entry.is_dir(follow_symlinks=False):
                        kind = "dir"
                    elif entry.is_file(follow_symlinks=False):
                        kind = "file"
                    else:
                        kind = "other"
                    entries.append((os.fsencode(entry.name), kind))
        except OSError:
            return []  # stock's glob ignores directories it cannot read
        return sorted(entries)

    def _inside(self, target: bytes) -> list[bytes] | None:
        """Components (relative to root) of an absolute link target, or None if outside."""
        for base in (self.mount_point, self.root):
            if base is None:
                continue
            if target == base or target.startswith(base + b"/"):
                return [c for c in target[len(base):].split(b"/") if c]
        host = os.fsencode(os.path.realpath(os.fsdecode(target)))
        if host == self.root or host.startswith(self.root + b"/"):
            return [c for c in host[len(self.root):].split(b"/") if c]
        return None

    def resolve_dir(self, path: bytes) -> bytes | None:
        def entry(p: bytes) -> tuple[str, bytes] | None:
            host = self.root + p
            try:
                mode = os.lstat(host).st_mode
                if stat.S_ISLNK(mode):
                    return "symlink", os.readlink(host)
            except OSError:
                return None
            return ("dir" if stat.S_ISDIR(mode) else "file"), b""

        return resolve_links(path, entry, self._inside)
