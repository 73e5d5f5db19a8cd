"""Small HTML pieces for a self-contained page (cbmctl.report): every text escaped (and its control
characters made visible), every image a data URI, and a Content-Security-Policy that lets the browser
fetch nothing at all — the page can be mailed, opened offline, and cannot call home."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from cbmctl.errors import CbmctlError
from cbmctl.sanitize import safe_text

# nothing may be fetched: images are data: URIs, the style sheet is inline, there is no script
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PLOT_BYTES = 20 << 20  # a run's PNG larger than this is not a plot cbmctl drew

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { margin: 1.2em 0 0.4em; font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 8px; border-bottom: 1px solid #e5e5e5; text-align: right; vertical-align: top; }
th { background: #f4f4f6; } td.text, th.text { text-align: left; }
.note { color: #666; font-size: 0.92em; } .absent { color: #888; font-style: italic; }
.pos { color: #1b7f3a; } .neg { color: #b3261e; }
img.plot { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 1em; }
figure.thumb { margin: 0; width: 118px; font-size: 0.78em; text-align: center; }
figure.thumb img { width: 112px; height: 112px; object-fit: contain; border: 3px solid #bbb; background: #fafafa; }
figure.thumb img.shows { border-color: #2e7d32; } figure.thumb img.missing { border-color: #c62828; }
.example { display: flex; gap: 1em; align-items: flex-start; margin-bottom: 1.2em; }
.example img { width: 160px; border: 1px solid #ccc; }
.bar { display: inline-block; height: 0.8em; vertical-align: middle; }
table.matrix td { padding: 1px 3px; font-size: 0.78em; min-width: 2.4em; }
table.matrix th.text { white-space: nowrap; }
table.matrix th.concept { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; font-weight: normal;
  font-size: 0.78em; padding: 4px 1px; }
nav a { margin-right: 1em; } code { background: #f4f4f6; padding: 0 3px; }
"""


def text(value) -> str:
    """Untrusted text for HTML: control characters shown as escapes, then HTML-escaped."""
    return html.escape(safe_text(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_file_uri(path: Path) -> str | None:
    """A run's PNG as a data URI; None when it is missing, too large or not a PNG (a run may have been sent
    by anyone: nothing but a PNG is embedded)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_PLOT_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data_uri(data, "image/png") if data.startswith(PNG_SIGNATURE) else None


def image_uri(image, quality: int = 85) -> str:
    """A PIL image as a JPEG data URI."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return data_uri(buffer.getvalue(), "image/jpeg")


def table(headers: list[str], rows: list[list], text_columns: int = 1, css: str = "") -> str:
    """An HTML table (no header row when every header is empty); cells are escaped unless given as Raw; the
    first `text_columns` columns align left."""
    def cell(tag, index, value):
        kind = ' class="text"' if index < text_columns else ""
        content = value.html if isinstance(value, Raw) else text(value)
        return f"<{tag}{kind}>{content}</{tag}>"
    head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(headers)) + "</tr>" if any(headers) else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    attributes = f' class="{css}"' if css else ""
    return f"<table{attributes}>{head}{body}</table>"


class Raw:
    """HTML this module (or its caller) built from escaped parts: put into a table cell as it is."""

    def __init__(self, markup: str):
        self.html = markup


def heat(value: float, scale: float) -> str:
    """A background colour for a weight: green for positive, red for negative, white for zero."""
    if not scale or not value:
        return "#ffffff"
    strength = min(abs(value) / scale, 1.0)
    low = round(255 - 170 * strength)
    return f"rgb({low},{255 - round(60 * strength)},{low})" if value > 0 else \
        f"rgb({255 - round(40 * strength)},{low},{low})"


def page(title: str, sections: list[tuple[str, str, str]], subtitle: str = "") -> str:
    """The whole document: (anchor, heading, body html) per section, a navigation line, inline style."""
    nav = " ".join(f'<a href="#{anchor}">{text(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(f'<h2 id="{anchor}">{text(heading)}</h2>\n{content}\n' for anchor, heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{text(title)}</title><style>{STYLE}</style></head>\n<body>\n<h1>{text(title)}</h1>"
            f'<p class="note">{text(subtitle)}</p><nav>{nav}</nav>\n{body}</body></html>\n')


def check_output(path: Path) -> Path:
    """Refuse, before any work, a report path that cannot be written (a directory, a missing or read-only
    folder)."""
    import os
    path = Path(path)
    if path.is_dir():
        raise CbmctlError(f"{safe_text(path)} is a directory; give a file name such as report.html")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CbmctlError(f"cannot write {safe_text(path)}: {safe_text(folder)} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CbmctlError(f"cannot write {safe_text(path)}: {safe_text(folder)} is not writable (pass -o elsewhere)")
    return path
