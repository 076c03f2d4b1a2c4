"""HTML pages: the demo index, and small helpers other pages (gallery, contact sheet, validation) share.

Pages are plain HTML with relative links, so a folder can be zipped and opened anywhere.
"""
from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from storyboard.core.records import atomic_write

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f4f4f4; } td.num { text-align: right; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
.thumbs figure { margin: 0; width: 160px; font-size: 0.75em; }
.thumbs img { width: 160px; height: 120px; object-fit: contain; background: #eee; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.missing { color: #a00; }
"""


@dataclass
class Section:
    """One block of the demo index: a stage, what it made, and where to look."""

    title: str
    text: str = ""
    links: list[tuple[str, Path]] = field(default_factory=list)
    thumbs: list[tuple[Path, str]] = field(default_factory=list)
    table: tuple[Sequence[str], Sequence[Sequence[object]]] | None = None
    command: str = ""


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def relative_href(target: Path, page_dir: Path) -> str:
    """A link from a page in ``page_dir`` to ``target``, percent-safe for Korean and spaces."""
    rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return quote(rel.replace(os.sep, "/"))


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            cls = ' class="num"' if isinstance(value, (int, float)) else ""
            cells.append(f"<td{cls}>{escape(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_thumbs(thumbs: Sequence[tuple[Path, str]], page_dir: Path) -> str:
    figures = []
    for image, caption in thumbs:
        href = relative_href(image, page_dir)
        figures.append(f'<figure><a href="{href}"><img src="{href}" loading="lazy"></a>'
                       f"<figcaption>{escape(caption)}</figcaption></figure>")
    return f'<div class="thumbs">{"".join(figures)}</div>'


def render_section(section: Section, page_dir: Path) -> str:
    parts = [f"<h2>{escape(section.title)}</h2>"]
    if section.text:
        parts.append(f"<p>{escape(section.text)}</p>")
    if section.command:
        parts.append(f"<pre>{escape(section.command)}</pre>")
    if section.links:
        items = []
        for label, target in section.links:
            if Path(target).exists():
                items.append(f'<li><a href="{relative_href(target, page_dir)}">{escape(label)}</a></li>')
            else:
                items.append(f'<li class="missing">{escape(label)} (not written)</li>')
        parts.append("<ul>" + "".join(items) + "</ul>")
    if section.table:
        parts.append(render_table(*section.table))
    if section.thumbs:
        parts.append(render_thumbs(section.thumbs, page_dir))
    return "\n".join(parts)


def write_page(path: Path, title: str, body_html: str, subtitle: str = "") -> Path:
    """Write one standalone page atomically."""
    sub = f"<p>{escape(subtitle)}</p>" if subtitle else ""
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{PAGE_STYLE}</style></head><body><h1>{escape(title)}</h1>{sub}{body_html}</body></html>\n")
    with atomic_write(path) as fh:
        fh.write(page)
    return path


def write_index(path: Path, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    body = "\n".join(render_section(s, path.parent) for s in sections)
    return write_page(path, title, body, subtitle)
