"""The GPU check: everything to measure the first time a GPU is lent, in one run of a fixed budget.

    bash scripts/gpu_check.sh OUT_DIR [--budget-s 360] [--dry-run]    # sets up Python, then runs this

a. CUDA parity: the DAG of `experiment=fashion_mnist_resnet_smoke` (prepare .. evaluate) twice on the
   GPU: exact densities, accuracies above chance, evaluate's keys, and the two runs' files compared
   (identical model hashes is the goal; the files that differ are listed, and the ops PyTorch names as
   having no deterministic CUDA kernel);
b. `benchmarks/gpu_throughput.py`: the stages' own epoch loop, dense vs masked in alternating windows:
   images/s, ms per step, host share, one topology update, masked/dense (goal >= 0.97) with its 95%
   interval, for the fashion_mnist_resnet (ResNet-20) and cifar10_resnet32 presets;
c. the gain of `experiment=fashion_mnist_resnet` (superposed - sparse_baseline): seeds x densities as
   parallel processes on the one GPU, as many as the budget allows. Jobs predicted to end after the
   budget are cancelled (the most recently planned first) so the others finish sooner.

The stages run through stages/chain.py (no DVC, W&B disabled), each run in its own folder under a work
directory. OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md are rewritten after every step, so a run
cut short by its time limit still reports what finished; OUT_DIR/gpu_check.log has the orchestration
log and the tail of anything that failed. `--dry-run` does all of it on the CPU at toy sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SMOKE = "fashion_mnist_resnet_smoke"
GAIN = "fashion_mnist_resnet"
PARITY_CHAIN = ["prepare", "dense", "sparse_baseline", "warmup", "tickets", "superpose", "evaluate"]
# dense does not depend on density; each job prepares its own seed's split (data/prepared records its seed)
GAIN_CHAIN = ["prepare", "sparse_baseline", "warmup", "tickets", "superpose", "evaluate"]
EVALUATE_KEYS = ("target_density", "test_acc", "test_loss", "density", "gain")
MIN_ACC = 0.2          # "sane": at least twice chance (10 classes)
NOT_ON_GPU_IMAGE = ("wandb", "dvc")  # neither is installed on the GPU machine, nor carried
# A dry run: the same parity and gain chains at toy size (800 images, quarter width, 6 epochs: 4 of
# warmup and 2 cycles, enough for every model to clear the accuracy check).
DRY = ["data.limit_train=800", "data.limit_test=200", "model.width=0.25", "train.epochs=6",
       "train.batch_size=32", "tickets.cycle_rate=0.34", "dst.update_frequency=5"]
EPOCH_LINE = re.compile(r"^\w+ epoch \d+/\d+: loss", re.M)
NONDETERMINISTIC = re.compile(r"([\w.]+) does not have a deterministic implementation")


class CheckError(RuntimeError):
    """The check cannot start (bad arguments, no CUDA); one line, exit 2."""


STARTED: list["Job"] = []  # every job started, so an interrupted check stops them all


# ---------------------------------------------------------------------------------------------
# processes


@dataclass
class Job:
    name: str
    cmd: list[str]
    cwd: Path
    epochs_total: int = 0
    status: str = "pending"   # pending, running, done, failed, timed_out, cancelled, cut
    rc: int | None = None
    started: float | None = None
    ended: float | None = None
    epoch_times: list[float] = field(default_factory=list)  # when each epoch line was first seen
    proc: subprocess.Popen | None = None
    note: str = ""

    @property
    def out(self) -> Path:
        return self.cwd / "job.out"

    @property
    def err(self) -> Path:
        return self.cwd / "job.err"

    def start(self, env: dict[str, str]) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=env, stdout=out, stderr=err,
                                         start_new_session=True)  # its own group, so a kill reaches its children
        self.started, self.status = time.time(), "running"
        STARTED.append(self)

    def poll(self, now: float) -> bool:
        """Update progress; True when the process has just ended."""
        if self.status != "running":
            return False
        seen = len(EPOCH_LINE.findall(read_text(self.err) + read_text(self.out)))  # (logging writes to stderr)
        self.epoch_times += [now] * (seen - len(self.epoch_times))
        rc = self.proc.poll()
        if rc is None:
            return False
        self.rc, self.ended = rc, now
        self.status = "done" if rc == 0 else "failed"
        return True

    def stop(self, status: str, note: str = "") -> None:
        if self.status == "running":
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.rc, self.ended = self.proc.returncode, time.time()
        if self.status in ("running", "pending"):
            self.status, self.note = status, note

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else round((self.ended or time.time()) - self.started, 1)

    def record(self) -> dict:
        return {"name": self.name, "status": self.status, "rc": self.rc, "seconds": self.seconds,
                "epochs_done": len(self.epoch_times), "epochs_total": self.epochs_total, "note": self.note,
                "command": " ".join(self.cmd[1:])}

    def error_tail(self, lines: int = 15) -> str:
        text = (read_text(self.err).strip() or read_text(self.out).strip()).splitlines()
        return "\n".join(text[-lines:])


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def seconds_per_epoch(epoch_times: list[float], window: int = 5) -> float | None:
    """The median of a job's last `window` epoch intervals (a stage change inside the window does not
    skew it); None before two epochs."""
    recent = epoch_times[-window - 1:]
    gaps = [b - a for a, b in zip(recent, recent[1:])]
    return statistics.median(gaps) if gaps else None


def predicted_end(epoch_times: list[float], epochs_total: int, tail_s: float) -> float | None:
    """When a job will end: its last epoch time plus the remaining epochs at its recent pace, plus
    `tail_s` for what follows the last epoch (superpose, evaluate); None before two epochs."""
    pace = seconds_per_epoch(epoch_times)
    return None if pace is None else epoch_times[-1] + (epochs_total - len(epoch_times)) * pace + tail_s


def jobs_to_cancel(running: list[Job], now: float, deadline: float, tail_s: float, keep: int = 2) -> list[Job]:
    """The jobs (latest planned first) to cancel so that the rest end before the deadline, or [].

    Only when a job is predicted to end after the deadline, and once at least half the running jobs
    have a pace. The GPU is taken as the bottleneck (one GPU shared by processes), so the epochs it
    runs per second stay what they are now and go to the jobs that are left: the earliest-planned jobs
    whose remaining epochs fit into the time left at that rate are kept (at least `keep`)."""
    paces = [seconds_per_epoch(j.epoch_times) for j in running]
    known = [p for p in paces if p]
    if len(running) <= keep or len(known) * 2 < len(running):
        return []
    ends = [predicted_end(j.epoch_times, j.epochs_total, tail_s) for j in running]
    if not any(e is not None and e > deadline for e in ends):
        return []
    epochs_per_s = sum(1 / p for p in known) * len(running) / len(known)
    budget = epochs_per_s * max(deadline - tail_s - now, 0.0)
    kept, work = 0, 0.0
    for j in running:
        remaining = j.epochs_total - len(j.epoch_times)
        if kept >= keep and work + remaining > budget:
            break
        kept, work = kept + 1, work + remaining
    return running[kept:][::-1]


# ---------------------------------------------------------------------------------------------
# the report


class Report:
    """gpu_check.json and gpu_check.md in OUT_DIR, rewritten whole (atomically) after every change."""

    def __init__(self, out: Path, data: dict):
        self.out, self.data = out, data
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")

    def log(self, message: str) -> None:
        line = f"[{time.time() - self.data['started_at']:6.1f}s] {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.data["started_at"], 1)
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=2, default=str) + "\n"),
                           ("gpu_check.md", markdown(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)


def fmt(v, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(d: dict) -> str:
    from suptickets.gains import COLUMNS, TABLE_HEADER, table_row

    env = d.get("environment", {})
    lines = [f"# GPU check{' (dry run on the CPU: toy sizes, nothing measured)' if d['dry_run'] else ''}", "",
             f"{env.get('device', '?')}; torch {env.get('torch', '?')} (CUDA {env.get('cuda_version')}), "
             f"Python {env.get('python', '?')}, {env.get('cpu_count', '?')} CPU cores. Budget {d['budget_s']:.0f} s, "
             f"elapsed {d.get('elapsed_s', 0):.0f} s; status: **{d['status']}**.", ""]
    if d.get("error"):
        lines += ["```", d["error"].strip(), "```", ""]
    p = d.get("parity", {})
    lines += ["## a. Parity: the smoke DAG twice on the device", "", f"status: {p.get('status', 'not started')}", ""]
    if p.get("checks"):
        c = p["checks"]
        lines += ["| check | result |", "|---|---|"]
        lines += [f"| every run ended (exit 0) | {c['runs_ok']} |",
                  f"| evaluate.json has {', '.join(EVALUATE_KEYS)} and every model | {c['evaluate_keys']} |",
                  f"| densities exact (expected {fmt(c['expected_density'], '.6f')}) | {c['densities_exact']} |",
                  f"| test accuracy of every model > {MIN_ACC} (min {fmt(c['min_test_acc'])}) | {c['accuracies_sane']} |",
                  f"| models identical in both runs | {c['models_identical']} |",
                  f"| files that differ | {', '.join(c['differing_files']) or 'none'} |",
                  f"| ops without a deterministic kernel (PyTorch's warnings) | {', '.join(c['nondeterministic_ops']) or 'none'} |",
                  f"| imported but not on the GPU image ({', '.join(NOT_ON_GPU_IMAGE)}) | {', '.join(c['missing_imports']) or 'none'} |",
                  ""]
    for r in p.get("runs", []):
        acc = (r.get("evaluate") or {}).get("test_acc", {})
        lines.append(f"- {r['name']}: {r['status']} in {fmt(r['seconds'], '.0f')} s"
                     + (f"; test_acc {', '.join(f'{k} {v:.3f}' for k, v in acc.items())}" if acc else ""))
    t = d.get("throughput", {})

    def goal(ratio: float) -> str:
        return "" if d["dry_run"] else f" ({'met' if ratio >= 0.97 else 'not met'})"

    lines += ["", "## b. Throughput (`benchmarks/gpu_throughput.py`, images/s)", "",
              f"status: {t.get('status', 'not started')}", ""]
    if t.get("results"):
        lines += ["| preset | model | dense img/s | masked img/s | ms/step dense | ms/step masked | "
                  "masked/dense (goal ≥ 0.97) | 95% interval | host share dense | one update (ms) | masks exact |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in t["results"]:
            ips, ms, q, share = r["images_per_s"], r["ms_per_step"], r["masked_over_dense"], r["host_share"]["dense"]
            lines.append(f"| {r['experiment']} | {r['model']} | {ips['dense']:.0f} | {ips['masked']:.0f} | "
                         f"{ms['dense']:.3f} | {ms['masked']:.3f} | {q['ratio']:.3f}{goal(q['ratio'])} | "
                         f"[{q['low']:.3f}, {q['high']:.3f}] | {'—' if share is None else f'{100 * share:.0f}%'} | "
                         f"{r['update_ms']:.1f} | {r['masks_exact']} |")
        lines.append("")
    g = d.get("gain", {})
    lines += ["## c. Gain of superposition (superposed − sparse_baseline, test accuracy)", "",
              f"status: {g.get('status', 'not started')}" + (f"; {g['note']}" if g.get("note") else ""), ""]
    jobs = g.get("jobs", [])
    if jobs:
        lines += ["| density | seed | status | sparse_baseline | best_ticket | superposed | ticket_ensemble | "
                  "gain (pts) | epochs | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
        for j in jobs:
            r = j.get("row") or {}
            cells = " | ".join(fmt(100 * r[k], ".2f") if k in r else "—"
                               for k in COLUMNS)
            gain = fmt(100 * r["gain"], "+.2f") if "gain" in r else "—"
            lines.append(f"| {j['density']:g} | {j['seed']} | {j['status']} | {cells} | {gain} | "
                         f"{j['epochs_done']}/{j['epochs_total']} | {fmt(j['seconds'], '.0f')} |")
        lines.append("")
    if g.get("summary"):
        lines += ["Mean ± std over seeds (%), gain with its 95% t interval:", "", *TABLE_HEADER]
        lines += [table_row(float(k), s) for k, s in g["summary"].items()]
        lines += ["", ", ".join(f"density {k}: n = {s['n']}" for k, s in g["summary"].items()), ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the parts


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "params"), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("params", overrides=overrides), resolve=True)


def training_epochs(cfg: dict, chain: list[str]) -> int:
    """Epoch lines the chain logs: E for each of dense and sparse_baseline, E for warmup + tickets."""
    e = cfg["train"]["epochs"]
    return e * sum(s in chain for s in ("dense", "sparse_baseline")) + (e if "warmup" in chain else 0)


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


def chain_cmd(overrides: list[str], chain: list[str], importtime: bool = False) -> list[str]:
    """The chain of stages in the job's own folder (its working directory: `hydra.run.dir=.`, where
    a run by hand would otherwise open a run folder of its own under outputs/)."""
    return [sys.executable, *(["-X", "importtime"] if importtime else []), str(ROOT / "stages/chain.py"),
            *overrides, f"+chain=[{','.join(chain)}]", "hydra.run.dir=."]


def file_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for sub in ("data/prepared", "models", "metrics", "plots"):
        for p in sorted((folder / sub).rglob("*")):
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def imported_top_level(importtime_stderr: str) -> set[str]:
    """Top-level module names in `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name.split(".")[0])
    return names


def run_jobs(jobs: list[Job], env: dict, until: float, report: Report, tick: float = 0.5) -> None:
    """Run every job at once; stop those still running at `until` (status timed_out)."""
    for j in jobs:
        j.start(env)
    while any(j.status == "running" for j in jobs):
        now = time.time()
        for j in jobs:
            if j.poll(now):
                report.log(f"{j.name}: {j.status} (exit {j.rc}) after {j.seconds} s")
        if now > until:
            for j in jobs:
                if j.status == "running":
                    j.stop("timed_out", "stopped at its time limit")
                    report.log(f"{j.name}: stopped at its time limit after {j.seconds} s")
        time.sleep(tick)


def parity(args, env: dict, report: Report, deadline: float, gain_prepare: Job) -> None:
    from suptickets.schedules import split_of

    device = "cpu" if args.dry_run else "cuda"
    overrides = [f"experiment={SMOKE}", f"device={device}", "threads=1", "tracking.wandb.mode=disabled",
                 *(DRY if args.dry_run else []), *args.data_root_override]
    cfg = compose(overrides)
    runs = [Job(f"parity_{k}", chain_cmd(overrides, PARITY_CHAIN, importtime=k == "a"), args.work / f"parity_{k}",
                training_epochs(cfg, PARITY_CHAIN)) for k in ("a", "b")]
    part = report.data["parity"] = {"status": "running", "preset": SMOKE, "overrides": overrides, "runs": []}
    report.write()
    run_jobs([*runs, gain_prepare], env, min(deadline, time.time() + args.parity_s), report)
    n_tickets = split_of(cfg)[2]
    models = ["dense", "sparse_baseline", "warmup", *[f"ticket_{k:02d}" for k in range(1, n_tickets + 1)],
              "superposed", "ticket_ensemble"]
    evals = {}
    for r in runs:
        rec = r.record()
        path = r.cwd / "metrics/evaluate.json"
        if r.status == "done" and path.is_file():
            evals[r.name] = rec["evaluate"] = json.loads(path.read_text())
        elif r.status != "done":
            rec["error"] = r.error_tail()
            report.log(f"{r.name} failed:\n{rec['error']}")
        part["runs"].append(rec)
    ok = all(r.status == "done" for r in runs) and len(evals) == len(runs)
    finished = [r for r in runs if r.name in evals]
    expected = expected_density(cfg, finished[0].cwd / "data/prepared") if finished else None
    hashes = [file_hashes(r.cwd) for r in runs]
    differing = sorted(k for k in set(hashes[0]) | set(hashes[1]) if hashes[0].get(k) != hashes[1].get(k))
    densities = [v for e in evals.values() for v in e.get("density", {}).values()]
    accs = [v for e in evals.values() for v in e.get("test_acc", {}).values()]
    errs = "".join(read_text(r.err) for r in runs)
    part["checks"] = {
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
    checks = part["checks"]
    passed = all(checks[k] for k in ("runs_ok", "evaluate_keys", "densities_exact", "accuracies_sane",
                                     "models_identical")) and not checks["missing_imports"]
    part["status"] = "passed" if passed else ("timed out" if any(r.status == "timed_out" for r in runs) else "failed")
    report.log(f"parity: {part['status']}; differing files: {', '.join(differing) or 'none'}")
    if gain_prepare.status != "done":
        report.log(f"prepare for the gain runs: {gain_prepare.status}\n{gain_prepare.error_tail()}")
    report.write()


def throughput(args, env: dict, report: Report, deadline: float) -> None:
    raw = args.work / "throughput.json"
    job = Job("throughput", [sys.executable, str(ROOT / "benchmarks/gpu_throughput.py"), "--json", str(raw),
                             *(["--dry-run", "--threads", "1"] if args.dry_run else [])], args.work / "throughput")
    part = report.data["throughput"] = {"status": "running", "command": " ".join(job.cmd[1:])}
    report.write()
    run_jobs([job], env, min(deadline, time.time() + args.throughput_s), report)
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


def gain(args, env: dict, report: Report, deadline: float, prepared: Job) -> None:
    import yaml

    from suptickets.gains import row, summarize
    from suptickets.sweep import chain_inputs, link_inputs

    part = report.data["gain"] = {"status": "running", "preset": GAIN, "densities": args.densities, "jobs": []}
    if prepared.status != "done":  # (it ran beside the parity runs)
        part["status"] = f"not run: preparing the data {prepared.status}"
        part["error"] = prepared.error_tail()
        report.write()
        return
    device = "cpu" if args.dry_run else "cuda"
    base = [f"experiment={GAIN}", f"device={device}", "threads=1", "tracking.wandb.mode=disabled",
            *(DRY if args.dry_run else []), *args.overrides, *args.data_root_override]
    cfg = compose(base)
    part.update({"overrides": base, "epochs": cfg["train"]["epochs"], "parallel": args.parallel,
                 "data": "each seed's own split (its validation carve-out); test = the official test split"})
    jobs, meta = [], {}
    for seed in range(args.seeds):
        for d in args.densities:
            over = [*base, f"dst.density={d}", f"seed={seed}"]
            j = Job(f"gain_d{d:g}_s{seed}", chain_cmd(over, GAIN_CHAIN), args.work / f"gain_d{d:g}_s{seed}",
                    training_epochs(cfg, GAIN_CHAIN))
            jobs.append(j)
            meta[j.name] = {"density": d, "seed": seed}
    data = prepared.cwd / "data/prepared"
    expected = {d: expected_density({**cfg, "dst": {**cfg["dst"], "density": d}}, data) for d in args.densities}
    needed = chain_inputs(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"], GAIN_CHAIN)
    tail_s = 5.0 if args.dry_run else 15.0
    finished: list[float] = []
    last_cancel = 0.0

    def update() -> None:
        part["jobs"] = []
        for j in jobs:
            rec = {**meta[j.name], **j.record()}
            if j.status == "done":
                rec["evaluate"] = json.loads((j.cwd / "metrics/evaluate.json").read_text())
                rec["row"] = row(rec["evaluate"])
                rec["densities_exact"] = all(abs(v - expected[meta[j.name]["density"]]) < 1e-9
                                             for v in rec["evaluate"]["density"].values())
            elif j.status == "failed":
                rec["error"] = j.error_tail(5)
            part["jobs"].append(rec)
        summary = {}
        for d in args.densities:
            rows = [r["row"] for r in part["jobs"] if r["density"] == d and "row" in r]
            if rows:
                summary[f"{d:g}"] = {"n": len(rows), **summarize(rows)}
        part["summary"] = summary
        epochs = sum(r["epochs_done"] for r in part["jobs"])
        part["epochs_per_s_all_jobs"] = round(epochs / max(time.time() - gain_started, 1e-9), 3)
        report.write()

    gain_started = time.time()
    for j in jobs[:args.parallel]:
        link_inputs(prepared.cwd, j.cwd, needed)
        j.start(env)
    report.log(f"gain: {min(args.parallel, len(jobs))} of {len(jobs)} planned jobs started")
    update()
    while any(j.status == "running" for j in jobs):
        now = time.time()
        changed = False
        for j in jobs:
            if j.poll(now):
                changed = True
                report.log(f"{j.name}: {j.status} after {j.seconds} s")
                if j.status == "done":
                    finished.append(j.seconds)
        running = [j for j in jobs if j.status == "running"]
        for victim in jobs_to_cancel(running, now, deadline, tail_s) if now - last_cancel > args.cancel_wait_s else []:
            victim.stop("cancelled", "predicted to end after the budget; cancelled so the others end sooner")
            report.log(f"{victim.name}: cancelled after {victim.seconds} s "
                       f"({len(victim.epoch_times)}/{victim.epochs_total} epochs)")
            last_cancel, changed = now, True
        pending = [j for j in jobs if j.status == "pending"]
        running = [j for j in jobs if j.status == "running"]
        if pending and len(running) < args.parallel and finished and now + statistics.median(finished) < deadline:
            link_inputs(prepared.cwd, pending[0].cwd, needed)
            pending[0].start(env)
            report.log(f"{pending[0].name}: started")
            changed = True
        if now > deadline:
            for j in running:
                j.stop("cut", "still running at the end of the budget")
                report.log(f"{j.name}: cut at the deadline ({len(j.epoch_times)}/{j.epochs_total} epochs)")
            changed = True
        if changed:
            update()
        time.sleep(0.5)
    for j in jobs:
        if j.status == "pending":
            j.status, j.note = "not started", "no time left in the budget"
    n_done = sum(j.status == "done" for j in jobs)
    part["status"] = f"{n_done} of {len(jobs)} planned runs finished"
    update()


def environment(dry_run: bool) -> dict:
    import importlib.metadata as md

    import torch

    cuda = torch.cuda.is_available()
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
           "cuda_version": torch.version.cuda, "cpu_count": os.cpu_count(),
           "device": torch.cuda.get_device_name(0) if cuda and not dry_run else "CPU"}
    versions = {}
    for name in ("numpy", "pandas", "pandera", "hydra-core", "omegaconf", "PyYAML", "pydantic", "safetensors",
                 "torchvision", "matplotlib"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    env["carried_wheels"] = [] if dry_run else sorted(p.name for p in (ROOT / ".gpu_carry/wheels").glob("*.whl"))
    if cuda and not dry_run:
        try:
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["nvidia_smi"] = None
    return env


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # W&B is off through tracking.wandb.mode=disabled on every command line. WANDB_MODE is removed:
    # when it is set, a stage leaves the mode to wandb itself and imports it, and wandb is not installed
    # on the GPU machine.
    env.pop("WANDB_MODE", None)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])})
    return env


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    ap.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget of the whole check (360)")
    ap.add_argument("--started-at", type=float, help="when the budget began (epoch seconds; default: now)")
    ap.add_argument("--dry-run", action="store_true", help="everything on the CPU at toy sizes")
    ap.add_argument("--work", type=Path, help="folder for the runs (default: a new temporary folder)")
    ap.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files (default: the project's data.root)")
    ap.add_argument("--seeds", type=int, help="seeds planned for the gain (8, dry run 2; as many run as fit)")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.02])
    ap.add_argument("--parallel", type=int, default=2, help="gain runs at once on the GPU (default: 2; an H200 served "
                    "~0.33 epochs/s in all with 2, 4 or 12, so more only finish later)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="extra override for the gain runs")
    ap.add_argument("--parity-s", type=float, default=150.0, help="time limit of the parity part")
    ap.add_argument("--throughput-s", type=float, default=120.0, help="time limit of the throughput part")
    ap.add_argument("--cancel-wait-s", type=float, default=15.0, help="seconds between two cancellations")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        raise CheckError(f"--budget-s={args.budget_s:g}: expected a number of seconds > 0")
    if (args.seeds is not None and args.seeds < 1) or not args.densities or not all(0 < d <= 1 for d in args.densities):
        raise CheckError(f"--seeds={args.seeds} --densities={args.densities}: expected >= 1 seed and densities in (0, 1]")
    if args.data_root and not Path(args.data_root).is_dir():
        raise CheckError(f"--data-root={args.data_root}: no such folder (scripts/gpu_check_prepare.sh fills .gpu_carry/)")
    if args.parallel < 1:
        raise CheckError(f"--parallel={args.parallel}: expected an integer >= 1")
    if args.seeds is None:
        args.seeds = 2 if args.dry_run else 8
    args.data_root_override = [f"data.root='{Path(args.data_root).resolve()}'"] if args.data_root else []
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except CheckError as err:
        print(f"error: gpu_check: {err}", file=sys.stderr)
        return 2
    started = args.started_at or time.time()
    deadline = started + args.budget_s - 3.0  # room for the last write
    report = Report(args.out, {"check": "suptickets GPU check", "dry_run": args.dry_run, "status": "running",
                               "started_at": started, "budget_s": args.budget_s,
                               "command": " ".join(sys.argv)})
    cut = {"signal": None}

    def on_signal(signum, frame):
        cut["signal"] = signal.Signals(signum).name
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        report.data["environment"] = environment(args.dry_run)
        env = report.data["environment"]
        report.log(f"{env['device']}, torch {env['torch']}, Python {env['python']}, {env['cpu_count']} cores")
        if not args.dry_run and not env["cuda_available"]:
            raise CheckError("CUDA is not available on this machine; run on a GPU, or use --dry-run")
        report.write()
        args.work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check."))
        args.work.mkdir(parents=True, exist_ok=True)
        report.data["work"] = str(args.work)
        cenv = child_env()
        # the gain's data (the whole data set, or the toy subset) is prepared beside the parity runs
        gain_base = [f"experiment={GAIN}", "threads=1", "tracking.wandb.mode=disabled",
                     *(DRY if args.dry_run else []), *args.overrides, *args.data_root_override]
        prepared = Job("gain_prepare", chain_cmd(gain_base, ["prepare"]), args.work / "gain_data")
        parity(args, cenv, report, deadline, prepared)
        if time.time() < deadline:
            throughput(args, cenv, report, deadline)
        else:
            report.data["throughput"] = {"status": "not run: no time left in the budget"}
        if time.time() < deadline:
            gain(args, cenv, report, deadline, prepared)
        else:
            report.data["gain"] = {"status": "not run: no time left in the budget"}
        report.data["status"] = "complete"
    except CheckError as err:
        report.data["status"], report.data["error"] = "error", str(err)
        report.write()
        print(f"error: gpu_check: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        report.data["status"] = f"interrupted ({cut['signal'] or 'SIGINT'}): what finished is above"
        code = 130
    except BaseException:
        report.data["status"], report.data["error"] = "crashed", traceback.format_exc()
        report.write()
        raise
    finally:
        for j in STARTED:
            j.stop("cut", "still running when the check ended")
    report.write()
    report.log(f"{'done' if code == 0 else 'interrupted'}: {report.out / 'gpu_check.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
