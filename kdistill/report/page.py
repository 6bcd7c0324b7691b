"""Write the report's content blocks as one self-contained HTML page and as Markdown.

A block is a tuple: ("h1"|"h2"|"h3"|"p"|"note", text), ("table", header, rows, css class or ""),
("figure", file name, png bytes, caption). All text is escaped; in the HTML every image is an inline
base64 PNG (no file or network access needed), the Markdown links the PNG files written beside it.
"""
from __future__ import annotations

import base64
import html
import re

NUMERIC = re.compile(r"^(-|[-+]?[\d,.]+(e[-+]?\d+)?(%|x)?( \w+)?( → [-\d,.]+)?( / [-\d,.]+)?)$")

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 28px; margin: 8px 0 4px; } h2 { margin-top: 40px; border-bottom: 1px solid #d0d7de; }
h3 { margin-top: 28px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
table.text td { text-align: left; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px;
                max-width: 420px; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 13px; }
.note { background: #ddf4ff; border-left: 4px solid #0969da; padding: 10px 14px; margin: 12px 0; }
.muted { color: #57606a; }
"""


def _cell(value) -> str:
    return html.escape(str(value)).replace("\n", "<br>")


def _num(value) -> str:
    """A class that right-aligns numbers ("1,024", "98.4%", "1.47x fewer", "0.3 → 0.1")."""
    return ' class="num"' if NUMERIC.match(str(value)) else ""


def html_block(block) -> str:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
        return f"<{kind}>{html.escape(block[1])}</{kind}>"
    if kind == "p":
        return f"<p>{html.escape(block[1])}</p>"
    if kind == "note":
        return f'<div class="note">{html.escape(block[1])}</div>'
    if kind == "table":
        _, header, rows, css = block
        first = rows[0] if rows else [""] * len(header)
        head = "".join(f"<th{_num(v) if i else ''}>{_cell(h)}</th>" for i, (h, v) in enumerate(zip(header, first)))
        body = "".join("<tr>" + "".join(f"<td{_num(v)}>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    if kind == "figure":
        _, name, png, caption = block
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption, quote=True)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    raise ValueError(f"unknown report block {kind!r}")


def render_html(title: str, blocks: list) -> str:
    body = "\n".join(html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", "<br>")


def markdown_block(block) -> str:
    kind = block[0]
    if kind in ("h1", "h2", "h3"):
        return "#" * int(kind[1]) + " " + block[1]
    if kind == "p":
        return block[1]
    if kind == "note":
        return "> " + block[1]
    if kind == "table":
        _, header, rows, css = block
        align = ["---" if i == 0 or css == "text" else "---:" for i in range(len(header))]
        lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
        return "\n".join(lines)
    if kind == "figure":
        return f"![{block[3]}]({block[1]})"
    raise ValueError(f"unknown report block {kind!r}")


def render_markdown(blocks: list) -> str:
    return "\n\n".join(markdown_block(b) for b in blocks) + "\n"


def images(blocks: list) -> dict[str, bytes]:
    """File name -> PNG bytes of every figure block."""
    return {b[1]: b[2] for b in blocks if b[0] == "figure"}
