"""Charts drawn at archive time: a series' points as an inline SVG line chart (pygal).

The SVG is meant to sit inside an HTML page read offline: no script (pygal's
tooltip configuration is taken out), no external stylesheet or font, and an
accessible name (``role="img"`` and ``aria-label``). Labels along the time axis are
moments written by the caller (in the reader's language and time zone).

pygal is imported when the first chart is drawn (or :data:`STYLE` first read), not
with this module: a worker whose exports hold no series never loads it (~1.6 MB).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pygal.style import Style

    #: Dark ink on white, so that every label keeps WCAG AA contrast (also the
    #: dashboard's charts); built on first use, by :func:`__getattr__`.
    STYLE: Style

WIDTH = 720
HEIGHT = 260


def line_chart(
    label: str,
    points: Sequence[tuple[datetime, float | None]],
    moment: Callable[[datetime], str],
    value: Callable[[float], str],
    *,
    time_label: str | None = None,
) -> str:
    """One series as an SVG ``<svg>`` element's markup, named ``label`` for screen readers.

    ``moment`` writes the time axis' labels, ``value`` the values' axis labels;
    ``time_label`` titles the time axis (e.g. that its times are as held, zone unknown).
    """
    import pygal

    chart = pygal.DateTimeLine(
        style=_style(),
        width=WIDTH,
        height=HEIGHT,
        js=[],
        disable_xml_declaration=True,
        show_legend=False,
        show_dots=False,
        x_label_rotation=0,
        x_labels_major_count=4,
        show_minor_x_labels=False,
        x_value_formatter=moment,
        value_formatter=value,
        truncate_label=-1,
        x_title=time_label,
    )
    chart.add(label, list(points))
    return markup(chart, label)


def markup(chart: Any, label: str) -> str:
    """A pygal chart's ``<svg>`` element, without script or comments, named ``label``.

    pygal writes its tooltips' configuration as a script whatever ``js`` says, and a
    ``<title>`` per point: both go, the chart's accessible name stays.
    """
    from pygal.etree import etree

    tree = chart.render_tree()
    for parent in list(tree.iter()):
        for child in list(parent):
            if _local(child.tag) in {"script", "title", "desc"}:
                parent.remove(child)
    tree.set("role", "img")
    tree.set("aria-label", label)
    tree.set("width", "100%")
    for comment in [c for c in tree if not isinstance(c.tag, str)]:
        tree.remove(comment)
    text: str = etree.tostring(tree, encoding="unicode")
    return text


@functools.cache
def _style() -> Style:
    from pygal.style import Style

    return Style(
        background="#ffffff",
        plot_background="#ffffff",
        foreground="#222222",
        foreground_strong="#111111",
        foreground_subtle="#555555",
        colors=("#1f5fa8", "#a8321f", "#2f7d32", "#6a3fa0"),
        font_family="system-ui, sans-serif",
        label_font_size=12,
        major_label_font_size=12,
        title_font_size=14,
    )


def __getattr__(name: str) -> Any:
    """:data:`STYLE`, built (and pygal imported) when first read."""
    if name == "STYLE":
        return _style()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


__all__ = ["HEIGHT", "STYLE", "WIDTH", "line_chart", "markup"]
