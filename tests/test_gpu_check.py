"""The GPU check (scripts/gpu_check.sh): its dry run on the CPU end to end (the real run's plan, the
smoke DAG of fashion_mnist_resnet twice, the throughput benchmark with 1 and 8 lanes, the gain runs as
lanes and their statistics), a run cut by its budget or by SIGTERM still reporting, bad arguments,
and the pure parts (plan, pace, statistics)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
import gpu_check_plan as plan
from gpu_check_jobs import EPOCH_LINE, Job, imported_top_level, predicted_end
from gpu_check_run import EVALUATE_KEYS, versus
from safetensors.torch import load_file, save_file
from suptickets.gains import mean_sd_half, row, summarize, t975, table_row

SCRIPT = ROOT / "scripts/gpu_check.sh"


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_WAIT_POLICY="PASSIVE", PYTHON=sys.executable)
    e.pop("WANDB_MODE", None)
    return e


def check(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run", "--work", str(tmp_path / "work"),
                           *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_dry_run_plans_and_reports_parity_throughput_and_gain(tmp_path):
    proc = check(tmp_path, "--budget-s", "3600")  # a budget no machine reaches: what runs must not hang on its speed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    d = json.loads((out / "gpu_check.json").read_text())
    assert d["dry_run"] and d["status"] == "complete" and d["environment"]["device"] == "CPU"
    assert d["budget_s"] == 3600 and d["elapsed_s"] > 0

    # the plan shown is the real run's: 8 seeds per cell, 8 lanes to a process, 420 s on one GPU
    pl = d["plan"]
    assert [c["cell"] for c in pl["cells"]] == ["0.05", "0.02", "0.05 cosine"] and pl["seeds"] >= 8
    assert pl["cells"][2]["overrides"] == ["dst.density=0.05", "dst.prune_rate_decay=cosine"]
    g = pl["gain"]
    assert g["runs"] == 3 * pl["seeds"] and g["epochs_per_run"] == 40 and g["lanes_per_process"] == 8
    assert g["budget_s"] == 420 and g["processes"] == 3
    assert g["fits"] == (g["predicted_s"][1] <= g["available_s"])
    assert g["verdict"].startswith("fits" if g["fits"] else "does not fit")  # today's eager step: it does not
    assert all(k in g["sources"] for k in ("setup_s", "parity_s", "epochs_per_s"))
    assert "2026-11-30" in g["sources"]["epochs_per_s"]

    p = d["parity"]
    assert p["status"] == "passed" and list(p["modes"]) == ["eager"]
    assert [m["mode"] for m in p["not_run"]] == ["graphed"] and "CUDA graphs need a CUDA device" in p["not_run"][0]["why"]
    assert "graphed_vs_eager" not in p  # compared only where both modes ran

    # the comparison a real run makes of graphed against eager, on the dry run's two eager runs
    work = tmp_path / "work"
    same = versus(work / "parity_eager_a", work / "parity_eager_b")
    assert same["identical_models"] and same["summary"] == "bit-identical models"
    assert set(same["max_abs_weight_difference"].values()) == {0.0} and set(same["test_acc_points"].values()) == {0.0}
    moved = work / "parity_moved"
    shutil.copytree(work / "parity_eager_b", moved)
    tensors = load_file(str(moved / "models/superposed.safetensors"))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 4)
    tensors[name][0, 0, 0, 0] += 0.125
    save_file(tensors, str(moved / "models/superposed.safetensors"))
    far = versus(work / "parity_eager_a", moved)
    assert not far["identical_models"] and far["differing_files"] == ["models/superposed.safetensors"]
    assert far["max_abs_weight_difference"]["models/superposed.safetensors"] == 0.125
    assert far["summary"].startswith("models differ: largest |weight difference| 0.125")
    m = p["modes"]["eager"]
    c = m["checks"]
    assert c["runs_ok"] and c["evaluate_keys"] and c["densities_exact"] and c["accuracies_sane"], c
    assert c["densities"] == [c["expected_density"]] and abs(c["expected_density"] - 0.05) < 5e-4
    assert c["min_test_acc"] > 0.2
    assert c["models_identical"] and c["differing_files"] == []  # same seed, same machine: bit-identical
    assert c["missing_imports"] == []  # neither wandb nor dvc is imported
    for r in m["runs"]:
        e = r["evaluate"]
        assert set(EVALUATE_KEYS) <= set(e)
        assert set(e["test_acc"]) == {"dense", "sparse_baseline", "warmup", "ticket_01", "ticket_02", "superposed",
                                      "ticket_ensemble"}
        assert r["epochs_done"] == r["epochs_total"] == 18  # dense 6, sparse_baseline 6, warmup 4 + tickets 2
    tickets = json.loads((tmp_path / "work/parity_eager_a/metrics/tickets.json").read_text())["tickets"]
    assert all(0 < t["jaccard_prev"] < 1 for t in tickets.values())  # masks compared name by name

    t = d["throughput"]
    assert t["status"] == "done" and t["rc"] == 0
    assert [(r["experiment"], r["model"], r["lanes"]) for r in t["results"]] == [
        ("fashion_mnist_resnet", "resnet20", 1), ("fashion_mnist_resnet", "resnet20", 8)]
    assert all(r["masks_exact"] and r["images_per_s"]["dense"] > 0 for r in t["results"])

    g = d["gain"]
    assert g["status"] == "6 of 6 planned runs finished" and g["lanes_per_process"] == 3
    runs = g["runs"]
    assert [(r["cell"], r["seed"]) for r in runs] == [(c, s) for s in (0, 1) for c in ("0.05", "0.02", "0.05 cosine")]
    assert [(r["process"], r["lane"]) for r in runs] == [(f"part-{i // 3}", i % 3) for i in range(6)]
    assert [p["lanes"] for p in g["processes"]] == [3, 3]
    for r in runs:
        assert r["status"] == "done" and r["densities_exact"], r
        assert r["epochs_done"] == r["epochs_total"] == 8  # sparse_baseline 4, warmup 2 + tickets 2
        assert r["row"] == row(r["evaluate"])
        assert r["evaluate"]["target_density"] == r["density"]
        assert set(r["evaluate"]["test_acc"]) >= {"sparse_baseline", "superposed", "ticket_ensemble"}
    lane = (tmp_path / "work/gain/part-0/lane-2/.hydra/overrides.yaml").read_text()  # the cosine cell's lane
    assert lane.endswith("- dst.density=0.05\n- dst.prune_rate_decay=cosine\n- seed=0\n")
    for cell in ("0.05", "0.02", "0.05 cosine"):
        gains = [100 * r["row"]["gain"] for r in runs if r["cell"] == cell]
        s = g["summary"][cell]
        assert s["n"] == 2 and s["gain"] == pytest.approx(mean_sd_half(gains))

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (dry run on the CPU")
    assert "## Plan of a real run (one GPU, faithful settings)" in md and "8 seeds each: 24 runs of 40 epochs" in md
    assert "### graphed: not run: a dry run trains on the CPU, and CUDA graphs need a CUDA device" in md
    assert "| models identical in both runs | True |" in md and "| files that differ | none |" in md
    assert "| fashion_mnist_resnet | resnet20 | 8 |" in md
    assert md.count("| done |") == 6 and "| 0.05 cosine | 2 |" in md
    log = (out / "gpu_check.log").read_text()
    assert "parity eager: passed" in log and "part-1: started, 3 lanes" in log


def test_a_run_cut_by_its_budget_still_reports(tmp_path):
    proc = check(tmp_path, "--budget-s", "8", timeout=600)  # the parity DAGs take far longer than 5 s anywhere
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads((tmp_path / "out/gpu_check.json").read_text())
    assert d["status"] == "complete"
    assert d["parity"]["status"] == "timed out"
    assert {r["status"] for r in d["parity"]["modes"]["eager"]["runs"]} == {"timed_out"}
    assert d["throughput"]["status"].startswith("not run") and d["gain"]["status"].startswith("not run")
    md = (tmp_path / "out/gpu_check.md").read_text()
    assert "status: timed out" in md and "status: not run" in md


def processes_in(folder: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_sigterm_stops_every_run_and_leaves_a_report(tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/gpu_check.py"), str(tmp_path / "out"), "--dry-run",
                             "--work", str(work)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    report = tmp_path / "out/gpu_check.json"
    deadline = time.time() + 600  # a limit on waiting, not a measurement
    while time.time() < deadline and not processes_in(work):
        time.sleep(0.2)
    assert processes_in(work), "the parity runs should be running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    d = json.loads(report.read_text())
    assert d["status"] == "interrupted (SIGTERM): what finished is above"
    assert d["parity"]["status"] == "running"
    gone = time.time() + 30  # a SIGKILLed process takes a moment to go; one still there after this leaked
    while processes_in(work) and time.time() < gone:
        time.sleep(0.1)
    assert processes_in(work) == []


@pytest.mark.parametrize("args,message", [
    (["--budget-s", "0"], "--budget-s=0: expected a number of seconds > 0"),
    (["--data-root", "/no/such/folder"], "--data-root=/no/such/folder: no such folder"),
    (["--parallel", "0"], "--parallel=0: expected an integer >= 1"),
    (["--lanes", "0"], "--lanes=0: expected an integer >= 1"),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_check.py"), str(tmp_path / "out"), "--dry-run",
                           *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: gpu_check: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_the_real_check_refuses_and_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/gpu_check.py"), str(tmp_path / "out")], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.endswith("error: gpu_check: CUDA is not available on this machine; run on a GPU, "
                                "or use --dry-run\n")
    assert json.loads((tmp_path / "out/gpu_check.json").read_text())["status"] == "error"


def test_the_shell_wrapper_needs_a_python_environment(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts/gpu_check.sh")  # no .venv, no .gpu_carry beside it
    e = dict(os.environ)
    e.pop("PYTHON", None)
    proc = subprocess.run(["bash", str(tmp_path / "scripts/gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=30, env=e)
    assert proc.returncode == 2 and "run make setup" in proc.stderr and "gpu_check_prepare.sh" in proc.stderr
    assert not (tmp_path / "out").exists()


def job(times: list[float], total: int, name: str = "j") -> Job:
    j = Job(name, [], Path("."), epochs_total=total, status="running")
    j.epoch_times = times
    return j


def test_predicted_end_extrapolates_the_recent_epoch_pace():
    assert predicted_end([10.0], 10, tail_s=5) is None
    # epochs every 2 s lately (the slow first one and a 6 s stage change do not count): 5 left -> +10 s
    assert predicted_end([10, 20, 22, 24, 30, 32, 34], 12, tail_s=5) == pytest.approx(34 + 10 + 5)


def test_lane_epoch_lines_are_counted_per_lane(tmp_path):
    j = Job("part-0", [], tmp_path)
    (tmp_path / "job.err").write_text("lane-0 (seed=0 dst.density=0.05): sparse_baseline epoch 1/4: loss 2.3\n"
                                      "lane-1 (seed=0 dst.density=0.02): sparse_baseline epoch 1/4: loss 2.3\n"
                                      "lane-0 (seed=0 dst.density=0.05): sparse_baseline epoch 2/4: loss 2.1\n"
                                      "dense epoch 1/4: loss 2.0\n")
    assert j.lane_epochs() == {0: 2, 1: 1}
    assert len(EPOCH_LINE.findall((tmp_path / "job.err").read_text())) == 4


def test_the_plan_says_whether_the_gain_fits_and_what_it_does_otherwise():
    cells = plan.gain_cells([0.05, 0.02], [0.05])
    runs = plan.gain_runs(cells, 8)
    assert len(runs) == 24 and [r["cell"] for r in runs[:4]] == ["0.05", "0.02", "0.05 cosine", "0.05"]
    low, high, _ = plan.FIGURES["epochs_per_s"]
    p = plan.plan_gain(24, 40, 8, 420)
    assert p["processes"] == 3 and not p["fits"]
    assert p["predicted_s"] == [round(960 / high + 3 * plan.TAIL_S), round(960 / low + 3 * plan.TAIL_S)]
    assert p["verdict"].startswith("does not fit") and "n per cell is reported" in p["verdict"]
    big = plan.plan_gain(3, 40, 8, 420 + 400)  # 120 epochs: 351-382 s + 15 s, with 669 s left
    assert big["fits"] and big["verdict"].startswith("fits") and big["runs_predicted_to_fit"] == 3
    # the next process: what fits in the time left at the rate, at most the lanes, the first at least one
    assert plan.lanes_to_start(runs, 8, 100, 40, 0.33, first=True) == 1
    assert plan.lanes_to_start(runs, 8, 100, 40, 0.33, first=False) == 0
    assert plan.lanes_to_start(runs, 8, 10_000, 40, 0.33, first=False) == 8
    assert plan.lanes_to_start(runs[:2], 8, 10, 40, None, first=False) == 2  # no rate (dry run): all


def test_gain_statistics():
    assert t975(4) == 2.776 and t975(11) == t975(10) and math.isnan(t975(0))
    m, sd, half = mean_sd_half([1.0, 2.0, 3.0])
    assert (m, sd) == (2.0, 1.0) and half == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(mean_sd_half([1.0])[2])
    metrics = {"test_acc": {"sparse_baseline": 0.80, "warmup": 0.7, "ticket_01": 0.79, "ticket_02": 0.81,
                            "superposed": 0.82, "ticket_ensemble": 0.83}}
    r = row(metrics)
    assert r["best_ticket"] == 0.81 and r["gain"] == pytest.approx(0.02)
    s = summarize([r, {**r, "gain": 0.04}])
    assert s["gain"][0] == pytest.approx(3.0) and s["superposed"][1] == 0
    assert table_row(0.05, s).startswith("| 0.95 | 80.00 ± 0.00 | 81.00 ± 0.00 | 82.00 ± 0.00 | 83.00 ± 0.00 | +3.00 ±")


def test_imported_modules_are_read_from_python_importtime():
    err = ("import time: self [us] | cumulative | imported package\n"
           "import time:       120 |        120 |   wandb.sdk\n"
           "import time:        80 |        200 | torch\n"
           "error: dense: something else\n")
    assert imported_top_level(err) == {"wandb", "torch"}
