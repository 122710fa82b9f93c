"""Reads CernVM-FS configuration files: the subset of ``sh`` they are written in."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ConfigError

__all__ = ["ConfigValue", "parse_config_file"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ASSIGNMENT = re.compile(rf"(?:(?:export|readonly)\s+)?({_NAME})=")
_EXPORT_ONLY = re.compile(rf"(?:export|readonly)(?:\s+{_NAME})+")
_NAME_AT = re.compile(_NAME)
_IF_TEST = re.compile(r"if\s+\[\s(.*)\s\]\s*;\s*then")


@dataclass(frozen=True)
class ConfigValue:
    """One variable's final value and where it was set."""

    value: str
    source: str
    line: int


class _LineParser:
    """Evaluates the right-hand side of one ``NAME=VALUE`` line like ``sh`` would, for the
    subset of shell that configuration files use: quotes, backslashes, ``$VAR``, ``${VAR}`` and
    ``${VAR:-word}`` / ``${VAR-word}``. Anything else is rejected with the file and line."""

    def __init__(self, text: str, pos: int, lookup: Callable[[str], str | None],
                 where: str) -> None:
        self.s, self.i, self.lookup, self.where = text, pos, lookup, where

    def fail(self, why: str) -> ConfigError:
        return ConfigError(f"{self.where}: {why}: {self.s.strip()!r}")

    def value(self) -> str:
        word = self.word()
        rest = self.s[self.i:].strip()
        if rest and not rest.startswith("#"):
            raise self.fail("unexpected text after the value (one assignment per line)")
        return word

    def words(self) -> list[str]:
        """Every word up to the end of the text (a ``[ ... ]`` test's operands)."""
        found = []
        while True:
            while self.i < len(self.s) and self.s[self.i] in " \t":
                self.i += 1
            if self.i >= len(self.s):
                return found
            found.append(self.word())

    def word(self) -> str:
        """One shell word from the current position, up to a blank."""
        s, out = self.s, []
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                break
            if c in ";|&<>()`":
                raise self.fail(f"unsupported shell syntax {c!r}")
            if c == "'":
                end = s.find("'", self.i + 1)
                if end < 0:
                    raise self.fail("unterminated single quote")
                out.append(s[self.i + 1:end])
                self.i = end + 1
            elif c == '"':
                out.append(self._double_quoted())
            elif c == "\\":
                if self.i + 1 >= len(s):
                    raise self.fail("line continuation is not supported")
                out.append(s[self.i + 1])
                self.i += 2
            elif c == "$":
                out.append(self._expansion())
            else:
                out.append(c)
                self.i += 1
        return "".join(out)

    def _double_quoted(self) -> str:
        s, out = self.s, []
        self.i += 1
        while self.i < len(s):
            c = s[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == "`":
                raise self.fail("command substitution is not supported")
            if c == "\\" and self.i + 1 < len(s) and s[self.i + 1] in '$`"\\':
                out.append(s[self.i + 1])
                self.i += 2
            elif c == "$":
                out.append(self._expansion())
            else:
                out.append(c)
                self.i += 1
        raise self.fail("unterminated double quote")

    def _expansion(self) -> str:
        s = self.s
        self.i += 1  # the '$'
        if self.i < len(s) and s[self.i] == "(":
            raise self.fail("command substitution is not supported")
        if self.i < len(s) and s[self.i] == "{":
            end = s.find("}", self.i)
            if end < 0:
                raise self.fail("unterminated ${")
            body = s[self.i + 1:end]
            self.i = end + 1
            m = _NAME_AT.match(body)
            if not m:
                raise self.fail(f"bad substitution ${{{body}}}")
            name, op = m.group(), body[m.end():]
            value = self.lookup(name)
            if op == "":
                return value or ""
            if op.startswith(":-"):
                return value if value else op[2:]
            if op.startswith("-"):
                return value if value is not None else op[1:]
            raise self.fail(f"unsupported substitution ${{{body}}}")
        m = _NAME_AT.match(s, self.i)
        if not m:
            return "$"  # a lone '$' is literal, as in sh
        self.i = m.end()
        return self.lookup(m.group()) or ""


class _Branches:
    """``if [ A = B ]; then`` / ``else`` / ``fi`` blocks (as the stock ``default.conf`` guards
    its read-only settings): ``=``, ``==``, ``!=``, ``-z`` and ``-n`` tests, nested."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stack: list[tuple[bool, bool]] = []  # (this branch taken, enclosing one active)

    @property
    def active(self) -> bool:
        return all(taken for taken, _outer in self.stack)

    def control(self, line: str, where: str, lookup: Callable[[str], str | None]) -> bool:
        """Whether ``line`` was an ``if``/``else``/``fi`` line (and apply it)."""
        if line in ("fi", "else"):
            if not self.stack:
                raise ConfigError(f"{where}: {line!r} without 'if'")
            taken, outer = self.stack.pop()
            if line == "else":
                self.stack.append((outer and not taken, outer))
            return True
        m = _IF_TEST.fullmatch(line)
        if m is None:
            if line.split(None, 1)[0] in ("if", "then", "elif", "case", "for", "while"):
                raise ConfigError(f"{where}: unsupported shell syntax (only 'if [ A = B ]; "
                                  f"then' ... 'else' ... 'fi'): {line!r}")
            return False
        test = _LineParser(m.group(1), 0, lookup, where).words()
        if len(test) == 3 and test[1] in ("=", "==", "!="):
            taken = (test[0] == test[2]) != (test[1] == "!=")
        elif len(test) == 2 and test[0] in ("-z", "-n"):
            taken = (test[1] == "") == (test[0] == "-z")
        else:
            raise ConfigError(f"{where}: unsupported test (A = B, A != B, -z A, -n A): {line!r}")
        outer = self.active
        self.stack.append((outer and taken, outer))
        return True

    def end(self) -> None:
        if self.stack:
            raise ConfigError(f"{self.path}: 'if' without 'fi'")


def parse_config_file(path: Path, values: dict[str, ConfigValue],
                      environ: Mapping[str, str]) -> None:
    """Apply the assignments of one file to ``values`` (earlier values visible to ``$VAR``)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e

    def lookup(name: str) -> str | None:
        if name in values:
            return values[name].value
        return environ.get(name)

    branches = _Branches(str(path))
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or _EXPORT_ONLY.fullmatch(line):
            continue
        where = f"{path}:{lineno}"
        if branches.control(line, where, lookup) or not branches.active:
            continue
        m = _ASSIGNMENT.match(line)
        if not m:
            raise ConfigError(f"{where}: not a NAME=VALUE assignment: {line!r}")
        value = _LineParser(line, m.end(), lookup, where).value()
        values[m.group(1)] = ConfigValue(value, str(path), lineno)
    branches.end()
