"""The landscape between the tickets: points between two sparse models (suptickets.landscape), the
barrier, the table's schema, the figure, what lands in W&B, the stage's errors, and the smoke run's
metrics/landscape.json against its metrics/evaluate.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import error_lines, run_stage, tree
from suptickets import landscape, report, runtime
from suptickets.errors import ValidationFailed
from suptickets.figures import plot_landscape
from suptickets.schemas import validate_landscape
from suptickets.superpose import average, reprune

SHAPES = {"a.weight": (6, 5), "b.weight": (4, 6)}
COUNTS = [9, 5]  # per masked tensor: the budget, 14 weights


def sparse_model(seed: int, same_masks_as: int | None = None) -> tuple[dict, dict]:
    """A state (two masked weights, a bias, BatchNorm statistics, a counter) and its masks, exactly
    COUNTS weights per masked tensor, zero outside them."""
    g = torch.Generator().manual_seed(seed)
    mg = torch.Generator().manual_seed(seed if same_masks_as is None else same_masks_as)
    state, masks = {}, {}
    for (key, shape), count in zip(SHAPES.items(), COUNTS):
        mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
        mask[torch.randperm(mask.numel(), generator=mg)[:count]] = True
        masks[key] = mask.view(shape)
        state[key] = torch.where(masks[key], torch.randn(shape, generator=g), 0.0)
    state["b.bias"] = torch.randn(4, generator=g)
    state["bn.running_var"] = torch.rand(4, generator=g) + 0.5
    state["bn.num_batches_tracked"] = torch.tensor(10 * (seed + 1))
    return state, masks


def held(masks: dict) -> list[int]:
    return [int(m.sum()) for m in masks.values()]


# ----------------------------------------------------------------------------------------------
# interpolate


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_the_end_points_are_the_two_models_exactly(scope):
    a, b = sparse_model(0), sparse_model(1)
    for alpha, (state, masks) in ((0.0, a), (1.0, b)):
        got_state, got_masks = landscape.interpolate(*a, *b, alpha, counts=COUNTS, scope=scope)
        assert got_state.keys() == state.keys() and got_masks.keys() == masks.keys()
        assert all(torch.equal(got_state[k], state[k]) and got_state[k].dtype == state[k].dtype for k in state)
        assert all(torch.equal(got_masks[k], masks[k]) for k in masks)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_a_point_between_is_mixed_and_re_pruned_to_the_budget_as_superpose_does(scope, alpha):
    a, b = sparse_model(0), sparse_model(1)
    state, masks = landscape.interpolate(*a, *b, alpha, counts=COUNTS, scope=scope)
    assert sum(held(masks)) == sum(COUNTS)
    if scope == "layerwise":
        assert held(masks) == COUNTS
    for key in ("b.bias", "bn.running_var"):  # floating tensors: (1 - α)·a + α·b
        torch.testing.assert_close(state[key], (1 - alpha) * a[0][key] + alpha * b[0][key], rtol=0, atol=1e-6)
    assert state["bn.num_batches_tracked"].dtype == torch.int64
    assert int(state["bn.num_batches_tracked"]) == int(b[0]["bn.num_batches_tracked"])  # not averaged
    expected_state, expected_masks = reprune(average(a[0], b[0], alpha), list(SHAPES), COUNTS, scope)
    for key in SHAPES:  # the package's own re-prune, bit for bit
        assert torch.equal(masks[key], expected_masks[key]) and torch.equal(state[key], expected_state[key])
        assert bool((state[key][~masks[key]] == 0).all())
    assert a[0]["a.weight"].count_nonzero() <= COUNTS[0]  # the inputs are untouched


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_models_on_the_same_masks_keep_them_between(scope):
    """Both ends use the same weights: every point is already sparse at the budget, nothing is
    re-pruned (a weight that is exactly zero inside the masks stays in them)."""
    a, b = sparse_model(0), sparse_model(1, same_masks_as=0)
    first = int(a[1]["a.weight"].flatten().nonzero()[0])
    a[0]["a.weight"].view(-1)[first] = b[0]["a.weight"].view(-1)[first] = 0.0  # inside the masks, zero in both
    state, masks = landscape.interpolate(*a, *b, 0.3, counts=COUNTS, scope=scope)
    assert all(torch.equal(masks[k], a[1][k]) for k in SHAPES)
    for key in SHAPES:
        torch.testing.assert_close(state[key], 0.7 * a[0][key] + 0.3 * b[0][key], rtol=0, atol=1e-6)


def test_interpolate_refuses_what_is_not_a_line_between_two_models():
    a, b = sparse_model(0), sparse_model(1)
    with pytest.raises(ValueError, match="alpha"):
        landscape.interpolate(*a, *b, 1.5, counts=COUNTS, scope="global")
    with pytest.raises(ValueError, match="masked tensors differ"):
        landscape.interpolate(*a, b[0], {"a.weight": b[1]["a.weight"]}, 0.5, counts=COUNTS, scope="global")
    with pytest.raises(ValueError, match="counts"):
        landscape.interpolate(*a, *b, 0.5, counts=[14], scope="global")
    with pytest.raises(ValueError, match="scope"):
        landscape.interpolate(*a, *b, 0.5, counts=COUNTS, scope="perlayer")


# ----------------------------------------------------------------------------------------------
# barrier, lines


def test_the_barrier_is_the_largest_dip_below_the_chord():
    alphas = landscape.ALPHAS
    assert len(alphas) == 11 and alphas[0] == 0.0 and alphas[-1] == 1.0 and alphas[3] == 0.3
    flat = [0.9] * 11
    assert landscape.barrier(alphas, flat) == (0.0, 0.0)
    dip = [0.9, 0.85, 0.7, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.8]  # chord from 0.9 to 0.8
    height, where = landscape.barrier(alphas, dip)
    assert where == 0.3 and height == pytest.approx(0.7 * 0.9 + 0.3 * 0.8 - 0.5)
    above = [0.8, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.9, 0.85]
    assert landscape.barrier(alphas, above) == (0.0, 0.0)  # above the chord: no barrier
    with pytest.raises(ValueError):
        landscape.barrier(alphas, flat[:-1])


def test_the_lines_go_from_t0_to_each_ticket_and_from_t0_and_each_ticket_to_s():
    pairs = landscape.line_pairs(["ticket_01", "ticket_02", "ticket_03"])
    assert pairs == [("warmup", "ticket_01"), ("warmup", "ticket_02"), ("warmup", "ticket_03"),
                     ("warmup", "superposed"), ("ticket_01", "superposed"), ("ticket_02", "superposed"),
                     ("ticket_03", "superposed")]
    assert landscape.line_name("ticket_02", "superposed") == "ticket_02_to_superposed"


# ----------------------------------------------------------------------------------------------
# the table, the figure, W&B, the report's link


def curves(tickets=("ticket_01", "ticket_02")) -> tuple[dict, dict]:
    """Lines and end points as the stage writes them (metrics/landscape.json)."""
    acc = {"warmup": 0.86, "superposed": 0.88, **{t: 0.87 + 0.001 * i for i, t in enumerate(tickets)}}
    ends = {n: {"model": n, "test_acc": v, "test_loss": 1 - v, "density": 0.1, "bn_recomputed_test_acc": v + 0.002,
                "bn_recomputed_test_loss": 0.98 - v} for n, v in acc.items()}
    lines = {}
    for i, (a, b) in enumerate(landscape.line_pairs(list(tickets))):
        x = list(landscape.ALPHAS)
        y = [(1 - t) * acc[a] + t * acc[b] - 0.04 * (i + 1) * t * (1 - t) for t in x]
        lines[landscape.line_name(a, b)] = {"from": a, "to": b, "alpha": x, "test_acc": y,
                                            "test_loss": [1 - v for v in y], "barrier": 0.01 * (i + 1)}
    return lines, ends


def points_table(lines: dict) -> pd.DataFrame:
    return pd.DataFrame(landscape.points(lines))


def test_the_landscape_tables_are_validated():
    lines, ends = curves()
    points, endpoints = validate_landscape(points_table(lines), pd.DataFrame(list(ends.values())), landscape.ALPHAS)
    assert len(points) == 5 * 11 and len(endpoints) == 4
    short = points_table(lines).drop(index=3)  # a line without its point at α = 0.3
    with pytest.raises(ValidationFailed, match="every_line_at_the_alphas"):
        validate_landscape(short, pd.DataFrame(list(ends.values())), landscape.ALPHAS)
    with pytest.raises(ValidationFailed, match="column 'test_acc' failed check 'in_range"):
        validate_landscape(points_table(lines).assign(test_acc=1.2), pd.DataFrame(list(ends.values())), landscape.ALPHAS)
    bad = pd.DataFrame(list(ends.values())).assign(bn_recomputed_test_loss=float("nan"))
    with pytest.raises(ValidationFailed, match="column 'bn_recomputed_test_loss'"):
        validate_landscape(points_table(lines), bad, landscape.ALPHAS)


def test_the_figure_is_a_png_drawn_byte_identical_twice(tmp_path):
    lines, ends = curves(("ticket_01", "ticket_02", "ticket_03"))
    first = plot_landscape(lines, ends, tmp_path / "a" / "landscape.png")
    again = plot_landscape(lines, ends, tmp_path / "b" / "landscape.png")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 2_000_000
    assert again.read_bytes() == data
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_the_wandb_run_holds_the_curves_against_alpha_and_the_points(tmp_path):
    import wandb
    from test_tracking import read_wandb_records

    lines, ends = curves()
    figure = plot_landscape(lines, ends, tmp_path / "landscape.png")
    run = wandb.init(mode="offline", dir=tmp_path, project="suptickets-test", job_type="landscape",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True))
    folder = Path(run.dir).parent
    landscape.log_to_wandb(run, lines, figure)
    run.finish()
    wandb.teardown()
    records = read_wandb_records(next(folder.glob("*.wandb")))
    rows = [{tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.HasField("history")]
    curve = [r for r in rows if ("alpha",) in r]
    assert [r[("alpha",)] for r in curve] == list(landscape.ALPHAS)
    assert [r[("curve/warmup_to_ticket_01/test_acc",)] for r in curve] == \
        pytest.approx(lines["warmup_to_ticket_01"]["test_acc"])
    assert [r[("curve/ticket_02_to_superposed/test_loss",)] for r in curve] == \
        pytest.approx(lines["ticket_02_to_superposed"]["test_loss"])
    assert any(r.get(("landscape/points", "nrows")) == 5 * 11 for r in rows)
    assert any(r.get(("landscape/figure", "_type")) == "image-file" for r in rows)
    defined = {r.metric.glob_name or r.metric.name: r.metric.step_metric for r in records if r.HasField("metric")}
    assert defined.get("curve/*") == "alpha"


def test_the_report_links_the_figure_statically():
    text = report.landscape_markdown(Path("plots") / report.LANDSCAPE_FIGURE, base=Path("reports"))
    assert "](../plots/landscape.png)" in text and "`dvc repro landscape`" in text


# ----------------------------------------------------------------------------------------------
# the stage's errors


SMALL_MLP = {"seed": 0, "model": {"name": "mlp", "hidden": [64, 32], "batch_norm": True}, "train": {}}


def test_missing_tickets_are_one_line_exit_2_and_nothing_is_written(small_project):
    before = tree(small_project)
    proc = run_stage(small_project, "landscape")
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc) == ["error: landscape: models/tickets: no ticket_*.safetensors; run the tickets "
                                 "stage first"]
    assert tree(small_project) == before


def test_a_superposed_model_without_the_masks_of_t0_is_one_line_exit_2(small_project):
    from suptickets.artifacts import read_json
    from suptickets.sparsity.engine import init_masks

    summary = read_json(small_project / "data/prepared/summary.json")
    model = runtime.new_model(SMALL_MLP, summary, "cpu")
    runtime.save_model(small_project / "models/superposed.safetensors", model)  # dense: no masks
    init_masks(model, 0.1, "erk", False, torch.Generator().manual_seed(0))
    runtime.save_model(small_project / "models/warmup.safetensors", model)
    runtime.save_model(small_project / "models/tickets/ticket_01.safetensors", model)
    before = tree(small_project)
    proc = run_stage(small_project, "landscape")
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert line.startswith("error: landscape: models/superposed.safetensors: masks ['net.1.weight', "), line
    assert line.endswith("differ from models/warmup.safetensors's masked layers"), line
    assert tree(small_project) == before


# ----------------------------------------------------------------------------------------------
# the smoke run: the curves end where evaluate measured the models


@pytest.mark.e2e
def test_the_smoke_runs_curves_end_at_the_evaluated_accuracies(smoke_repo):
    got = json.loads((smoke_repo / "metrics/landscape.json").read_text())
    evaluated = json.loads((smoke_repo / "metrics/evaluate.json").read_text())
    tickets = [f"ticket_{k:02d}" for k in range(1, 5)]  # the smoke preset: 4 tickets
    names = [landscape.line_name(a, b) for a, b in landscape.line_pairs(tickets)]
    assert set(got["lines"]) == set(names) and len(names) == 9
    assert set(got["endpoints"]) == {"warmup", *tickets, "superposed"}
    for name in names:
        line = got["lines"][name]
        assert line["alpha"] == list(landscape.ALPHAS) and len(line["test_acc"]) == len(line["test_loss"]) == 11
        for end, i in ((line["from"], 0), (line["to"], -1)):  # exactly evaluate's figures
            assert line["test_acc"][i] == evaluated["test_acc"][end], (name, end)
            assert line["test_loss"][i] == evaluated["test_loss"][end], (name, end)
        assert (line["barrier"], line["barrier_alpha"]) == landscape.barrier(line["alpha"], line["test_acc"])
        assert line["barrier"] >= 0
    for name, end in got["endpoints"].items():
        assert end["test_acc"] == evaluated["test_acc"][name] and end["density"] == evaluated["density"][name]
    # the superposed model's statistics were recomputed by superpose on the same data: the same again
    assert got["endpoints"]["superposed"]["bn_recomputed_test_acc"] == evaluated["test_acc"]["superposed"]
    assert got["budget"] > 0 and got["scope"] == "global" and got["bn_update"] is True
    assert (smoke_repo / "plots/landscape.png").stat().st_size > 20_000
    summary = (smoke_repo / "reports/summary.md").read_text()
    assert "](../plots/landscape.png)" in summary and "`dvc repro landscape`" in summary
    from test_tracking import read_wandb_records

    runs = [read_wandb_records(next(r.glob("*.wandb"))) for r in (smoke_repo / "wandb").glob("offline-run-*")]
    [records] = [rec for rec in runs if next(x.run.job_type for x in rec if x.HasField("run")) == "landscape"]
    logged = {tuple(i.nested_key) or (i.key,) for x in records if x.HasField("history") for i in x.history.item}
    assert {(f"curve/{name}/test_acc",) for name in names} <= logged and ("landscape/points", "nrows") in logged
