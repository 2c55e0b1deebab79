"""Pandera schemas for the pipeline's tables: data summaries, training histories, evaluations, the
landscape between the tickets.

Every validate_* function raises ValidationFailed (a ValueError) whose message lists each failure
as `column '<name>' failed check '<check>'` followed by pandera's own report.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch

from suptickets import history
from suptickets.errors import ValidationFailed
from suptickets.prepared import summary_tables
from suptickets.splits import SPLITS

HISTORY_COLUMNS = history.HISTORY_COLUMNS
EVALUATION_COLUMNS = ["model", "test_acc", "test_loss", "density"]
LANDSCAPE_COLUMNS = ["line", "from", "to", "alpha", "test_acc", "test_loss"]

MAX_LISTED_FAILURES = 20
_COLUMN_PRESENCE_CHECKS = {
    "column_in_dataframe": "required column missing",
    "column_in_schema": "column not allowed",
}


# ----------------------------------------------------------------------------------------------
# helpers


def _finite(name: str = "finite") -> pa.Check:
    return pa.Check(lambda s: np.isfinite(s.astype("float64")), name=name,
                    error="values must be finite")


def _missing(value) -> bool:
    return value is None or (np.isscalar(value) and bool(pd.isna(value)))


def _describe_row(df: pd.DataFrame, index, keys: Sequence[str]) -> str:
    if not keys or _missing(index):
        return ""
    try:
        parts = [f"{k}={df.at[index, k]}" for k in keys if k in df.columns]
    except (KeyError, TypeError, ValueError):
        return ""
    return f" ({', '.join(parts)})" if parts else ""


def _validate(schema: pa.DataFrameSchema, df: pd.DataFrame, what: str,
              row_keys: Sequence[str] = ()) -> pd.DataFrame:
    """schema.validate(df, lazy=True), turning pandera's errors into ValidationFailed.

    `row_keys` name the columns that identify a failing row in the message.
    """
    try:
        return schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        lines = []
        for _, case in cases.head(MAX_LISTED_FAILURES).iterrows():
            where = _describe_row(df, case["index"], row_keys)
            index = "" if _missing(case["index"]) else f" at row {case['index']}"
            if case["schema_context"] == "Column" and isinstance(case["column"], str):
                subject = f"column '{case['column']}'"
            elif case["check"] in _COLUMN_PRESENCE_CHECKS:
                why = _COLUMN_PRESENCE_CHECKS[case["check"]]
                subject = f"column '{case['failure_case']}' ({why})"
            else:
                subject = "table"
            lines.append(f"  - {subject} failed check '{case['check']}': "
                         f"failure case {case['failure_case']!r}{index}{where}")
        if len(cases) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(cases) - MAX_LISTED_FAILURES} more failure cases")
        message = (f"{what} failed validation ({len(cases)} failure cases):\n"
                   + "\n".join(lines) + f"\npandera report:\n{err}")
        raise ValidationFailed(message, cases) from err
    except pa.errors.SchemaError as err:
        column = getattr(getattr(err, "schema", None), "name", None) or "<table>"
        check = getattr(err, "check", None)
        message = (f"{what} failed validation:\n  - column '{column}' failed check '{check}'"
                   f"\npandera report:\n{err}")
        raise ValidationFailed(message, getattr(err, "failure_cases", None)) from err


# ----------------------------------------------------------------------------------------------
# summaries and tensors


def summary_schemas(expected_shape: tuple[int, int, int], num_classes: int,
                    splits: Sequence[str] = SPLITS
                    ) -> tuple[pa.DataFrameSchema, pa.DataFrameSchema, list[str]]:
    """(splits schema, class schema, notes) for prepared.summary_tables' two tables.

    `notes` is filled with the missing (split, label) pairs when the class table's
    completeness check fails.
    """
    channels, height, width = (int(v) for v in expected_shape)
    notes: list[str] = []

    def all_splits_present(df: pd.DataFrame) -> bool:
        missing = [s for s in splits if s not in set(df["split"])]
        if missing:
            notes.append(f"splits table: missing split(s) {missing}, expected {list(splits)}")
        return not missing

    def all_pairs_present(df: pd.DataFrame) -> bool:
        have = set(zip(df["split"], df["label"]))
        missing = [(s, c) for s in splits for c in range(num_classes) if (s, c) not in have]
        if missing:
            shown = ", ".join(f"split={s} label={c}" for s, c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            notes.append(f"class table: missing (split, label) pairs: {shown}{more}")
        return not missing

    splits_schema = pa.DataFrameSchema(
        {
            "split": pa.Column(str, pa.Check.isin(list(splits)), unique=True),
            "size": pa.Column(int, pa.Check.gt(0)),
            "channels": pa.Column(int, pa.Check.eq(channels)),
            "height": pa.Column(int, pa.Check.eq(height)),
            "width": pa.Column(int, pa.Check.eq(width)),
            "mean": pa.Column(float, _finite(), coerce=True),
            "std": pa.Column(float, [_finite(), pa.Check.gt(0)], coerce=True),
        },
        checks=[pa.Check(all_splits_present, name="all_splits_present",
                         error=f"every split of {list(splits)} must be present")],
        strict=True, name="summary splits table",
    )
    classes_schema = pa.DataFrameSchema(
        {
            "split": pa.Column(str, pa.Check.isin(list(splits))),
            "label": pa.Column(int, pa.Check.in_range(0, num_classes - 1)),
            "count": pa.Column(int, pa.Check.gt(0)),
        },
        checks=[pa.Check(all_pairs_present, name="all_split_label_pairs_present",
                         error="every (split, label) pair must be present")],
        unique=["split", "label"], strict=True, name="summary class table",
    )
    return splits_schema, classes_schema, notes


def validate_summary(summary: Mapping, expected_shape: tuple[int, int, int],
                     num_classes: int) -> None:
    """Validate a prepared.summarize() dict: split sizes, image shape, stats, class coverage, and the
    recorded data settings (`config`) when present."""
    try:
        splits_df, classes_df = summary_tables(summary)
    except (KeyError, TypeError, ValueError) as err:
        raise ValidationFailed(f"summary is malformed: column/key {err} missing or invalid "
                               "(expected prepared.summarize's layout)") from err
    problems = []
    config = summary.get("config", {})
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        problems.append(f"key 'config' is {config!r}, expected the data settings prepare read ({{key: value}})")
    if summary.get("num_classes") != num_classes:
        problems.append(f"key 'num_classes' is {summary.get('num_classes')!r}, "
                        f"expected {num_classes}")
    if len(summary.get("classes", [])) != num_classes:
        problems.append(f"key 'classes' has {len(summary.get('classes', []))} names, "
                        f"expected {num_classes}")
    for name, info in summary["splits"].items():
        for key in ("mean", "std"):
            if len(info[key]) != int(expected_shape[0]):
                problems.append(f"split {name}: column '{key}' has {len(info[key])} channel "
                                f"values, expected {expected_shape[0]}")
    splits_schema, classes_schema, notes = summary_schemas(expected_shape, num_classes)
    errors, cases = [], []
    for schema, df, keys in ((splits_schema, splits_df, ["split"]),
                             (classes_schema, classes_df, ["split", "label"])):
        try:
            _validate(schema, df, schema.name, keys)
        except ValidationFailed as err:
            errors.append(str(err))
            if err.failure_cases is not None:
                cases.append(err.failure_cases)
    if problems or errors:
        head = ["summary failed validation:"] + [f"  - {p}" for p in problems + notes]
        raise ValidationFailed("\n".join(head + errors),
                               pd.concat(cases, ignore_index=True) if cases else None)


def validate_tensors(splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                     expected_shape: tuple[int, int, int], num_classes: int) -> None:
    """Every split: x uint8 [N, *expected_shape], y int64 [N] with labels in [0, num_classes)."""
    shape = [int(v) for v in expected_shape]
    problems = [f"split '{s}' missing" for s in SPLITS if s not in splits]
    for name, pair in splits.items():
        try:
            x, y = pair
        except (TypeError, ValueError):
            problems.append(f"split '{name}': expected an (x, y) pair")
            continue
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            problems.append(f"split '{name}': x and y must be tensors")
            continue
        if x.dtype != torch.uint8:
            problems.append(f"split '{name}': x dtype {x.dtype}, expected torch.uint8")
        if x.dim() != 4 or list(x.shape[1:]) != shape:
            problems.append(f"split '{name}': x shape {list(x.shape)}, expected [N, {shape}]")
        if y.dtype != torch.int64:
            problems.append(f"split '{name}': y dtype {y.dtype}, expected torch.int64")
        if y.dim() != 1 or len(y) != len(x):
            problems.append(f"split '{name}': y shape {list(y.shape)}, expected [{len(x)}]")
        if len(x) == 0:
            problems.append(f"split '{name}': empty")
        elif y.numel() and not y.dtype.is_floating_point:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= num_classes:
                problems.append(f"split '{name}': labels span {lo}..{hi}, "
                                f"expected 0..{num_classes - 1}")
    if problems:
        raise ValidationFailed("prepared tensors failed validation:\n"
                               + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------------------------
# training history and evaluation tables


def _strictly_increasing(s: pd.Series) -> pd.Series:
    return s.diff().fillna(1) > 0


def history_schema(extra: Sequence[str] = ()) -> pa.DataFrameSchema:
    """history.COLUMNS as a pandera schema (floats coerced; unbounded ones must also be finite)."""
    columns = {}
    for name, (kind, low, high, low_ok) in history.COLUMNS.items():
        checks = [pa.Check.in_range(low, high, include_min=low_ok) if high is not None
                  else pa.Check.ge(low) if low_ok else pa.Check.gt(low)]
        if kind is float and high is None:
            checks.append(_finite())
        if name == "epoch":
            checks.append(pa.Check(_strictly_increasing, name="strictly_increasing",
                                   error="epochs must be strictly increasing"))
        columns[name] = pa.Column(kind, checks, coerce=kind is float)
    for name in extra:
        if name not in columns:
            columns[name] = pa.Column(nullable=True, required=False)
    return pa.DataFrameSchema(columns, strict=True, name="training history")


def validate_history(df: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Validate a per-epoch training table (columns HISTORY_COLUMNS, plus optional `extra`)."""
    return _validate(history_schema(extra), df, "training history", ["epoch"])


def _accuracy() -> pa.Column:
    return pa.Column(float, pa.Check.in_range(0, 1), coerce=True)


def _loss(nullable: bool = False) -> pa.Column:
    return pa.Column(float, [pa.Check.ge(0), _finite()], nullable=nullable, coerce=True)


def evaluation_schema() -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "model": pa.Column(str, unique=True),
            "test_acc": _accuracy(),
            "test_loss": _loss(nullable=True),
            "density": pa.Column(float, pa.Check.in_range(0, 1, include_min=False),
                                 nullable=True, coerce=True),
        },
        strict=False, name="evaluation table",
    )


def validate_evaluation(df: pd.DataFrame) -> pd.DataFrame:
    """Validate the evaluation table: one row per model (extra columns pass unchecked)."""
    return _validate(evaluation_schema(), df, "evaluation table", ["model"])


def landscape_schema(alphas: Sequence[float]) -> pa.DataFrameSchema:
    """The landscape's points: one row per line and α, every line at exactly `alphas`, in order."""
    alphas = [float(a) for a in alphas]

    def every_line_at_the_alphas(df: pd.DataFrame) -> bool:
        return all(list(group) == alphas for _, group in df.groupby("line", sort=False)["alpha"])

    return pa.DataFrameSchema(
        {
            "line": pa.Column(str),
            "from": pa.Column(str),
            "to": pa.Column(str),
            "alpha": pa.Column(float, pa.Check.in_range(0, 1), coerce=True),
            "test_acc": _accuracy(),
            "test_loss": _loss(),
        },
        checks=[pa.Check(every_line_at_the_alphas, name="every_line_at_the_alphas",
                         error=f"every line must hold one point at each alpha of {alphas}, in order")],
        unique=["line", "alpha"], strict=True, name="landscape table",
    )


def landscape_endpoints_schema() -> pa.DataFrameSchema:
    """The landscape's end points: the evaluation table's columns, and the same model's accuracy and
    loss with BatchNorm statistics recomputed."""
    return evaluation_schema().add_columns({"bn_recomputed_test_acc": _accuracy(),
                                            "bn_recomputed_test_loss": _loss()}).set_name("landscape end points")


def validate_landscape(points: pd.DataFrame, endpoints: pd.DataFrame,
                       alphas: Sequence[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the landscape's points (columns LANDSCAPE_COLUMNS) and its end points."""
    return (_validate(landscape_schema(alphas), points, "landscape table", ["line", "alpha"]),
            _validate(landscape_endpoints_schema(), endpoints, "landscape end points", ["model"]))


def manifest_schema(num_classes: int | None = None) -> pa.DataFrameSchema:
    """A folder data set's manifest: one row per image (path relative to data.root, label, split)."""
    label_checks = [pa.Check.ge(0)] + ([pa.Check.lt(num_classes)] if num_classes is not None else [])
    return pa.DataFrameSchema(
        {
            "path": pa.Column(str, [pa.Check.str_length(min_value=1),
                                    pa.Check(lambda s: ~s.str.startswith("/") & ~s.str.contains(r"(?:^|/)\.\.(?:/|$)"),
                                             name="relative_inside_root",
                                             error="paths must be relative to data.root, without '..'")],
                              unique=True),
            "label": pa.Column("int64", label_checks),
            "split": pa.Column(str, pa.Check.isin(list(SPLITS))),
        },
        checks=[pa.Check(lambda df: set(SPLITS) <= set(df["split"]), name="all_splits_present",
                         error=f"every split of {list(SPLITS)} must have images")],
        strict=True, ordered=True, name="image manifest",
    )


def validate_manifest(df: pd.DataFrame, num_classes: int | None = None) -> pd.DataFrame:
    """Validate an image manifest (columns path, label, split)."""
    return _validate(manifest_schema(num_classes), df, "image manifest", ["path"])
