"""`report.html`: the study report as one self-contained page (`prefkit report DIR --html`).

It is converted from the report.md that prefkit.sweeps.report writes (the subset of Markdown that
module emits: headings, pipe tables, bullet lists, paragraphs, images, **bold**, *italic* and
`code`); images are embedded as base64 data URIs and the style sheet is inline, so the page needs
no other file and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from prefkit.sweeps.store import write_atomic

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 80rem; padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; margin: 0.6rem 0; display: block; }
code { background: #f3f3f3; padding: 0 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
"""


def inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", out)


def _image(folder: Path, alt: str, name: str) -> str:
    path = folder / name
    if not path.is_file() or path.suffix.lower() != ".png":
        return f"<p>[{html.escape(alt)}: image missing]</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _table(lines: list[str]) -> str:
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    head, body = cells[0], [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    rows = ["<tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body]
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _blocks(text: str) -> list[list[str]]:
    """Runs of lines of one kind: table, list, heading, image or paragraph."""
    def kind(line: str) -> str:
        s = line.strip()
        return ("blank" if not s else "table" if s.startswith("|") else "list" if s.startswith("- ")
                else "heading" if s.startswith("#") else "image" if _IMAGE.match(s) else "text")

    blocks: list[list[str]] = []
    last = None
    for line in text.splitlines():
        k = kind(line)
        if k == "blank":
            last = None
            continue
        if k != last or k in ("heading", "image"):
            blocks.append([k])
        blocks[-1].append(line.strip())
        last = k
    return blocks


def markdown_to_html(text: str, folder: Path, title: str) -> str:
    parts = []
    for kind, *lines in _blocks(text):
        if kind == "table":
            parts.append(_table(lines))
        elif kind == "list":
            parts.append("<ul>\n" + "\n".join(f"<li>{inline(x[2:])}</li>" for x in lines) + "\n</ul>")
        elif kind == "heading":
            level = min(6, len(lines[0]) - len(lines[0].lstrip("#")))
            parts.append(f"<h{level}>{inline(lines[0].lstrip('#').strip())}</h{level}>")
        elif kind == "image":
            parts.append(_image(folder, *_IMAGE.match(lines[0]).groups()))
        else:
            parts.append(f"<p>{inline(' '.join(lines))}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


def write_html(folder: Path) -> Path:
    """Write `report.html` beside the folder's report.md (written first by write_report)."""
    folder = Path(folder)
    text = (folder / "report.md").read_text(encoding="utf-8")
    path = folder / "report.html"
    write_atomic(path, markdown_to_html(text, folder, f"Study report: {folder.name}"))
    return path
