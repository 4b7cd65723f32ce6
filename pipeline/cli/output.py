"""Rendering rows for people (rich tables) and for scripts (``--json``, ``--csv``).

``--json`` prints exactly one JSON array of objects on stdout; NaN and
infinities become ``null`` so that every JSON parser accepts the output.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

stderr_console = Console(stderr=True)


def make_console(*, stderr: bool = False) -> Console:
    """A console that neither wraps nor cuts values when output goes to a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(
        stderr=stderr, width=None if stream.isatty() else 100_000
    )  # tables keep their natural width


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _fit(cells: list[list[str]], columns: list[str], index: int, room: int) -> None:
    """Cut column ``index``'s cells (…) so that the row fits ``room`` characters of content."""
    widths = [max([len(columns[i]), *(len(r[i]) for r in cells)]) for i in range(len(columns))]
    allowed = max(len(columns[index]), 8, room - (sum(widths) - widths[index]))
    for row in cells:
        if len(row[index]) > allowed:
            row[index] = row[index][: allowed - 1] + "…"


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(payload), indent=None, allow_nan=False) + "\n")


def print_rows(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    fmt: str = "table",
    title: str | None = None,
    compact: bool = False,
    fold_last: bool = False,
    shrink: str | None = None,
) -> None:
    """Print ``rows`` as a table, a JSON array of objects, or CSV. ``compact``: no box, one space
    between columns (to fit a narrow terminal); ``fold_last``: the last column wraps instead of the
    others being cut; ``shrink``: the one column that is cut (…) when the table is wider than the
    terminal — every other keeps its width."""
    if fmt == "json":
        print_json([dict(zip(columns, row)) for row in rows])
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
        return
    console = make_console()
    cells = [[cell(v) for v in row] for row in rows]
    if shrink in columns:
        _fit(
            cells,
            list(columns),
            columns.index(shrink),
            console.width - (len(columns) - 1 + 2 if compact else 3 * len(columns) + 1),
        )
    table = Table(
        title=title,
        show_lines=False,
        header_style="bold",
        **({"box": box.SIMPLE_HEAD, "padding": (0, 0), "pad_edge": False} if compact else {}),
    )
    for i, column in enumerate(columns):
        folds = fold_last and i == len(columns) - 1
        table.add_column(str(column), no_wrap=not folds, overflow="fold" if folds else "ellipsis")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    if not rows:
        stderr_console.print("[dim](no rows)[/dim]")
