"""The per-epoch training history (`plots/<stage>.csv`): its columns and their bounds, checked and
written in plain Python, so a training process needs neither pandas nor pandera. The pandera schema
that reads the files back (schemas.history_schema) is built from the same COLUMNS.
"""

from __future__ import annotations

import math
from typing import Sequence

from .errors import ValidationFailed

# column: (type, lowest, highest or None, lowest allowed); every float must be finite
COLUMNS: dict[str, tuple[type, float, float | None, bool]] = {
    "epoch": (int, 1, None, True),  # also strictly increasing
    "step": (int, 0, None, True),
    "lr": (float, 0, None, True),
    "train_loss": (float, 0, None, True),
    "train_acc": (float, 0, 1, True),
    "val_acc": (float, 0, 1, True),
    "density": (float, 0, 1, False),
}
HISTORY_COLUMNS = list(COLUMNS)
FLOAT_FORMAT = "%.6g"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _problem(column: str, v) -> str | None:
    kind, low, high, low_ok = COLUMNS[column]
    if not _number(v) or (kind is int and not isinstance(v, int)):
        return f"expected {'an integer' if kind is int else 'a number'}"
    if not math.isfinite(v):
        return "values must be finite"
    if v < low or (v == low and not low_ok) or (high is not None and v > high):
        return f"outside {'[' if low_ok else '('}{low}, {'inf)' if high is None else f'{high}]'}"
    return None


def check_history(rows: Sequence[dict], extra: Sequence[str] = ()) -> None:
    """Raise ValidationFailed naming each bad cell (column, epoch, value) unless every row has exactly
    HISTORY_COLUMNS plus `extra` (those may be None) within COLUMNS' bounds, epochs strictly increasing."""
    allowed = HISTORY_COLUMNS + [c for c in extra if c not in COLUMNS]
    problems = []
    for i, row in enumerate(rows):
        where = f"row {i} (epoch={row.get('epoch')})"
        problems += [f"column '{c}' missing at {where}" for c in HISTORY_COLUMNS if c not in row]
        problems += [f"column '{c}' not allowed at {where}" for c in row if c not in allowed]
        problems += [f"column '{c}' failed at {where}: {why}, got {row[c]!r}" for c in HISTORY_COLUMNS
                     if c in row and (why := _problem(c, row[c]))]
        problems += [f"column '{c}' failed at {where}: expected a number or nothing, got {row[c]!r}"
                     for c in allowed[len(HISTORY_COLUMNS):] if row.get(c) is not None and not _number(row[c])]
        if i and _number(row.get("epoch")) and _number(rows[i - 1].get("epoch")) and row["epoch"] <= rows[i - 1]["epoch"]:
            problems.append(f"column 'epoch' failed at {where}: epochs must be strictly increasing")
    if problems:
        raise ValidationFailed("training history failed validation:\n" + "\n".join(f"  - {p}" for p in problems))


def history_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """The rows as CSV text, as pandas writes the validated table (`to_csv(index=False,
    float_format="%.6g")`): integers as such, floats (a COLUMNS float, or any column holding a float)
    with FLOAT_FORMAT, missing values empty."""

    def floats(c: str) -> bool:
        return COLUMNS.get(c, (None,))[0] is float or any(isinstance(r.get(c), float) for r in rows)

    as_float = {c: floats(c) for c in columns}

    def cell(c: str, v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return FLOAT_FORMAT % v if as_float[c] else str(v)

    lines = [",".join(columns)] + [",".join(cell(c, r.get(c)) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"
