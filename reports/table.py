"""Plain, aligned text tables (no dependency; numbers right-aligned)."""

from __future__ import annotations

from collections.abc import Sequence


def _is_number(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").split(" ")[0]
    try:
        float(t)
    except ValueError:
        return False
    return True


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.rjust(w) if _is_number(c) else c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
