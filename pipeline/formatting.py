"""Plain-text and Markdown tables for the terminal and the report."""
from __future__ import annotations


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_table(head: list[str], rows: list[list], markdown: bool = False) -> str:
    cells = [[_cell(v) for v in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])
