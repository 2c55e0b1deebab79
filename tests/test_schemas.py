"""Tests for suptickets.schemas: summary, tensor, history and evaluation validation."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from suptickets import history as history_rules
from suptickets import schemas
from suptickets.prepared import summarize
from suptickets.schemas import ValidationFailed
from suptickets.splits import Raw, prepare_splits

SHAPE = (3, 8, 8)
K = 4


@pytest.fixture(scope="module")
def prepared():
    g = torch.Generator().manual_seed(0)
    raw = Raw(
        train_x=torch.randint(0, 256, (160, *SHAPE), generator=g, dtype=torch.uint8),
        train_y=torch.arange(160) % K,
        test_x=torch.randint(0, 256, (40, *SHAPE), generator=g, dtype=torch.uint8),
        test_y=torch.arange(40) % K,
        classes=[f"c{i}" for i in range(K)],
    )
    splits = prepare_splits(raw, 0.25, seed=0)
    return splits, summarize(splits, raw.classes)


@pytest.fixture
def summary(prepared):
    return copy.deepcopy(prepared[1])


def rejected(summary, shape=SHAPE, k=K) -> str:
    with pytest.raises(ValidationFailed) as info:
        schemas.validate_summary(summary, shape, k)
    return str(info.value)


# ----------------------------------------------------------------------------------------------
# summary


def test_summary_accepted_for_its_shape_and_classes_only(summary):
    assert schemas.validate_summary(summary, SHAPE, K) is None  # data.summarize's own output passes
    assert "channel values, expected 1" in rejected(copy.deepcopy(summary), shape=(1, 8, 8))
    assert "expected 5" in rejected(copy.deepcopy(summary), k=K + 1)


def test_summary_class_missing_from_val(summary):
    summary["splits"]["val"]["class_counts"][2] = 0
    message = rejected(summary)
    assert "column 'count'" in message and "greater_than(0)" in message
    assert "split=val, label=2" in message


def test_summary_class_pairs_missing(summary):
    summary["splits"]["val"]["class_counts"] = summary["splits"]["val"]["class_counts"][:3]
    message = rejected(summary)
    assert "all_split_label_pairs_present" in message or "(split, label) pair" in message
    assert "split=val label=3" in message


def test_summary_split_missing(summary):
    del summary["splits"]["test"]
    message = rejected(summary)
    assert "missing split(s) ['test']" in message


def test_summary_zero_std(summary):
    summary["splits"]["train"]["std"] = [0.0, 0.0, 0.0]
    message = rejected(summary)
    assert "column 'std'" in message and "greater_than(0)" in message
    assert "split=train" in message


def test_summary_nan_mean(summary):
    summary["splits"]["test"]["mean"][1] = float("nan")
    message = rejected(summary)
    assert "column 'mean'" in message


def test_summary_inf_mean(summary):
    summary["splits"]["val"]["mean"] = [float("inf")] * 3
    message = rejected(summary)
    assert "column 'mean'" in message and "finite" in message


def test_summary_wrong_height(summary):
    summary["shape"] = [3, 9, 8]
    message = rejected(summary)
    assert "column 'height'" in message and "equal_to(8)" in message
    assert "column 'width'" not in message


def test_summary_wrong_shape_argument(summary):
    message = rejected(summary, shape=(1, 8, 8))
    assert "column 'channels'" in message


def test_summary_label_out_of_range(summary):
    summary["splits"]["train"]["class_counts"].append(3)
    message = rejected(summary)
    assert "column 'label'" in message and "in_range" in message


def test_summary_wrong_num_classes(summary):
    message = rejected(summary, k=5)
    assert "num_classes" in message and "split=train label=4" in message


def test_summary_empty_split(summary):
    summary["splits"]["val"].update(size=0, class_counts=[0] * K)
    message = rejected(summary)
    assert "column 'size'" in message and "column 'count'" in message


def test_summary_malformed():
    with pytest.raises(ValidationFailed, match="malformed"):
        schemas.validate_summary({"shape": [3, 8, 8]}, SHAPE, K)


def test_validation_failed_carries_cases(summary):
    summary["splits"]["val"]["class_counts"][0] = 0
    with pytest.raises(ValidationFailed) as info:
        schemas.validate_summary(summary, SHAPE, K)
    cases = info.value.failure_cases
    assert isinstance(cases, pd.DataFrame) and "count" in set(cases["column"])
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------------------------
# tensors


def test_tensors_accepted_up_to_the_last_label(prepared):
    splits = dict(prepared[0])
    x, y = splits["val"]
    splits["val"] = (x, torch.full_like(y, K - 1))  # every label the largest allowed one
    assert schemas.validate_tensors(splits, SHAPE, K) is None
    with pytest.raises(ValidationFailed, match="labels span"):
        schemas.validate_tensors(splits, SHAPE, K - 1)


@pytest.mark.parametrize("change, match", [
    (lambda x, y: (x.float(), y), "x dtype"),
    (lambda x, y: (x[:, :, :7], y), "x shape"),
    (lambda x, y: (x, y.int()), "y dtype"),
    (lambda x, y: (x, y[:-1]), "y shape"),
    (lambda x, y: (x, y + K), "labels span"),
    (lambda x, y: (x, y - 1), "labels span"),
    (lambda x, y: (x[:0], y[:0]), "empty"),
])
def test_tensors_rejected(prepared, change, match):
    splits = dict(prepared[0])
    splits["val"] = change(*splits["val"])
    with pytest.raises(ValidationFailed, match=match) as info:
        schemas.validate_tensors(splits, SHAPE, K)
    assert "split 'val'" in str(info.value)
    assert "split 'train'" not in str(info.value)


def test_tensors_missing_split(prepared):
    splits = {k: v for k, v in prepared[0].items() if k != "test"}
    with pytest.raises(ValidationFailed, match="split 'test' missing"):
        schemas.validate_tensors(splits, SHAPE, K)


# ----------------------------------------------------------------------------------------------
# history


def history() -> pd.DataFrame:
    return pd.DataFrame({
        "epoch": [1, 2, 3],
        "step": [100, 200, 300],
        "lr": [0.1, 0.05, 0.0],
        "train_loss": [1.2, 0.8, 0.6],
        "train_acc": [0.5, 0.7, 1.0],
        "val_acc": [0.45, 0.65, 0.7],
        "density": [1.0, 0.5, 0.2],
    })


def test_history_accepted():
    out = schemas.validate_history(history())
    assert list(out.columns) == schemas.HISTORY_COLUMNS
    # integer learning rates and losses are coerced to floats
    out = schemas.validate_history(history().assign(lr=[1, 1, 0]))
    assert out["lr"].dtype == np.float64


def test_history_extra_columns():
    df = history().assign(wall_s=[1.0, 2.0, 3.0])
    with pytest.raises(ValidationFailed, match="column 'wall_s'"):
        schemas.validate_history(df)
    assert "wall_s" in schemas.validate_history(df, extra=["wall_s"]).columns


def test_history_missing_column():
    with pytest.raises(ValidationFailed, match="column 'val_acc'"):
        schemas.validate_history(history().drop(columns="val_acc"))


BAD_HISTORY = [
    ("epoch", [0, 1, 2], "greater_than_or_equal_to(1)"),
    ("epoch", [1, 3, 3], "strictly increasing"),
    ("epoch", [1.0, 2.0, 3.0], "dtype"),
    ("step", [-1, 0, 1], "greater_than_or_equal_to(0)"),
    ("lr", [0.1, -0.1, 0.0], "greater_than_or_equal_to(0)"),
    ("lr", [0.1, np.inf, 0.0], "finite"),
    ("train_loss", [1.0, np.nan, 0.5], "not_nullable"),
    ("train_loss", [1.0, np.inf, 0.5], "finite"),
    ("train_acc", [0.5, 1.5, 0.5], "in_range"),
    ("val_acc", [0.5, -0.1, 0.5], "in_range"),
    ("density", [1.0, 0.0, 0.5], "in_range"),
    ("density", [1.0, 1.01, 0.5], "in_range"),
]


@pytest.mark.parametrize("column, values, check", BAD_HISTORY)
def test_history_rejected(column, values, check):
    with pytest.raises(ValidationFailed) as info:
        schemas.validate_history(history().assign(**{column: values}))
    message = str(info.value)
    assert f"column '{column}'" in message and check in message


def test_history_reports_every_failure():
    df = history().assign(step=[-1, 0, 1], val_acc=[0.1, 2.0, 0.3])
    with pytest.raises(ValidationFailed) as info:
        schemas.validate_history(df)
    assert "column 'step'" in str(info.value) and "column 'val_acc'" in str(info.value)


# the same history rules in plain Python (what a training process checks before writing its CSV)


@pytest.mark.parametrize("column, values, check", BAD_HISTORY)
def test_the_plain_history_check_refuses_what_the_schema_refuses(column, values, check):
    rows = history().assign(**{column: values}).to_dict("records")
    with pytest.raises(ValidationFailed, match=f"column '{column}' failed at row"):
        history_rules.check_history(rows)


def test_the_plain_history_check_accepts_what_the_schema_accepts():
    history_rules.check_history(history().to_dict("records"))
    rows = history().assign(lr=[1, 1, 0], val_loss=[0.5, None, 0.25]).to_dict("records")
    history_rules.check_history(rows, extra=["val_loss"])
    schemas.validate_history(pd.DataFrame(rows), extra=["val_loss"])
    with pytest.raises(ValidationFailed, match="column 'wall_s' not allowed"):
        history_rules.check_history(history().assign(wall_s=1.0).to_dict("records"))
    with pytest.raises(ValidationFailed, match="column 'val_acc' missing"):
        history_rules.check_history(history().drop(columns="val_acc").to_dict("records"))


def test_history_csv_is_byte_identical_to_pandas_writing_the_validated_table():
    g = np.random.default_rng(0)
    columns = schemas.HISTORY_COLUMNS + ["val_loss"]
    for trial in range(50):
        n = int(g.integers(1, 8))
        rows = [{"epoch": e + 1, "step": int(g.integers(0, 10**6)) * (e + 1),
                 "lr": [0.1, 1, 1e-5, 0.0, float(g.random())][trial % 5], "train_loss": float(g.random() * 10.0 ** g.integers(-8, 4)),
                 "train_acc": float(g.random()), "val_acc": round(float(g.random()), int(g.integers(0, 8))),
                 "density": 1.0 if trial % 7 == 0 else float(g.uniform(1e-4, 1)),
                 "val_loss": None if trial % 3 == 0 and e == 0 else float(g.random() * 1e3)} for e in range(n)]
        expected = schemas.validate_history(pd.DataFrame(rows)[columns], extra=("val_loss",)) \
            .to_csv(index=False, float_format="%.6g")
        assert history_rules.history_csv(rows, columns) == expected, rows


# ----------------------------------------------------------------------------------------------
# evaluation


def evaluation() -> pd.DataFrame:
    return pd.DataFrame({
        "model": ["dense", "ticket_0", "ticket_1", "ensemble"],
        "test_acc": [0.91, 0.89, 0.88, 0.92],
        "test_loss": [0.30, 0.35, 0.36, None],
        "density": [None, 0.1, 0.1, 0.2],
    })


def test_evaluation_accepted():
    out = schemas.validate_evaluation(evaluation())
    assert out["density"].isna().tolist() == [True, False, False, False]
    assert out["test_loss"].dtype == np.float64
    schemas.validate_evaluation(evaluation().assign(kind=["dense", "sparse", "sparse", "ens"]))


@pytest.mark.parametrize("column, values, check", [
    ("model", ["a", "a", "b", "c"], "field_uniqueness"),
    ("model", ["a", None, "b", "c"], "not_nullable"),
    ("test_acc", [0.9, 1.1, 0.5, 0.5], "in_range"),
    ("test_acc", [0.9, None, 0.5, 0.5], "not_nullable"),
    ("test_loss", [0.3, -0.1, 0.2, None], "greater_than_or_equal_to(0)"),
    ("test_loss", [0.3, np.inf, 0.2, None], "finite"),
    ("density", [None, 0.0, 0.1, 0.1], "in_range"),
    ("density", [None, 1.5, 0.1, 0.1], "in_range"),
])
def test_evaluation_rejected(column, values, check):
    with pytest.raises(ValidationFailed) as info:
        schemas.validate_evaluation(evaluation().assign(**{column: values}))
    message = str(info.value)
    assert f"column '{column}'" in message and check in message


def test_evaluation_missing_column():
    with pytest.raises(ValidationFailed, match="column 'test_acc'"):
        schemas.validate_evaluation(evaluation().drop(columns="test_acc"))
