"""A minimal, deterministic PDF 1.4 writer for plain-text notes (no new dependencies).

One standard font (Helvetica, WinAnsiEncoding, which every PDF reader has built in), US
Letter pages, lines wrapped by character count, a cross-reference table with exact byte
offsets (ISO 32000-1 §7.5). The same text always gives the same bytes: there is no
CreationDate and no random file id.

Text is encoded as Windows-1252 (what WinAnsiEncoding shows). A few common symbols outside
it are spelled out; any other character raises ValueError instead of being silently lost —
a clinical note is never shown with characters missing.
"""
from __future__ import annotations

import textwrap

PAGE_W, PAGE_H = 612, 792          # US Letter, points
MARGIN = 54
FONT_SIZE = 10
LEADING = 13
WRAP = 95                          # characters per line at 10 pt Helvetica within the margins
LINES_PER_PAGE = (PAGE_H - 2 * MARGIN) // LEADING

_SPELLED = {"\u2265": ">=", "\u2264": "<=", "\u2192": "->", "\u2190": "<-", "\u2248": "~",
            "\u2260": "!=", "\u00a0": " ", "\u2009": " ", "\u200b": "", "\t": "    "}


def _encode(line: str) -> bytes:
    text = "".join(_SPELLED.get(ch, ch) for ch in line)
    try:
        raw = text.encode("cp1252")
    except UnicodeEncodeError as exc:
        raise ValueError(f"character U+{ord(text[exc.start]):04X} cannot be shown in the PDF") from None
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def wrap_lines(text: str) -> list[str]:
    lines: list[str] = []
    for para in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        lines.extend(textwrap.wrap(para, WRAP, break_long_words=True,
                                   break_on_hyphens=False, replace_whitespace=False) or [""])
    return lines


def render_pdf(text: str, *, title: str | None = None) -> bytes:
    """The PDF bytes of `text`. Raises ValueError for a character the font cannot show."""
    lines = wrap_lines(text)
    pages = [lines[i:i + LINES_PER_PAGE] for i in range(0, len(lines), LINES_PER_PAGE)] or [[""]]
    n = len(pages)
    # objects: 1 catalog, 2 pages, 3 font, 4 info, then (page, content) per page
    objects: list[bytes] = []
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
                   b"/Encoding /WinAnsiEncoding >>")
    info = b"<< /Producer (Chartbridge)"
    if title:
        info += b" /Title (" + _encode(title) + b")"
    objects.append(info + b" >>")
    for i, page in enumerate(pages):
        content = [b"BT", f"/F1 {FONT_SIZE} Tf {LEADING} TL".encode(),
                   f"{MARGIN} {PAGE_H - MARGIN - FONT_SIZE} Td".encode()]
        for line in page:
            content.append(b"(" + _encode(line) + b") Tj T*")
        content.append(b"ET")
        stream = b"\n".join(content)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {6 + 2 * i} 0 R >>"
                       .encode())
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream
                       + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)
