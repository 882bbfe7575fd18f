"""Write the report's blocks (see ``sections``) as one HTML page and as Markdown.

Every string is escaped here, so prompts and responses from the policy show as text.
"""
from __future__ import annotations

import html

CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
       "text-align:left;vertical-align:top;white-space:pre-wrap}th{background:#f3f3f3}img{max-width:100%}")


def _esc(text) -> str:
    return html.escape(str(text), quote=False)


def to_html(blocks: list) -> str:
    e, parts = _esc, []
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "img":
            parts.append(f'<p><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}"></p>')
        else:
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
    title = e(blocks[0][2])
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style>'
            "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _md_cell(text) -> str:
    return _esc(text).replace("|", "\\|").replace("\n", "<br>")


def to_markdown(blocks: list) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h":
            parts.append("#" * b[1] + " " + _md_cell(b[2]))
        elif b[0] == "p":
            parts.append(_md_cell(b[1]))
        elif b[0] == "img":
            parts.append(f"![{_md_cell(b[2])}]({b[1]})")
        else:
            lines = ["| " + " | ".join(_md_cell(h) for h in b[1]) + " |", "|" + " --- |" * len(b[1])]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
