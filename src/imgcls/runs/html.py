"""Self-contained HTML pages: inline CSS, images as ``data:`` URIs, no script, no link and no
address outside the file, so a report opens from disk with the network off."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f6f8; } tr.failed td { background: #fdecea; }
img.figure { max-width: 100%; }
figure.thumb { display: inline-block; margin: 4px; text-align: center; font-size: 12px; }
figure.thumb img { width: 84px; height: 84px; object-fit: contain; image-rendering: pixelated;
  border: 1px solid #ccc; }
p.note { color: #666; } code { background: #f4f6f8; padding: 0 3px; }
"""


def number(value: Any) -> str:
    """A value written exactly as ``metrics.json`` writes it (``json.dumps``)."""
    return json.dumps(value)


def cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{escape(json.dumps(value))}</td>"
    if isinstance(value, int | float):
        return f'<td class="num">{number(value)}</td>'
    if isinstance(value, Mapping):
        return f"<td>{kv_table(value)}</td>"
    if isinstance(value, list | tuple):
        plain = all(isinstance(v, str | int | float) for v in value)
        if plain:
            return f"<td>{escape(', '.join(str(v) for v in value))}</td>"
        return f"<td>{escape(json.dumps(value))}</td>"
    return f"<td>{escape(str(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], row_class: Sequence = ()) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    classes = list(row_class)
    body = [
        f"<tr{f' class={classes[i]!r}' if i < len(classes) and classes[i] else ''}>"
        + "".join(cell(v) for v in r)
        + "</tr>"
        for i, r in enumerate(rows)
    ]
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def kv_table(mapping: Mapping[str, Any]) -> str:
    """A dict as a two-column table; nested dicts become nested tables."""
    return table(("key", "value"), [(str(k), v) for k, v in mapping.items()])


def image(png: bytes, alt: str, css_class: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def thumbnail(png: bytes, caption: str) -> str:
    return f'<figure class="thumb">{image(png, caption, "thumb")}<figcaption>{escape(caption)}</figcaption></figure>'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def section(title: str, *body: str) -> str:
    return f"<h2>{escape(title)}</h2>\n" + "\n".join(body)


def page(title: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
