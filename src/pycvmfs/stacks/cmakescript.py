"""Read the CMake that toolchain files (lcgcmake's ``heptools-*.cmake``) are written in.

Only that CMake is understood; it is read, never run:

- ``set(var value...)`` (a list is joined with ``;``; ``CACHE ...``/``PARENT_SCOPE`` ignored),
  ``unset(var)``, ``list(APPEND var ...)``, and ``${var}`` expansion, nested too; the caller
  gives the starting variables.
- ``include(name)``: ``name.cmake`` (or ``name``) next to the including file, then in
  ``search_path``; a missing one is a warning.
- ``if/elseif/else/endif`` with ``NOT``/``AND``/``OR``/parentheses, ``STREQUAL``, ``MATCHES``,
  numeric and ``VERSION_`` comparisons, ``DEFINED`` and plain truth values, evaluated against the
  variables. A condition that cannot be evaluated (an undefined variable, ``EXISTS``...) is a
  warning and its branch is taken as false.
- Comments (``#`` and ``#[[ ]]``), calls spread over lines, quoted arguments (also inside
  one: ``author="A. Name"``). Commands that neither this reader nor
  :meth:`CMakeReader.extra_command` (a subclass's own commands) handles are ignored with one
  warning per command and file; ``function``/``macro`` bodies are skipped and
  ``foreach``/``while`` bodies skipped with a warning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import StackError

__all__ = ["CMakeReader"]

_TOKENS = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#\[(?P<ceq>=*)\[.*?\](?P=ceq)\]|\#[^\n]*)
  | (?P<quoted>"(?:\\.|[^"\\])*")
  | (?P<open>\()
  | (?P<close>\))
  | (?P<word>[^\s()#"](?:[^\s()#"]|"(?:\\.|[^"\\])*")*)
""", re.VERBOSE | re.DOTALL)
_EMBEDDED_QUOTE = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_VAR_REF = re.compile(r"\$\{([^${}]*)\}")
_ENV_REF = re.compile(r"\$ENV\{([^${}]*)\}")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_FALSE = {"", "0", "OFF", "NO", "FALSE", "N", "IGNORE", "NOTFOUND"}
_TRUE = {"1", "ON", "YES", "TRUE", "Y"}
_SILENT = {"cmake_minimum_required", "cmake_policy", "mark_as_advanced", "message"}
_SKIPPED_BLOCKS = {"function": "endfunction", "macro": "endmacro", "foreach": "endforeach",
                   "while": "endwhile"}


@dataclass(frozen=True)
class _Arg:
    text: str
    quoted: bool = False
    paren: bool = False            # a bare "(" or ")" inside the call (if conditions)


@dataclass(frozen=True)
class _Call:
    name: str                      # lower case (CMake command names ignore case)
    args: tuple[_Arg, ...]
    line: int


def _parse(text: str, shown: str) -> list[_Call]:
    """The command invocations of a CMake file, arguments not yet expanded."""
    tokens: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    for m in _TOKENS.finditer(text):
        if m.start() != pos:
            break
        pos = m.end()
        kind = m.lastgroup if m.lastgroup != "ceq" else "comment"
        if kind not in ("space", "comment"):
            tokens.append((kind, m.group(), line))
        line += m.group().count("\n")
    if pos != len(text):
        raise StackError(f"{shown}:{line}: cannot read CMake near {text[pos:pos + 20]!r} "
                         "(an unterminated quote?)")
    calls: list[_Call] = []
    i = 0
    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind != "word" or i + 1 >= len(tokens) or tokens[i + 1][0] != "open":
            raise StackError(f"{shown}:{line}: expected a command call name(...), "
                             f"found {value!r}")
        args: list[_Arg] = []
        depth, j = 1, i + 2
        while j < len(tokens) and depth:
            k, v, _ = tokens[j]
            if k == "open":
                depth += 1
                args.append(_Arg("(", paren=True))
            elif k == "close":
                depth -= 1
                if depth:
                    args.append(_Arg(")", paren=True))
            elif k == "quoted":
                args.append(_Arg(_ESCAPE.sub(_unescape, v[1:-1]), quoted=True))
            else:                  # key="a b": the quotes only keep the spaces together
                args.append(_Arg(_EMBEDDED_QUOTE.sub(lambda q: _ESCAPE.sub(_unescape, q[1]), v)))
            j += 1
        if depth:
            raise StackError(f"{shown}:{line}: {value}( is never closed")
        calls.append(_Call(value.lower(), tuple(args), line))
        i = j
    return calls


def _unescape(m: re.Match[str]) -> str:
    return {"n": "\n", "t": "\t", "r": "\r"}.get(m[1], m[1])


class _Unknown(Exception):
    """A condition this reader cannot evaluate."""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _Unknown(f"{text!r} is not a number") from None


def _version_key(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        raise _Unknown(f"{text!r} is not a version") from None


_BINARY = {
    "STREQUAL": lambda a, b: a == b,
    "STRLESS": lambda a, b: a < b,
    "STRGREATER": lambda a, b: a > b,
    "EQUAL": lambda a, b: _number(a) == _number(b),
    "LESS": lambda a, b: _number(a) < _number(b),
    "GREATER": lambda a, b: _number(a) > _number(b),
    "LESS_EQUAL": lambda a, b: _number(a) <= _number(b),
    "GREATER_EQUAL": lambda a, b: _number(a) >= _number(b),
    "VERSION_EQUAL": lambda a, b: _version_key(a) == _version_key(b),
    "VERSION_LESS": lambda a, b: _version_key(a) < _version_key(b),
    "VERSION_GREATER": lambda a, b: _version_key(a) > _version_key(b),
    "VERSION_LESS_EQUAL": lambda a, b: _version_key(a) <= _version_key(b),
    "VERSION_GREATER_EQUAL": lambda a, b: _version_key(a) >= _version_key(b),
}
_UNARY_UNKNOWN = {"EXISTS", "COMMAND", "POLICY", "TARGET", "TEST", "IS_DIRECTORY",
                  "IS_ABSOLUTE", "IS_SYMLINK"}


class _Condition:
    """Recursive descent over an ``if()``'s expanded arguments (OR < AND < NOT < binary)."""

    def __init__(self, args: list[_Arg], variables: Mapping[str, str]) -> None:
        self.args = args
        self.vars = variables
        self.pos = 0

    def evaluate(self) -> bool:
        if not self.args:
            raise _Unknown("empty condition")
        value = self._or()
        if self.pos != len(self.args):
            raise _Unknown(f"unexpected {self.args[self.pos].text!r}")
        return value

    def _peek(self) -> _Arg | None:
        return self.args[self.pos] if self.pos < len(self.args) else None

    def _keyword(self, *words: str) -> str | None:
        arg = self._peek()
        if arg is not None and not arg.quoted and not arg.paren and arg.text in words:
            self.pos += 1
            return arg.text
        return None

    def _take(self) -> _Arg:
        arg = self._peek()
        if arg is None or arg.paren:
            raise _Unknown("incomplete condition")
        self.pos += 1
        return arg

    def _or(self) -> bool:
        value = self._and()
        while self._keyword("OR"):
            value = self._and() or value
        return value

    def _and(self) -> bool:
        value = self._not()
        while self._keyword("AND"):
            value = self._not() and value
        return value

    def _not(self) -> bool:
        if self._keyword("NOT"):
            return not self._not()
        return self._primary()

    def _value(self, arg: _Arg) -> str:
        return arg.text if arg.quoted else self.vars.get(arg.text, arg.text)

    def _primary(self) -> bool:
        arg = self._peek()
        if arg is not None and arg.paren and arg.text == "(":
            self.pos += 1
            value = self._or()
            close = self._peek()
            if close is None or not close.paren or close.text != ")":
                raise _Unknown("unbalanced parentheses")
            self.pos += 1
            return value
        if self._keyword("DEFINED"):
            return self._take().text in self.vars
        word = self._keyword(*_UNARY_UNKNOWN)
        if word:
            raise _Unknown(f"{word} tests the build machine")
        left = self._take()
        op = self._keyword(*_BINARY, "MATCHES", "IN_LIST")
        if op is None:
            return self._truth(left)
        right = self._take()
        a, b = self._value(left), self._value(right)
        if op == "MATCHES":
            try:
                return re.search(b, a) is not None
            except re.error as e:
                raise _Unknown(f"regular expression {b!r}: {e}") from None
        if op == "IN_LIST":
            if right.text not in self.vars:
                raise _Unknown(f"list variable {right.text} is not defined")
            return a in self.vars[right.text].split(";")
        return bool(_BINARY[op](a, b))

    def _truth(self, arg: _Arg) -> bool:
        text = arg.text.upper()
        if text in _TRUE or text in _FALSE or text.endswith("-NOTFOUND"):
            return text in _TRUE
        try:
            return float(arg.text) != 0
        except ValueError:
            pass
        if arg.quoted or arg.text not in self.vars:
            raise _Unknown(f"variable {arg.text} is not defined")
        value = self.vars[arg.text].upper()
        return not (value in _FALSE or value.endswith("-NOTFOUND"))



@dataclass
class _Frame:
    """One open if(): whether its parent runs, a branch was taken, the current one runs."""

    parent: bool
    taken: bool
    active: bool
    line: int


@dataclass
class CMakeReader:
    """Reads CMake files into :attr:`variables`, following includes and ``if()`` branches;
    :meth:`extra_command` is where a subclass handles its own commands."""

    search_path: Sequence[Path]
    root_dir: Path
    variables: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reading: list[Path] = field(default_factory=list)
    _noted: set[tuple[str, str]] = field(default_factory=set)

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root_dir))
        except ValueError:
            return str(path)

    def warn_once(self, shown: str, key: str, message: str) -> None:
        if (shown, key) not in self._noted:
            self._noted.add((shown, key))
            self.warnings.append(message)

    def expand(self, args: Sequence[_Arg], where: str) -> list[_Arg]:
        """``${var}`` expanded; an unquoted argument split on ``;`` (a CMake list)."""
        def lookup(m: re.Match[str]) -> str:
            if m[1] not in self.variables:
                self.warn_once(where.split(":")[0], "${" + m[1] + "}",
                               f"{where}: ${{{m[1]}}} is not defined; taken as empty")
            return self.variables.get(m[1], "")

        out: list[_Arg] = []
        for arg in args:
            if arg.paren:
                out.append(arg)
                continue
            text = _ENV_REF.sub("", arg.text)
            while True:
                expanded = _VAR_REF.sub(lookup, text)
                if expanded == text:
                    break
                text = expanded
            if arg.quoted:
                out.append(_Arg(text, quoted=True))
            else:
                out.extend(_Arg(part) for part in text.split(";") if part)
        return out

    def read(self, path: Path) -> None:
        path = Path(os.path.abspath(path))
        if path in self.reading:
            chain = [*self.reading[self.reading.index(path):], path]
            raise StackError("include cycle: " + " -> ".join(self.shown(p) for p in chain))
        shown = self.shown(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StackError(f"cannot read heptools file {path}: {e}") from e
        calls = _parse(text, shown)
        saved = {k: self.variables.get(k) for k in ("CMAKE_CURRENT_LIST_DIR",
                                                   "CMAKE_CURRENT_LIST_FILE")}
        self.variables.update(CMAKE_CURRENT_LIST_DIR=str(path.parent),
                              CMAKE_CURRENT_LIST_FILE=str(path))
        self.reading.append(path)
        try:
            self.run(calls, shown, path)
        finally:
            self.reading.pop()
            for key, value in saved.items():
                if value is None:
                    self.variables.pop(key, None)
                else:
                    self.variables[key] = value

    def run(self, calls: list[_Call], shown: str, path: Path) -> None:
        frames: list[_Frame] = []
        skipping: list[str] = []             # the end commands of the blocks being skipped
        for call in calls:
            where = f"{shown}:{call.line}"
            if skipping:
                if call.name == skipping[-1]:
                    skipping.pop()
                elif call.name in _SKIPPED_BLOCKS:
                    skipping.append(_SKIPPED_BLOCKS[call.name])
                continue
            active = frames[-1].active if frames else True
            if call.name == "if":
                ok = active and self.condition(call, where)
                frames.append(_Frame(parent=active, taken=ok, active=ok, line=call.line))
            elif call.name in ("elseif", "else", "endif"):
                if not frames:
                    raise StackError(f"{where}: {call.name}() without if()")
                top = frames[-1]
                if call.name == "endif":
                    frames.pop()
                elif call.name == "else":
                    top.active = top.parent and not top.taken
                    top.taken = True
                else:
                    ok = top.parent and not top.taken and self.condition(call, where)
                    top.active, top.taken = ok, top.taken or ok
            elif not active:
                continue
            elif call.name in _SKIPPED_BLOCKS:
                skipping.append(_SKIPPED_BLOCKS[call.name])
                if call.name in ("foreach", "while"):
                    self.warnings.append(f"{where}: {call.name}() loops are not understood; "
                                         "its body is skipped")
            else:
                self.command(call, where, shown, path)
        if frames:
            raise StackError(f"{shown}:{frames[-1].line}: if() without endif()")
        if skipping:
            raise StackError(f"{shown}: a block is never closed by {skipping[-1]}()")

    def condition(self, call: _Call, where: str) -> bool:
        args = self.expand(call.args, where)
        try:
            return _Condition(args, self.variables).evaluate()
        except _Unknown as e:
            text = " ".join(f'"{a.text}"' if a.quoted else a.text for a in call.args)
            self.warnings.append(f"{where}: cannot evaluate {call.name}({text}): {e}; "
                                 "branch taken as false")
            return False

    def command(self, call: _Call, where: str, shown: str, path: Path) -> None:
        name = call.name
        args = [a.text for a in self.expand(call.args, where)]
        if name == "set" and args:
            values = args[1:]
            if "CACHE" in values:
                values = values[:values.index("CACHE")]
            if values[-1:] == ["PARENT_SCOPE"]:
                values = values[:-1]
            if values:
                self.variables[args[0]] = ";".join(values)
            else:
                self.variables.pop(args[0], None)
        elif name == "unset" and args:
            self.variables.pop(args[0], None)
        elif name == "list" and len(args) >= 2 and args[0] == "APPEND":
            old = self.variables.get(args[1], "")
            self.variables[args[1]] = ";".join([p for p in old.split(";") if p] + args[2:])
        elif name == "include" and args:
            self.include(args[0], "OPTIONAL" in args[1:], where, path)
        elif self.extra_command(name, args, where):
            pass
        elif name == "message" and args[:1] == ["FATAL_ERROR"]:
            self.warnings.append(f"{where}: FATAL_ERROR message: {' '.join(args[1:])}")
        elif name not in _SILENT:
            self.warn_once(shown, name, f"{where}: command {name}() is not understood; "
                           "ignored (further calls in this file too)")

    def extra_command(self, name: str, args: list[str], where: str) -> bool:
        """Handle command ``name`` (lower case; ``args`` expanded) if it is the subclass's own;
        ``False`` leaves it to the reader (which ignores it with a warning)."""
        return False

    def include(self, name: str, optional: bool, where: str, path: Path) -> None:
        names = [name] if name.endswith(".cmake") else [f"{name}.cmake", name]
        dirs = [Path()] if Path(name).is_absolute() else [path.parent, *self.search_path]
        for folder in dirs:
            for candidate in names:
                if (folder / candidate).is_file():
                    self.read(folder / candidate)
                    return
        if not optional:
            self.warnings.append(f"{where}: include({name}) not found next to the file or in "
                                 "the search path; skipped")
