"""The ``setup.sh`` (bash and zsh) and ``setup.csh`` (csh and tcsh) of a view.

``setup.sh``, meant to be sourced:

* finds its own directory at run time (bash: ``BASH_SOURCE``; zsh: ``${(%):-%x}``, read inside an
  ``eval`` guarded by ``ZSH_VERSION`` so bash never parses it), resolves it with ``cd -P`` and,
  when it ends in the view path, strips as many components as the view path has to get the
  repository root, so the view works wherever the repository is mounted; otherwise (another
  shell, ``eval "$(cat setup.sh)"``, a copy of the script elsewhere) it falls back to the fixed
  ``<mount_root>``;
* derives every path from that root: ``LCG_VIEW``, the view directories it prepends to ``PATH``,
  ``LD_LIBRARY_PATH``, ``PYTHONPATH``, ``MANPATH``, ``CMAKE_PREFIX_PATH``, ``PKG_CONFIG_PATH``,
  ``C_INCLUDE_PATH``/``CPLUS_INCLUDE_PATH`` and ``ACLOCAL_PATH`` (only directories the view has),
  and the ``<NAME>_HOME`` variables of the packages;
* is safe under ``set -eu`` (every variable read with a default, no command that can fail),
  idempotent (a directory already in a variable is not added again), never leaves an empty
  element (an empty ``PATH`` element means the current directory), and leaves no helper
  variable or function behind; the one exception is ``MANPATH``: when it was unset or empty it
  becomes ``<view>/man:<view>/share/man:``, the trailing ``:`` telling ``man`` to search its
  default places too (otherwise the view would hide the system's manual pages);
* honours, when set to ``1`` before sourcing, ``LCG_VIEW_NO_PYTHONPATH`` (leave ``PYTHONPATH``
  alone, e.g. in a virtualenv) and ``LCG_VIEW_NO_LD_LIBRARY_PATH`` (the binaries have RPATHs).

The variables the scripts set themselves (:data:`RESERVED_VARIABLES`, anything starting with
one of :data:`RESERVED_PREFIXES`, and every ``<NAME>_HOME``) are not for a package's
``view_env``: :func:`reserved_variable` says why a name is taken.

``setup.csh`` does the same for csh/tcsh, which cannot find the path of a sourced script: its
paths are the fixed ``<mount_root>/<view_rel>``.

The ``#   Generated: <time>`` comment is the time the caller passes (the newest build time),
so the scripts of an unchanged view are byte-identical. Values written into the scripts are
checked so that no quoting can break: repository-relative paths, names and platforms use a
plain character set, the mount root may hold spaces but no quote, ``$``, ``!`` or glob character.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pycvmfs.errors import StackError

__all__ = ["RESERVED_PREFIXES", "RESERVED_VARIABLES", "render_setup_csh", "render_setup_sh",
           "reserved_variable", "search_paths"]

_REL_PART = r"[A-Za-z0-9_+@%=,-][A-Za-z0-9._+@%=,-]*"
_REL = re.compile(rf"^{_REL_PART}(?:/{_REL_PART})*$")
_WORD = re.compile(r"^[A-Za-z0-9._+-]+$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MOUNT_FORBIDDEN = re.compile(r"['\"`$!*?\[\]{}\\\x00-\x1f\x7f]")
_SITE_PACKAGES = re.compile(r"^lib(?:64)?/python\d+\.\d+/site-packages$")

#: variable → view directories prepended to it, in the order they end up in
_LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PATH", ("bin", "scripts")),
    ("LD_LIBRARY_PATH", ("lib", "lib64")),
    ("PYTHONPATH", ("lib", "python")),            # + lib/pythonX.Y/site-packages found in dirs
    ("MANPATH", ("man", "share/man")),
    ("CMAKE_PREFIX_PATH", ("",)),                 # the view root itself
    ("PKG_CONFIG_PATH", ("lib/pkgconfig", "lib64/pkgconfig", "share/pkgconfig")),
    ("C_INCLUDE_PATH", ("include",)),
    ("CPLUS_INCLUDE_PATH", ("include",)),
    ("ACLOCAL_PATH", ("share/aclocal",)),
)
#: variable → the environment variable that, set to 1, leaves it alone
_OPT_OUT = {"PYTHONPATH": "LCG_VIEW_NO_PYTHONPATH",
            "LD_LIBRARY_PATH": "LCG_VIEW_NO_LD_LIBRARY_PATH"}
#: the search-path variable that keeps "and the defaults" (a trailing ':') when it was empty
_DEFAULTS_VAR = "MANPATH"

#: variables the setup scripts set: a package's ``view_env`` must not name them
RESERVED_VARIABLES: frozenset[str] = frozenset(var for var, _ in _LAYOUT)
#: prefixes of the scripts' own variables (``LCG_VIEW``, ``LCG_VIEW_NO_*``, helpers)
RESERVED_PREFIXES: tuple[str, ...] = ("LCG_", "_lcg_")
_HOME_SUFFIX = "_HOME"


def reserved_variable(var: str) -> str | None:
    """Why the setup scripts keep ``var`` for themselves (a phrase), or None when it is free."""
    if var in RESERVED_VARIABLES:
        return "a search path the setup scripts extend"
    for prefix in RESERVED_PREFIXES:
        if var.startswith(prefix):
            return f"the prefix {prefix} is kept for the setup scripts' own variables"
    if var.endswith(_HOME_SUFFIX):
        return f"the setup scripts generate the <NAME>{_HOME_SUFFIX} variables"
    return None


def search_paths(dirs: Iterable[str], *, pythonpath: bool) -> list[tuple[str, list[str]]]:
    """(variable, view directories in final order) for the directories the view has;
    variables without any directory are left out."""
    present = {d.strip("/") for d in dirs}
    out = []
    for var, wanted in _LAYOUT:
        if var == "PYTHONPATH" and not pythonpath:
            continue
        chosen = [d for d in wanted if d == "" or d in present]
        if var == "PYTHONPATH":
            chosen += sorted(d for d in present if _SITE_PACKAGES.match(d))
        if chosen:
            out.append((var, chosen))
    return out


def _checked(*, view_rel: str, mount_root: str, name: str, platform: str, generated: str,
             dirs: Iterable[str], homes: Mapping[str, str]) -> tuple[str, str, list[str]]:
    """The normalised view path and mount root and the directory list, or a StackError naming
    the value that cannot be written safely."""
    view_rel = view_rel.strip("/")
    if not _REL.match(view_rel) or any(p in (".", "..") for p in view_rel.split("/")):
        raise StackError(f"setup script: view path {view_rel!r} is not a plain relative path")
    if not mount_root.startswith("/") or _MOUNT_FORBIDDEN.search(mount_root):
        raise StackError(f"setup script of {view_rel}: mount root {mount_root!r} must be an "
                         "absolute path without quotes, '$', '!', '\\', glob characters or "
                         "control characters")
    mount_root = mount_root.rstrip("/")
    for what, value in (("release name", name), ("platform", platform)):
        if not _WORD.match(value):
            raise StackError(f"setup script of {view_rel}: {what} {value!r} holds characters "
                             "a setup script cannot quote")
    if "\n" in generated or "\r" in generated:
        raise StackError(f"setup script of {view_rel}: the generation time holds a line break")
    dir_list = [d.strip("/") for d in dirs]
    for d in dir_list:
        if d and not _REL.match(d):
            raise StackError(f"setup script of {view_rel}: view directory {d!r} holds "
                             "characters a setup script cannot quote")
    for var, rel in homes.items():
        if not _VAR.match(var):
            raise StackError(f"setup script of {view_rel}: {var!r} is not a variable name")
        if not _REL.match(rel.strip("/")):
            raise StackError(f"setup script of {view_rel}: prefix {rel!r} of {var} is not a "
                             "plain path relative to the repository root")
    return view_rel, mount_root, dir_list


def _header(comment: str, name: str, platform: str, generated: str, extra: list[str]) -> list[str]:
    return [
        f"# Environment of the view {name} on {platform} ({comment}; source it).",
        f"#   Generated: {generated}",
        *extra,
        "",
    ]


def render_setup_sh(*, view_rel: str, mount_root: str, name: str, platform: str, generated: str,
                    dirs: Iterable[str], pythonpath: bool, homes: Mapping[str, str]) -> str:
    """The ``setup.sh`` of a view (see the module docstring)."""
    view_rel, mount_root, dir_list = _checked(
        view_rel=view_rel, mount_root=mount_root, name=name, platform=platform,
        generated=generated, dirs=dirs, homes=homes)
    strip = "/*" * len(view_rel.split("/"))
    lines = _header("bash and zsh", name, platform, generated, [
        "# Before sourcing, LCG_VIEW_NO_PYTHONPATH=1 leaves PYTHONPATH alone (virtualenvs) and",
        "# LCG_VIEW_NO_LD_LIBRARY_PATH=1 leaves LD_LIBRARY_PATH alone (binaries have RPATHs).",
    ])
    lines += [
        "_lcg_src=",
        'if [ -n "${ZSH_VERSION:-}" ]; then',
        "    eval '_lcg_src=${(%):-%x}'",
        'elif [ -n "${BASH_VERSION:-}" ]; then',
        "    eval '_lcg_src=${BASH_SOURCE[0]:-}'",
        "fi",
        "_lcg_found=0",
        '_lcg_dir=.',
        'case "$_lcg_src" in',
        '    */*) _lcg_dir=${_lcg_src%/*} ;;',
        "esac",
        'if [ -n "$_lcg_src" ] && _lcg_dir=$(CDPATH= cd -P -- "$_lcg_dir" >/dev/null 2>&1 '
        '&& pwd -P); then',
        '    case "$_lcg_dir" in',
        f"        */'{view_rel}') _lcg_root=${{_lcg_dir%{strip}}}; _lcg_found=1 ;;",
        "    esac",
        "fi",
        'if [ "$_lcg_found" != 1 ]; then',
        f"    _lcg_root='{mount_root}'",
        "fi",
        f"_lcg_view=\"$_lcg_root\"/'{view_rel}'",
        'LCG_VIEW=$_lcg_view; export LCG_VIEW',
        f"LCG_VERSION='{name.removeprefix('LCG_')}'; export LCG_VERSION",
        f"LCG_PLATFORM='{platform}'; export LCG_PLATFORM",
        "",
    ]
    for var, chosen in search_paths(dir_list, pythonpath=pythonpath):
        body = []
        # "a:b" never gets an empty element, except MANPATH: "<view>:" when it was empty
        rest = f"${{{var}:+:${var}}}" if var != _DEFAULTS_VAR else f":${{{var}:-}}"
        for d in reversed(chosen):   # prepended one by one: the last one first
            path = "$_lcg_view" + (f"/{d}" if d else "")
            body += [f'case ":${{{var}:-}}:" in',
                     f'    *:"{path}":*) ;;',
                     f'    *) {var}="{path}{rest}"; export {var} ;;',
                     "esac"]
        if var in _OPT_OUT:
            lines.append(f'if [ "${{{_OPT_OUT[var]}:-}}" != 1 ]; then')
            lines += ["    " + line for line in body]
            lines.append("fi")
        else:
            lines += body
    if not pythonpath:
        lines.append("# PYTHONPATH is left alone (the view is made without it)")
    for var in sorted(homes):
        lines.append(f"{var}=\"$_lcg_root\"/'{homes[var].strip('/')}'; export {var}")
    lines += ["", "unset _lcg_src _lcg_dir _lcg_root _lcg_found _lcg_view", ""]
    return "\n".join(lines)


def render_setup_csh(*, view_rel: str, mount_root: str, name: str, platform: str, generated: str,
                     dirs: Iterable[str], pythonpath: bool, homes: Mapping[str, str]) -> str:
    """The ``setup.csh`` of a view: as ``setup.sh``, at the fixed ``<mount_root>/<view_rel>``."""
    view_rel, mount_root, dir_list = _checked(
        view_rel=view_rel, mount_root=mount_root, name=name, platform=platform,
        generated=generated, dirs=dirs, homes=homes)
    lines = _header("csh and tcsh", name, platform, generated, [
        "# Before sourcing, setenv LCG_VIEW_NO_PYTHONPATH 1 leaves PYTHONPATH alone",
        "# (virtualenvs) and setenv LCG_VIEW_NO_LD_LIBRARY_PATH 1 leaves LD_LIBRARY_PATH alone.",
    ])
    lines += [
        f"set _lcg_root = '{mount_root}'",
        f"set _lcg_view = \"${{_lcg_root}}/{view_rel}\"",
        'setenv LCG_VIEW "${_lcg_view}"',
        f"setenv LCG_VERSION '{name.removeprefix('LCG_')}'",
        f"setenv LCG_PLATFORM '{platform}'",
        "",
    ]
    for var, chosen in search_paths(dir_list, pythonpath=pythonpath):
        body = [f"if ( $?{var} ) then",
                f'    set _lcg_cur = "${{{var}}}"',
                "else",
                '    set _lcg_cur = ""',
                "endif"]
        alone = ":" if var == _DEFAULTS_VAR else ""   # MANPATH keeps "and the defaults"
        for d in reversed(chosen):
            path = "${_lcg_view}" + (f"/{d}" if d else "")
            body += ['if ( "${_lcg_cur}" == "" ) then',
                     f'    set _lcg_cur = "{path}{alone}"',
                     f'else if ( ":${{_lcg_cur}}:" !~ *":{path}:"* ) then',
                     f'    set _lcg_cur = "{path}:${{_lcg_cur}}"',
                     "endif"]
        body.append(f'setenv {var} "${{_lcg_cur}}"')
        if var in _OPT_OUT:
            opt = _OPT_OUT[var]
            lines += ["set _lcg_skip = 0",
                      f"if ( $?{opt} ) then",
                      f'    if ( "${{{opt}}}" == "1" ) set _lcg_skip = 1',
                      "endif",
                      "if ( $_lcg_skip == 0 ) then"]
            lines += ["    " + line for line in body]
            lines.append("endif")
        else:
            lines += body
    if not pythonpath:
        lines.append("# PYTHONPATH is left alone (the view is made without it)")
    for var in sorted(homes):
        lines.append(f"setenv {var} \"${{_lcg_root}}/{homes[var].strip('/')}\"")
    lines += ["", "unset _lcg_root _lcg_view _lcg_cur _lcg_skip", ""]
    return "\n".join(lines)
