"""The prepared GPU check (scripts/gpu_check.sh): its dry run on the CPU end to end (the smoke DAG of
fashion_mnist_resnet twice, the throughput benchmark, the gain runs and their statistics), a run cut
by its budget or by SIGTERM still reporting, bad arguments, and the pure parts (schedule, statistics)."""

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
from gpu_check import EVALUATE_KEYS, Job, imported_top_level, jobs_to_cancel, predicted_end
from suptickets.gains import TABLE_HEADER, mean_sd_half, row, summarize, t975, table_row

SCRIPT = ROOT / "scripts/gpu_check.sh"


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_WAIT_POLICY="PASSIVE")
    e.pop("WANDB_MODE", None)
    return e


def check(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run", "--work", str(tmp_path / "work"),
                           *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_dry_run_reports_parity_throughput_and_gain(tmp_path):
    proc = check(tmp_path, "--budget-s", "3600")  # a budget no machine reaches: what runs must not hang on its speed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    d = json.loads((out / "gpu_check.json").read_text())
    assert d["dry_run"] and d["status"] == "complete" and d["environment"]["device"] == "CPU"
    assert d["budget_s"] == 3600 and d["elapsed_s"] > 0

    p = d["parity"]
    c = p["checks"]
    assert p["status"] == "passed", c
    assert c["runs_ok"] and c["evaluate_keys"] and c["densities_exact"] and c["accuracies_sane"], c
    assert c["densities"] == [c["expected_density"]] and abs(c["expected_density"] - 0.05) < 5e-4
    assert c["min_test_acc"] > 0.2
    assert c["models_identical"] and c["differing_files"] == []  # same seed, same machine: bit-identical
    assert c["missing_imports"] == []  # neither wandb nor dvc is imported (the GPU machine has neither)
    for r in p["runs"]:
        e = r["evaluate"]
        assert set(EVALUATE_KEYS) <= set(e)
        assert set(e["test_acc"]) == {"dense", "sparse_baseline", "warmup", "ticket_01", "ticket_02", "superposed",
                                      "ticket_ensemble"}
        assert r["epochs_done"] == r["epochs_total"] == 18  # dense 6, sparse_baseline 6, warmup 4 + tickets 2
    tickets = json.loads((tmp_path / "work/parity_a/metrics/tickets.json").read_text())["tickets"]
    assert all(0 < t["jaccard_prev"] < 1 for t in tickets.values())  # masks compared name by name

    t = d["throughput"]
    assert t["status"] == "done" and t["rc"] == 0
    assert [(r["experiment"], r["model"]) for r in t["results"]] == [("fashion_mnist_resnet", "resnet20")]
    assert all(r["masks_exact"] and r["images_per_s"]["dense"] > 0 for r in t["results"])

    g = d["gain"]
    assert g["status"] == "4 of 4 planned runs finished" and g["parallel"] == 2
    jobs = g["jobs"]
    assert [(j["density"], j["seed"]) for j in jobs] == [(0.05, 0), (0.02, 0), (0.05, 1), (0.02, 1)]
    for j in jobs:
        assert j["status"] == "done" and j["densities_exact"], j
        assert j["epochs_done"] == j["epochs_total"] == 12  # sparse_baseline 6, warmup 4 + tickets 2
        assert j["row"] == row(j["evaluate"])
        assert j["evaluate"]["target_density"] == j["density"]
    for density, key in ((0.05, "0.05"), (0.02, "0.02")):
        gains = [100 * j["row"]["gain"] for j in jobs if j["density"] == density]
        s = g["summary"][key]
        assert s["n"] == 2 and s["gain"] == pytest.approx(mean_sd_half(gains))

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (dry run on the CPU")
    assert "| models identical in both runs | True |" in md and "| files that differ | none |" in md
    assert "| fashion_mnist_resnet | resnet20 |" in md
    assert all(line in md for line in TABLE_HEADER)
    assert md.count("| done |") == 4 and "| 0.95 |" in md and "| 0.98 |" in md
    log = (out / "gpu_check.log").read_text()
    assert "parity: passed" in log and "gain_d0.02_s1: started" in log  # the 3rd and 4th runs waited for a slot


def test_a_run_cut_by_its_budget_still_reports(tmp_path):
    proc = check(tmp_path, "--budget-s", "8", timeout=600)  # the parity DAGs take far longer than 5 s anywhere
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads((tmp_path / "out/gpu_check.json").read_text())
    assert d["status"] == "complete"
    assert d["parity"]["status"] == "timed out"
    assert {r["status"] for r in d["parity"]["runs"]} == {"timed_out"}
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


def test_the_shell_wrapper_needs_the_carry_folder(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts/gpu_check.sh")
    proc = subprocess.run(["bash", str(tmp_path / "scripts/gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "run scripts/gpu_check_prepare.sh" in proc.stderr
    assert not (tmp_path / "out").exists()


def job(times: list[float], total: int, name: str = "j") -> Job:
    j = Job(name, [], Path("."), epochs_total=total, status="running")
    j.epoch_times = times
    return j


def test_predicted_end_extrapolates_the_recent_epoch_pace():
    assert predicted_end([10.0], 10, tail_s=5) is None
    # epochs every 2 s lately (the slow first one and a 6 s stage change do not count): 5 left -> +10 s
    assert predicted_end([10, 20, 22, 24, 30, 32, 34], 12, tail_s=5) == pytest.approx(34 + 10 + 5)


def test_jobs_predicted_to_end_late_are_cancelled_latest_planned_first():
    def running(n, pace, done, total=20):
        return [job([pace * k for k in range(1, done + 1)], total, f"j{i}") for i in range(n)]

    jobs = running(6, pace=2.0, done=4)  # at t=8: 16 epochs left each, 0.5 epoch/s each, 3 epochs/s in all
    assert jobs_to_cancel(jobs, now=8, deadline=8 + 32 + 5 + 1, tail_s=5) == []  # all end at 45 < 46
    # 20 s left after the tail: 60 epochs at 3 epochs/s, enough for 3 jobs of 16
    assert jobs_to_cancel(jobs, now=8, deadline=8 + 20 + 5, tail_s=5) == jobs[3:][::-1]
    assert jobs_to_cancel(jobs, now=8, deadline=8 + 1 + 5, tail_s=5) == jobs[2:][::-1]  # two stay
    fresh = running(4, pace=2.0, done=1)  # no pace yet for most: wait
    assert jobs_to_cancel(jobs[:2] + fresh, now=8, deadline=10, tail_s=5) == []


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
