"""Plain-text tables: GitHub-flavoured Markdown for ``sweep.md`` (and any other summary written for a README)."""

from __future__ import annotations

from collections.abc import Sequence

_RULES = {None: "---", "left": ":---", "right": "---:", "center": ":---:"}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Sequence[str | None] | None = None) -> str:
    """A Markdown table, one line per row, ending in a newline.

    ``align`` gives each column's alignment (``"left"``, ``"right"``, ``"center"`` or None for the renderer's
    default). Cells are written as given: format numbers before. A row of another length than the header is a
    ValueError naming it (a silently shifted column would put numbers under the wrong heading).

    >>> print(markdown_table(["alpha", "reward"], [["0.1", "0.5"], ["1", "0.25"]], align=[None, "right"]), end="")
    | alpha | reward |
    |---|---:|
    | 0.1 | 0.5 |
    | 1 | 0.25 |
    """
    width = len(header)
    align = [None] * width if align is None else list(align)
    if len(align) != width:
        raise ValueError(f"align has {len(align)} entries for {width} columns")
    unknown = [a for a in align if a not in _RULES]
    if unknown:
        raise ValueError(f"unknown alignment {unknown[0]!r}; use one of left, right, center or None")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join(_RULES[a] + "|" for a in align)]
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise ValueError(f"row {number} has {len(row)} cells but the header has {width} "
                             f"({', '.join(header)}): {list(row)!r}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
