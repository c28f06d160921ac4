"""Results as aligned text tables or JSON."""

from __future__ import annotations

import json
import sys
from typing import Any


def table(headers: list[str], rows: list[list[Any]], out=None) -> None:
    """Left-aligned columns, numbers to 6 significant digits; None prints as '-'."""
    out = out or sys.stdout
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2))
