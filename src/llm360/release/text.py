"""Formatting shared by the cards and the report: numbers, and escaping text for Markdown/HTML."""

from __future__ import annotations

import html
import json
import math
import re


def human(n: float | int | None, digits: int = 3) -> str:
    """6738415616 -> '6.74B', 1259130000000 -> '1.26T', 512 -> '512'."""
    if n is None:
        return "-"
    for value, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= value:
            return f"{n / value:.{digits}g}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def thousands(n: int | float | None) -> str:
    if n is None:
        return "-"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.4g}"
    return f"{int(n):,}"


def num(x: float | int | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-" if x is None else str(x)
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return f"{x:.{digits}g}"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(text: object) -> str:
    """Text from a config, corpus or file made inert in Markdown: no HTML, no markup, one line."""
    s = html.escape(str(text), quote=False)  # & < > as entities: Markdown shows them as text
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return " ".join(s.split())


def md_code(text: object) -> str:
    """Inline code: safe for hashes and names; backticks inside are replaced."""
    s = " ".join(str(text).replace("`", "'").split())
    return f"`{s}`"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def esc(text: object) -> str:
    """HTML-escape anything for element content and quoted attribute values."""
    return html.escape("" if text is None else str(text), quote=True)


def script_json(obj: object) -> str:
    """JSON safe inside <script>: no `</script>`, `<!--`, or line separators can end or bend it."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def finite(x: object) -> float | None:
    """A float for charts (JSON has no NaN): None for anything not a finite number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None
