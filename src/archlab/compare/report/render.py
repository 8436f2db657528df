"""report.md and report.html from one :class:`~archlab.compare.report.view.ReportView`, with the
Jinja2 templates ``archlab/compare/templates/report.md.j2`` and ``report.html.j2``. The HTML
template autoescapes every value; the view's inline Markdown (``**bold**``, ```code```) becomes
``<b>`` / ``<code>`` after escaping (the ``inline`` filter)."""

from __future__ import annotations

import re
from functools import cache

import jinja2
from markupsafe import Markup, escape

from archlab.compare.report.view import ReportView

_CODE = re.compile(r"(`[^`]*`)")


def inline_html(text: str) -> Markup:
    """``text`` escaped for HTML, its ``**bold**`` and ```code``` spans as ``<b>`` / ``<code>``."""
    out = []
    for i, part in enumerate(_CODE.split(str(text))):
        if i % 2:
            out.append(Markup("<code>{}</code>").format(part[1:-1]))
            continue
        for j, bit in enumerate(part.split("**")):
            out.append(Markup("<b>{}</b>").format(bit) if j % 2 else escape(bit))
    return Markup("").join(out)


def plain(text: str) -> str:
    """``text`` without its inline marks: what a reader sees of it in either format."""
    return str(text).replace("**", "").replace("`", "")


def md_cell(text: object) -> str:
    """A Markdown table cell: a ``|`` would end the cell and a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("archlab.compare", "templates"),
        # on for the HTML template (and any other), off for Markdown, which is not HTML
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",),
                                            default=True),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(inline=inline_html, md_cell=md_cell)
    return env


def render_markdown(view: ReportView) -> str:
    return _env().get_template("report.md.j2").render(view=view).rstrip("\n") + "\n"


def render_html(view: ReportView) -> str:
    return _env().get_template("report.html.j2").render(view=view)
