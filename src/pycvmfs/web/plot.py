"""The repository's size and file count over revisions as an inline SVG, made server-side.

:func:`size_plot` draws two panels sharing the revision axis: the sum of file sizes and the
number of files. Each measured revision is one ``<circle>`` (class ``point-bytes`` or
``point-files``, with a ``<title>`` tooltip), joined by a polyline. The SVG is an image with
a title and a description; the page shows the same figures in a table beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["human_bytes", "size_plot"]

_WIDTH, _PANEL, _LEFT, _RIGHT, _TOP, _GAP = 640, 150, 78, 16, 26, 46
_SERIES = (("bytes", "Size (sum of file sizes)", "#0b4f9c"),
           ("files", "Files", "#8a3b00"))


def human_bytes(n: int | float | None) -> str:
    """``512 B``, ``1.5 kB``, ``20.3 MB`` (powers of 1000)."""
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _label(key: str, value: float) -> str:
    return human_bytes(value) if key == "bytes" else f"{value:,.0f}"


def _panel(points: Sequence[dict[str, Any]], key: str, title: str, colour: str,
           top: float, x_of) -> list[str]:
    values = [(p["revision"], p[key]) for p in points if p.get(key) is not None]
    y_max = max((v for _r, v in values), default=0) or 1
    bottom = top + _PANEL

    def y_of(v: float) -> float:
        return bottom - v / y_max * _PANEL

    out = [f'<g class="panel panel-{key}">',
           f'<text x="{_LEFT}" y="{top - 8:.0f}" class="panel-title">{escape(title)}</text>',
           f'<line x1="{_LEFT}" y1="{bottom}" x2="{_WIDTH - _RIGHT}" y2="{bottom}" '
           'stroke="#4a4a4a"/>',
           f'<line x1="{_LEFT}" y1="{top}" x2="{_LEFT}" y2="{bottom}" stroke="#4a4a4a"/>',
           f'<text x="{_LEFT - 6}" y="{top + 4:.0f}" text-anchor="end">'
           f'{escape(_label(key, y_max))}</text>',
           f'<text x="{_LEFT - 6}" y="{bottom + 4:.0f}" text-anchor="end">0</text>']
    if len(values) > 1:
        coords = " ".join(f"{x_of(r):.1f},{y_of(v):.1f}" for r, v in values)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                   f'points="{coords}"/>')
    for r, v in values:
        out.append(f'<circle class="point-{key}" cx="{x_of(r):.1f}" cy="{y_of(v):.1f}" r="4" '
                   f'fill="{colour}"><title>revision {r}: {escape(_label(key, v))}</title>'
                   '</circle>')
    out.append("</g>")
    return out


def size_plot(points: Sequence[dict[str, Any]], *, name: str = "size-plot") -> str:
    """The SVG (a string of markup) of ``points`` (``revision``, ``bytes``, ``files``; from
    :func:`pycvmfs.web.repoinfo.size_history`); ``name`` prefixes the element ids."""
    revisions = [p["revision"] for p in points]
    lo, hi = (min(revisions), max(revisions)) if revisions else (0, 1)
    span = _WIDTH - _LEFT - _RIGHT

    def x_of(r: int) -> float:
        return _LEFT + (span / 2 if hi == lo else (r - lo) / (hi - lo) * span)

    height = _TOP + 2 * _PANEL + _GAP + 40
    ident = escape(name)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" '
             f'viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" height="{height}" '
             f'aria-labelledby="{ident}-title {ident}-desc">',
             f'<title id="{ident}-title">Repository size and file count by revision</title>',
             f'<desc id="{ident}-desc">{len(points)} revisions from {lo} to {hi}; the same '
             'figures are in the table next to this plot.</desc>']
    for i, (key, title, colour) in enumerate(_SERIES):
        parts += _panel(points, key, title, colour, _TOP + i * (_PANEL + _GAP), x_of)
    axis_y = _TOP + 2 * _PANEL + _GAP + 18
    parts.append(f'<text x="{_LEFT}" y="{axis_y}" text-anchor="start">revision {lo}</text>')
    if hi != lo:
        parts.append(f'<text x="{_WIDTH - _RIGHT}" y="{axis_y}" text-anchor="end">'
                     f'revision {hi}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
