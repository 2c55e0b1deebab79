"""The report: figures, the Markdown summary, the rebuilt per-step lr, the mask overlap, and what
lands in a W&B offline run, on a tiny run written to tmp_path (real files, no mocks)."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from suptickets import report
from suptickets.artifacts import load_tensors, model_tensors, save_tensors, state_from_file, write_json
from suptickets.schedules import multistep_lr, triangular_lr
from suptickets.sparsity.masks import jaccard
from test_tracking import read_wandb_records

SPE = 5  # steps per epoch of the tiny run
CFG = {
    "name": "tiny", "seed": 3,
    "data": {"name": "fashion_mnist"}, "model": {"name": "mlp"},
    "train": {"epochs": 8, "lr": 0.1, "milestones": [0.5, 0.75], "gamma": 0.1},
    "dst": {"method": "granet", "density": 0.1, "distribution": "erk"},
    "tickets": {"cycle_rate": 0.5, "cycle_epochs": 2, "lr_min": 0.001, "lr_max": 0.05},
    "superpose": {"method": "caa", "cima_factor": 0.5, "reprune": "each", "scope": "global"},
}  # 8 epochs: 4 warmup + 2 tickets x 2 epochs
EVALUATE = {
    "target_density": 0.1,
    "test_acc": {"dense": 0.91, "sparse_baseline": 0.88, "warmup": 0.87, "ticket_01": 0.875,
                 "ticket_02": 0.878, "superposed": 0.885, "ticket_ensemble": 0.89},
    "test_loss": {"dense": 0.3, "sparse_baseline": 0.35, "warmup": 0.37, "ticket_01": 0.36,
                  "ticket_02": 0.355, "superposed": 0.34, "ticket_ensemble": 0.33},
    "density": {"sparse_baseline": 0.1, "warmup": 0.1, "ticket_01": 0.1, "ticket_02": 0.1, "superposed": 0.1},
    "gain": {"vs_sparse_baseline": 0.005, "vs_best_ticket": 0.007},
}
SHAPES = {"net.1.weight": (16, 24), "net.4.weight": (8, 16), "net.7.weight": (3, 8)}


def _history(epochs, lr_of_epoch, density, first_step=0) -> pd.DataFrame:
    rows = []
    for n, e in enumerate(epochs, start=1):
        acc = 0.7 + 0.02 * e
        rows.append({"epoch": e, "step": first_step + n * SPE, "lr": lr_of_epoch(e), "train_loss": 1.0 / e,
                     "train_acc": acc, "val_acc": acc - 0.01, "val_loss": 1.1 / e, "density": density(e)})
    return pd.DataFrame(rows)


def _tickets_lr(e: int) -> float:  # the lr of the last step of epoch e (1-based) in its cycle
    j = ((e - 5) % 2) * SPE + SPE - 1
    return triangular_lr(j, 2 * SPE, 0.001, 0.05)


def _random_masks(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=g) < 0.3 for k, s in SHAPES.items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run on disk: the history CSVs, evaluate.json and model files with masks."""
    root = tmp_path_factory.mktemp("run")
    (root / "plots").mkdir()
    granet = lambda e: max(0.1, 0.5 - 0.15 * (e - 1))  # noqa: E731  (a pruning schedule shows in the density plot)
    warm_lr = lambda e: multistep_lr(e - 1, 4, 0.1, [0.5, 0.75], 0.1)  # noqa: E731
    _history(range(1, 9), lambda e: multistep_lr(e - 1, 8, 0.1, [0.5, 0.75], 0.1), lambda e: 1.0).to_csv(
        root / "plots/dense.csv", index=False)
    _history(range(1, 9), lambda e: multistep_lr(e - 1, 8, 0.1, [0.5, 0.75], 0.1), granet).to_csv(
        root / "plots/sparse_baseline.csv", index=False)
    _history(range(1, 5), warm_lr, granet).to_csv(root / "plots/warmup.csv", index=False)
    _history(range(5, 9), _tickets_lr, lambda e: 0.1, first_step=4 * SPE).to_csv(root / "plots/tickets.csv", index=False)
    write_json(root / "metrics/evaluate.json", EVALUATE)
    for i, name in enumerate(["warmup", "tickets/ticket_01", "tickets/ticket_02", "superposed"]):
        masks = _random_masks(i)
        state = {k: torch.randn(s) for k, s in SHAPES.items()}
        state.update({k[: -len("weight")] + "weight_mask": m for k, m in masks.items()})
        save_tensors(root / f"models/{name}.safetensors", model_tensors(state))
    return root


def _load(run_dir: Path):
    histories = {n: report.read_history(run_dir / f"plots/{n}.csv")
                 for n in ["dense", "sparse_baseline", "warmup", "tickets"]}
    masks = {name: state_from_file(load_tensors(run_dir / f"models/{name}.safetensors"))[1]
             for name in ["warmup", "tickets/ticket_01", "tickets/ticket_02", "superposed"]}
    return histories, {"warmup": masks["warmup"], "tickets": [masks["tickets/ticket_01"], masks["tickets/ticket_02"]],
                       "superposed": masks["superposed"]}


@pytest.fixture(scope="module")
def figures(run_dir) -> dict[str, Path]:
    histories, masks = _load(run_dir)
    evaluate = json.loads((run_dir / "metrics/evaluate.json").read_text())
    return report.write_figures(CFG, histories, evaluate, masks, run_dir / "plots")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name}: not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_every_figure_is_a_png_of_sensible_size(figures, run_dir):
    import matplotlib.image

    assert set(figures) == set(report.FIGURES)
    for key, path in figures.items():
        assert path == run_dir / "plots" / f"{key}.png" and path.is_file()
        width, height = _png_size(path)
        assert 400 <= width <= 3000 and 300 <= height <= 2500, (key, width, height)
        assert 5_000 < path.stat().st_size < 2_000_000, key
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[:2] == (height, width)
        assert pixels[..., :3].std() > 0.05, f"{key}: the image is (almost) blank"
    assert not list((run_dir / "plots").glob(".*.tmp")), "no temporary files left behind"


def test_figures_are_byte_identical_when_redrawn(figures, run_dir, tmp_path):
    histories, masks = _load(run_dir)
    again = report.write_figures(CFG, histories, EVALUATE, masks, tmp_path)
    for key, path in figures.items():
        assert again[key].read_bytes() == path.read_bytes(), key


def test_rebuilt_lr_per_step_matches_the_schedules(run_dir):
    histories, _ = _load(run_dir)
    lr = report.lr_per_step(CFG, histories["warmup"], histories["tickets"])
    assert len(lr) == 8 * SPE and list(lr["step"]) == list(range(8 * SPE))
    at = lr.set_index("step")
    # warmup: 4 epochs, milestones at epochs 2 and 3 (0-based)
    for step, epoch0 in [(0, 0), (SPE * 2 - 1, 1), (SPE * 2, 2), (SPE * 3 + 2, 3)]:
        assert at.loc[step, "lr"] == multistep_lr(epoch0, 4, 0.1, [0.5, 0.75], 0.1), step
        assert at.loc[step, "phase"] == "warmup" and at.loc[step, "cycle"] == 0
    # cycles of 2 epochs = 10 steps each, from step 20
    for step, k, j in [(20, 1, 0), (24, 1, 4), (25, 1, 5), (29, 1, 9), (30, 2, 0), (37, 2, 7)]:
        assert at.loc[step, "lr"] == triangular_lr(j, 2 * SPE, 0.001, 0.05), step
        assert at.loc[step, "cycle"] == k and at.loc[step, "phase"] == "tickets"
    assert at.loc[20, "lr"] == at.loc[29, "lr"] == 0.001  # lr_min on a cycle's first and last step
    assert report.lr_mismatches(lr, [histories["warmup"], histories["tickets"]]) == []
    wrong = histories["tickets"].copy()
    wrong.loc[1, "lr"] = 0.02
    assert report.lr_mismatches(lr, [wrong]) == [f"epoch 6: logged lr 0.02, rebuilt {at.loc[29, 'lr']}"]


def test_lr_rebuild_refuses_a_history_that_does_not_fit_the_config(run_dir):
    histories, _ = _load(run_dir)
    with pytest.raises(ValueError, match="warmup epochs"):
        report.lr_per_step({**CFG, "train": {**CFG["train"], "epochs": 10}}, histories["warmup"], histories["tickets"])


def test_jaccard_matrix_is_symmetric_with_ones_on_the_diagonal(run_dir):
    _, masks = _load(run_dir)
    sets = report.mask_sets(masks["warmup"], masks["tickets"], masks["superposed"])
    labels, m = report.jaccard_matrix(sets)
    assert labels == ["T0 (warmup)", "T1", "T2", "superposed"]
    assert m.shape == (4, 4)
    assert np.array_equal(m, m.T)
    assert np.all(np.diag(m) == 1.0)
    assert np.all((m >= 0) & (m < 1) | np.eye(4, dtype=bool))  # random masks never coincide
    assert m[0, 3] == jaccard(list(masks["warmup"].values()), list(masks["superposed"].values()))


def test_summary_has_the_config_the_table_the_gains_and_the_figures(figures, run_dir):
    md = report.summary_markdown(CFG, EVALUATE, figures, base=run_dir / "reports")
    assert "`tiny`: data fashion_mnist, model mlp, DST granet at density 0.1 (erk), 8 epochs = 4 warmup + " \
           "2 tickets × 2 epochs, cyclic lr 0.001–0.05, superpose caa, re-prune each, scope global, seed 3" in md
    assert "| dense | 0.9100 | 0.3000 | 1 |" in md
    assert "| sparse_baseline | 0.8800 | 0.3500 | 0.1 |" in md
    assert "| superposed | 0.8850 | 0.3400 | 0.1 |" in md
    assert "| ticket_ensemble (2× inference) | 0.8900 | 0.3300 | — |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(EVALUATE["test_acc"])
    assert "- superposed − sparse_baseline: +0.50 points" in md
    assert "- superposed − best ticket (ticket_02): +0.70 points" in md
    assert "the superposed model beat sparse_baseline: test accuracy 0.8850 vs 0.8800 (+0.50 points)." in md
    for key in report.FIGURES:
        assert f"](../plots/{key}.png)" in md
        assert (run_dir / "reports" / f"../plots/{key}.png").resolve().is_file()


def test_verdict_says_plainly_when_superposition_did_not_help():
    worse = {"test_acc": {"sparse_baseline": 0.9, "superposed": 0.8975}}
    assert report.verdict(worse) == ("On this run the superposed model did not beat sparse_baseline: "
                                     "test accuracy 0.8975 vs 0.9000 (-0.25 points).")
    assert "tied with" in report.verdict({"test_acc": {"sparse_baseline": 0.9, "superposed": 0.9}})
    assert report.verdict({"test_acc": {"superposed": 0.9}}).startswith("No comparison")


# ----------------------------------------------------------------------------------------------
# W&B: write an offline run the way the stage does, read the transaction log back (test_tracking)


def test_wandb_offline_run_holds_the_table_images_summary_and_model_references(figures, run_dir, tmp_path):
    import wandb

    rows = report.evaluation_rows(EVALUATE)
    summary = {f"test_acc.{r['model']}": r["test_acc"] for r in rows}
    summary["superposed_beats_sparse_baseline"] = True
    models = [{"name": "superposed", "path": run_dir / "models/superposed.safetensors",
               "metadata": {"dvc_out": "models/superposed.safetensors", "dvc_md5": "0123abcd"}}]
    run = wandb.init(mode="offline", dir=tmp_path, project="suptickets-test", job_type="report",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True))
    run_dir_wb = Path(run.dir).parent
    report.log_to_wandb(run, rows, figures, summary, models)
    run.finish()
    wandb.teardown()  # finish() can return before wandb-core has flushed the transaction log

    log = next(run_dir_wb.glob("*.wandb"))
    records = read_wandb_records(log)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "header" and "run" in kinds and kinds[-1] == "exit"

    summary_seen = {u.key: json.loads(u.value_json) for r in records if r.HasField("summary")
                    for u in r.summary.update if u.key}
    assert summary_seen["test_acc.superposed"] == pytest.approx(0.885)
    assert summary_seen["test_acc.sparse_baseline"] == pytest.approx(0.88)
    assert summary_seen["superposed_beats_sparse_baseline"] is True

    history = {}
    for r in records:
        if r.HasField("history"):
            for item in r.history.item:
                keys = list(item.nested_key) or [item.key]
                history[tuple(keys)] = json.loads(item.value_json)
    assert history[("report/evaluate", "_type")] == "table-file"
    assert history[("report/evaluate", "nrows")] == len(EVALUATE["test_acc"])
    assert history[("report/evaluate", "ncols")] == 4
    table = json.loads((run_dir_wb / "files" / history[("report/evaluate", "path")]).read_text())
    assert table["columns"] == ["model", "test_acc", "test_loss", "density"]
    assert ["superposed", 0.885, 0.34, 0.1] in table["data"]
    assert ["dense", 0.91, 0.3, 1.0] in table["data"]
    for key in report.FIGURES:
        assert history[(f"report/{key}", "_type")] == "image-file", key
        assert (run_dir_wb / "files" / history[(f"report/{key}", "path")]).is_file()

    models_logged = [r.artifact for r in records if r.HasField("artifact") and r.artifact.type == "model"]
    assert [a.name for a in models_logged] == ["model-superposed"]
    art = models_logged[0]
    assert json.loads(art.metadata) == {"dvc_out": "models/superposed.safetensors", "dvc_md5": "0123abcd"}
    [entry] = art.manifest.contents
    assert entry.ref == "file://" + str((run_dir / "models/superposed.safetensors").resolve())
    assert not list(run_dir_wb.rglob("*.safetensors")), "weights are referenced, never copied into the run"


def test_model_references_name_the_dvc_remote_copy_beside_the_local_file(run_dir, tmp_path):
    """A colleague cannot open a path on the machine that ran the report: each model artifact also
    references the file's object in the team's DVC remote, named under dvc-remote/, without contacting
    the remote (checksum off: the md5 is in the metadata): an S3 remote by its URL (ssh:// here; s3:// and gs:// where W&B's client for them, boto3 or
    google-cloud-storage, is installed), a folder
    remote as file:// where the object is already there (pushed before), and not where it is not yet
    (W&B refuses a missing file; the metadata still names where `make push` puts it)."""
    import wandb

    folder = tmp_path / "team-remote" / "files" / "md5"
    (folder / "01").mkdir(parents=True)
    (folder / "01" / "23abcd").write_bytes(b"pushed before")
    remotes = {"superposed": f"{folder}/01/23abcd", "dense": "ssh://team-host/srv/dvc/files/md5/45/67ef",
               "sparse_baseline": "s3://team-bucket/suptickets/files/md5/ab/cdef",
               "warmup": f"{folder}/89/not-pushed-yet"}
    models = [{"name": n, "path": run_dir / "models/superposed.safetensors", "file_name": f"{n}.safetensors",
               "metadata": {"dvc_md5": "x", "dvc_remote_object": remote}} for n, remote in remotes.items()]
    models.append({"name": "tickets", "path": run_dir / "models/superposed.safetensors", "metadata": {"dvc_md5": "y"}})
    run = wandb.init(mode="offline", dir=tmp_path, project="suptickets-test", job_type="report",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True))
    run_dir_wb = Path(run.dir).parent
    report.log_to_wandb(run, [], {}, {}, models)
    run.finish()
    wandb.teardown()

    refs = {r.artifact.name: {e.path: e.ref for e in r.artifact.manifest.contents}
            for r in read_wandb_records(next(run_dir_wb.glob("*.wandb"))) if r.HasField("artifact")}
    local = "file://" + str((run_dir / "models/superposed.safetensors").resolve())
    assert refs["model-superposed"] == {"superposed.safetensors": local,
                                        "dvc-remote/superposed.safetensors": f"file://{folder}/01/23abcd"}
    assert refs["model-dense"] == {"dense.safetensors": local, "dvc-remote/dense.safetensors": remotes["dense"]}
    s3 = {"dvc-remote/sparse_baseline.safetensors": remotes["sparse_baseline"]} if importlib.util.find_spec("boto3") else {}
    assert refs["model-sparse_baseline"] == {"sparse_baseline.safetensors": local, **s3}
    assert refs["model-warmup"] == {"warmup.safetensors": local}  # not in the folder remote yet
    assert refs["model-tickets"] == {"superposed.safetensors": local}  # no remote configured
    assert sorted(p.name for p in folder.rglob("*")) == ["01", "23abcd"], "the remote is referenced, never written"
