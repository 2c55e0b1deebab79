"""The GPU check's three parts, each filling its section of the report: parity (the smoke DAG twice
per mode, files compared), throughput (benchmarks/gpu_throughput.py) and the gain (the grid's runs
as lanes of stages/chain.py processes)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import gpu_check_plan as plan
from gpu_check_jobs import (Job, chain_cmd, file_hashes, imported_top_level, read_text, run_jobs,
                            seconds_per_epoch)
from suptickets.composition import compose

ROOT = plan.ROOT
EVALUATE_KEYS = ("target_density", "test_acc", "test_loss", "density", "gain")
MIN_ACC = 0.2          # "sane": at least twice chance (10 classes)
NOT_ON_GPU_IMAGE = ("wandb", "dvc")  # the check needs neither; a run that imports one is reported
NONDETERMINISTIC = re.compile(r"([\w.]+) does not have a deterministic implementation")


def expected_density(cfg: dict, prepared: Path) -> float:
    """The exact density of the configured model's masks on the data prepared in `prepared`: the
    per-layer counts of `dst.distribution` over all maskable weights."""
    from suptickets.models import build_model
    from suptickets.sparsity.engine import maskable
    from suptickets.sparsity.masks import layer_counts

    summary = json.loads((prepared / "summary.json").read_text())
    options = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = build_model(cfg["model"]["name"], tuple(summary["shape"]), summary["num_classes"], **options)
    layers = maskable(model, cfg["dst"]["keep_first_dense"])
    counts = layer_counts([tuple(m.weight.shape) for _, m in layers], cfg["dst"]["density"], cfg["dst"]["distribution"])
    return sum(counts) / sum(m.weight.numel() for _, m in layers)


def device_overrides(args) -> list[str]:
    return [f"device={'cpu' if args.dry_run else 'cuda'}", "threads=1", "tracking.wandb.mode=disabled"]


def parity(args, env: dict, report, deadline: float, beside: list[Job]) -> None:
    """Each mode of plan.PARITY_MODES: the smoke DAG twice, then the checks; `beside` (the gain's
    prepare runs) runs beside the first mode's."""
    from suptickets.schedules import split_of

    modes = [m for m in plan.PARITY_MODES if not (args.dry_run and m["mode"] in plan.CUDA_ONLY_MODES)]
    part = report.data["parity"] = {"status": "running", "preset": plan.SMOKE, "modes": {},
                                    "not_run": [{"mode": m["mode"], "why": plan.CUDA_ONLY_MODES[m["mode"]]}
                                                for m in plan.PARITY_MODES if m not in modes]}
    for k, mode in enumerate(modes):
        overrides = [f"experiment={plan.SMOKE}", *device_overrides(args), *(plan.DRY if args.dry_run else []),
                     *args.data_root_override, *mode["overrides"]]
        cfg = compose(plan.ROOT / "params", overrides)
        runs = [Job(f"parity_{mode['mode']}_{r}", chain_cmd(overrides, plan.PARITY_CHAIN, importtime=r == "a"),
                    args.work / f"parity_{mode['mode']}_{r}", plan.training_epochs(cfg, plan.PARITY_CHAIN))
                for r in ("a", "b")]
        result = part["modes"][mode["mode"]] = {"status": "running", "overrides": overrides, "runs": []}
        report.write()
        limit = time.time() + args.parity_s / len(modes)
        run_jobs([*runs, *(beside if k == 0 else [])], env, min(deadline, limit), report.log)
        n_tickets = split_of(cfg)[2]
        models = ["dense", "sparse_baseline", "warmup", *[f"ticket_{t:02d}" for t in range(1, n_tickets + 1)],
                  "superposed", "ticket_ensemble"]
        result.update(parity_checks(runs, cfg, models, result))
        report.log(f"parity {mode['mode']}: {result['status']}; differing files: "
                   f"{', '.join(result['checks']['differing_files']) or 'none'}")
    if {"eager", "graphed"} <= set(part["modes"]):
        part["graphed_vs_eager"] = versus(args.work / "parity_eager_a", args.work / "parity_graphed_a")
        report.log(f"parity graphed vs eager: {part['graphed_vs_eager']['summary']}")
        # throughput and the gain use the graphed step once it has passed its own checks (the faster one)
        args.graphed = part["modes"]["graphed"]["status"] == "passed"
    statuses = {m["status"] for m in part["modes"].values()}
    part["status"] = statuses.pop() if len(statuses) == 1 else "failed"
    for j in beside:
        if j.status != "done":
            report.log(f"{j.name}: {j.status}\n{j.error_tail()}")
    report.write()


def parity_checks(runs: list[Job], cfg: dict, models: list[str], result: dict) -> dict:
    evals = {}
    for r in runs:
        rec = r.record()
        path = r.cwd / "metrics/evaluate.json"
        if r.status == "done" and path.is_file():
            evals[r.name] = rec["evaluate"] = json.loads(path.read_text())
        elif r.status != "done":
            rec["error"] = r.error_tail()
        result["runs"].append(rec)
    ok = all(r.status == "done" for r in runs) and len(evals) == len(runs)
    finished = [r for r in runs if r.name in evals]
    expected = expected_density(cfg, finished[0].cwd / "data/prepared") if finished else None
    differing = differing_files(runs[0].cwd, runs[1].cwd)
    densities = [v for e in evals.values() for v in e.get("density", {}).values()]
    accs = [v for e in evals.values() for v in e.get("test_acc", {}).values()]
    errs = "".join(read_text(r.err) for r in runs)
    checks = {
        "runs_ok": ok,
        "evaluate_keys": ok and all(set(EVALUATE_KEYS) <= set(e) and set(models) == set(e["test_acc"])
                                    for e in evals.values()),
        "expected_density": expected,
        "densities": sorted(set(densities)),
        "densities_exact": ok and bool(densities) and all(abs(d - expected) < 1e-9 for d in densities),
        "min_test_acc": min(accs) if accs else None,
        "accuracies_sane": ok and bool(accs) and min(accs) > MIN_ACC,
        "models_identical": ok and not any(k.startswith("models/") for k in differing),
        "differing_files": differing,
        "nondeterministic_ops": sorted(set(NONDETERMINISTIC.findall(errs))),
        "missing_imports": sorted(imported_top_level(read_text(runs[0].err)) & set(NOT_ON_GPU_IMAGE)),
    }
    passed = all(checks[k] for k in ("runs_ok", "evaluate_keys", "densities_exact", "accuracies_sane",
                                     "models_identical")) and not checks["missing_imports"]
    status = "passed" if passed else ("timed out" if any(r.status == "timed_out" for r in runs) else "failed")
    return {"status": status, "checks": checks}


def differing_files(a: Path, b: Path) -> list[str]:
    """The files (relative paths) present in only one of two run folders, or with other bytes."""
    hashes = [file_hashes(a), file_hashes(b)]
    return sorted(k for k in set(hashes[0]) | set(hashes[1]) if hashes[0].get(k) != hashes[1].get(k))


def versus(eager: Path, graphed: Path) -> dict:
    """How far a graphed run ends from the eager one: the files that differ, each model's largest
    weight difference, each model's test accuracy (graphed minus eager, in points)."""
    from safetensors.torch import load_file

    if not ((eager / "metrics/evaluate.json").is_file() and (graphed / "metrics/evaluate.json").is_file()):
        return {"summary": "not compared: a run did not finish", "differing_files": None}
    differing = differing_files(eager, graphed)
    weights = {}
    for name in sorted(p.relative_to(eager).as_posix() for p in (eager / "models").rglob("*.safetensors")):
        a, b = load_file(str(eager / name)), load_file(str(graphed / name))
        weights[name] = max((float((a[k].double() - b[k].double()).abs().max()) for k in a
                             if k in b and a[k].is_floating_point() and a[k].numel()), default=0.0)
    accs = [json.loads((d / "metrics/evaluate.json").read_text())["test_acc"] for d in (eager, graphed)]
    points = {m: round(100 * (accs[1][m] - accs[0][m]), 2) for m in accs[0] if m in accs[1]}
    identical = not any(k.startswith("models/") for k in differing)
    summary = ("bit-identical models" if identical else
               f"models differ: largest |weight difference| {max(weights.values(), default=0.0):.3g}, test accuracy "
               f"graphed minus eager {min(points.values(), default=0):+.2f} to {max(points.values(), default=0):+.2f} points")
    return {"summary": summary, "identical_models": identical, "differing_files": differing,
            "max_abs_weight_difference": weights, "test_acc_points": points}


def throughput(args, env: dict, report, deadline: float) -> None:
    raw = args.work / "throughput.json"
    presets = plan.DRY_THROUGHPUT_PRESETS if args.dry_run else plan.THROUGHPUT_PRESETS
    settings = ["--dry-run", "--threads", "1"] if args.dry_run else plan.THROUGHPUT_ARGS
    if getattr(args, "graphed", False):  # each window (a phase call) captures its graphs anew: counted in it
        settings = [*settings, "--set", "train.graphs=true"]
    job = Job("throughput", [sys.executable, str(ROOT / "benchmarks/gpu_throughput.py"), "--json", str(raw),
                             "--experiment", *presets, "--lanes", *map(str, plan.THROUGHPUT_LANES), *settings],
              args.work / "throughput")
    part = report.data["throughput"] = {"status": "running", "command": " ".join(job.cmd[1:]),
                                        "slot_s": args.throughput_s}
    report.write()
    run_jobs([job], env, min(deadline, time.time() + args.throughput_s), report.log)
    part.update(job.record())
    if job.status == "done" and raw.is_file():
        measured = json.loads(raw.read_text())
        part["results"] = measured.pop("results")
        part["settings"] = measured
        met = all(r["masked_over_dense"]["ratio"] >= 0.97 for r in part["results"])
        part["status"] = "done" + ("" if args.dry_run else f"; masked/dense goal {'met' if met else 'not met'}")
    else:
        part["status"] = job.status
        part["error"] = job.error_tail()
        report.log(f"throughput {job.status}:\n{part['error']}")
    report.write()


def gain_base(args) -> list[str]:
    """The gain runs' overrides; `train.graphs=true` where the graphed parity mode passed."""
    return [f"experiment={plan.GAIN}", *device_overrides(args), *(plan.DRY_GAIN if args.dry_run else []),
            *(["train.graphs=true"] if getattr(args, "graphed", False) else []),
            *args.overrides, *args.data_root_override]


def prepare_jobs(args) -> list[Job]:
    """One prepare per seed (a seed's split is its own), run beside the parity runs."""
    return [Job(f"prepare_s{s}", chain_cmd([*gain_base(args), f"seed={s}"], ["prepare"]),
                args.work / "gain_data" / f"seed-{s}") for s in range(args.seeds)]


def lanes_job(args, name: str, runs: list[dict], prepared: list[Job], epochs_per_run: int) -> Job:
    """A stages/chain.py process whose lanes are `runs`; each lane's folder holds its seed's prepared
    data (chain.py links into a lane folder only what it lacks), the job's folder lane 0's."""
    folder = args.work / "gain" / name
    for k, run in enumerate([runs[0], *runs]):
        target = folder / (f"lane-{k - 1}" if k else ".") / "data/prepared"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((prepared[run["seed"]].cwd / "data/prepared").resolve(), target_is_directory=True)
    lanes = "+lanes=[" + ",".join(f'"{" ".join(r["overrides"])}"' for r in runs) + "]"
    return Job(name, [*chain_cmd(gain_base(args), plan.GAIN_CHAIN), lanes], folder, epochs_per_run * len(runs))


def gain(args, env: dict, report, deadline: float, prepared: list[Job]) -> None:
    from suptickets.gains import row, summarize

    cells = plan.gain_cells(args.densities, args.cosine)
    runs = plan.gain_runs(cells, args.seeds)
    cfg = compose(plan.ROOT / "params", gain_base(args))
    epochs_per_run = plan.training_epochs(cfg, plan.GAIN_CHAIN)
    part = report.data["gain"] = {
        "status": "running", "preset": plan.GAIN, "cells": cells, "overrides": gain_base(args),
        "epochs_per_run": epochs_per_run, "lanes_per_process": args.lanes, "processes_at_once": args.parallel,
        "data": "each seed's own split (its validation carve-out); test = the official test split",
        "runs": [], "processes": []}
    if any(j.status != "done" for j in prepared):
        part["status"] = "not run: preparing the data " + ", ".join(f"{j.name} {j.status}" for j in prepared)
        part["error"] = next(j.error_tail() for j in prepared if j.status != "done")
        report.write()
        return
    expected = {d: expected_density({**cfg, "dst": {**cfg["dst"], "density": d}}, prepared[0].cwd / "data/prepared")
                for d in {c["density"] for c in cells}}
    rate = None if args.dry_run else plan.FIGURES["epochs_per_s"][0]
    part["rate_source"] = "none (dry run: every planned run starts)" if rate is None else plan.FIGURES["epochs_per_s"][2]
    state = {r["name"]: {**r, "status": "pending"} for r in runs}
    jobs: list[tuple[Job, list[dict]]] = []
    started = time.time()

    def update() -> None:
        for job, members in jobs:
            per_lane = job.lane_epochs()
            for k, r in enumerate(members):
                rec = state[r["name"]]
                rec.update(process=job.name, lane=k, epochs_done=per_lane.get(k, 0), epochs_total=epochs_per_run)
                metrics = job.cwd / f"lane-{k}/metrics/evaluate.json"
                if job.status == "running":
                    rec["status"] = "running"
                elif metrics.is_file():
                    rec["status"], rec["evaluate"] = "done", json.loads(metrics.read_text())
                    rec["row"] = row(rec["evaluate"])
                    rec["densities_exact"] = all(abs(v - expected[r["density"]]) < 1e-9
                                                 for v in rec["evaluate"]["density"].values())
                else:
                    rec["status"] = {"done": "failed"}.get(job.status, job.status)
                    rec["error"] = job.error_tail(5)
        part["runs"] = list(state.values())
        part["processes"] = [{**job.record(), "lanes": len(members),
                              "epochs_per_s": (round(len(job.epoch_times) / job.seconds, 3) if job.seconds else None)}
                             for job, members in jobs]
        part["summary"] = {}
        for c in cells:
            rows = [r["row"] for r in part["runs"] if r["cell"] == c["cell"] and "row" in r]
            if rows:
                part["summary"][c["cell"]] = {"n": len(rows), **summarize(rows)}
        epochs = sum(r.get("epochs_done", 0) for r in part["runs"])
        part["epochs_per_s_all_lanes"] = round(epochs / max(time.time() - started, 1e-9), 3)
        report.write()

    pending = list(runs)
    while pending or any(j.status == "running" for j, _ in jobs):
        now = time.time()
        changed = False
        for job, members in jobs:
            if job.poll(now):
                changed = True
                report.log(f"{job.name}: {job.status} after {job.seconds} s ({len(members)} lanes)")
                if job.status == "done" and job.seconds:
                    rate = len(job.epoch_times) / job.seconds  # this machine's measured rate from here on
                    part["rate_source"] = f"measured here: {job.name}, {rate:.3f} epochs/s in all"
        running = [j for j, _ in jobs if j.status == "running"]
        if pending and len(running) < args.parallel and now < deadline:
            n = plan.lanes_to_start(pending, args.lanes, deadline - now, epochs_per_run, rate, first=not jobs)
            if n == 0:
                for r in pending:
                    state[r["name"]].update(status="not started", note="predicted not to end within the budget")
                report.log(f"gain: {len(pending)} runs not started: predicted not to end within the budget")
                pending = []
            else:
                members, pending = pending[:n], pending[n:]
                job = lanes_job(args, f"part-{len(jobs)}", members, prepared, epochs_per_run)
                job.start(env)
                jobs.append((job, members))
                report.log(f"{job.name}: started, {n} lanes: {', '.join(r['name'] for r in members)}")
            changed = True
        if now > deadline:
            for j in running:
                j.stop("cut", "still running at the end of the budget")
                pace = seconds_per_epoch(j.epoch_times)
                report.log(f"{j.name}: cut at the deadline ({len(j.epoch_times)}/{j.epochs_total} epochs"
                           + (f"; an epoch line every {pace:.1f} s at the end)" if pace else ")"))
            for r in pending:
                state[r["name"]].update(status="not started", note="no time left in the budget")
            pending, changed = [], True
        if changed:
            update()
        time.sleep(0.5)
    update()
    n_done = sum(r["status"] == "done" for r in part["runs"])
    part["status"] = f"{n_done} of {len(runs)} planned runs finished"
    report.write()
