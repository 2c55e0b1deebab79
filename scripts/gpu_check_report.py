"""The GPU check's report: OUT/gpu_check.json (everything) and OUT/gpu_check.md (the tables), rewritten
whole after every change, and OUT/gpu_check.log (the orchestration log)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gpu_check_plan as plan
from gpu_check_run import EVALUATE_KEYS, MIN_ACC, NOT_ON_GPU_IMAGE


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
    env = d.get("environment", {})
    lines = [f"# GPU check{' (dry run on the CPU: toy sizes, nothing measured)' if d['dry_run'] else ''}", "",
             f"{env.get('device', '?')}; torch {env.get('torch', '?')} (CUDA {env.get('cuda_version')}), "
             f"Python {env.get('python', '?')}, {env.get('cpu_count', '?')} CPU cores. Budget {d['budget_s']:.0f} s, "
             f"elapsed {d.get('elapsed_s', 0):.0f} s; status: **{d['status']}**.", ""]
    if d.get("error"):
        lines += ["```", d["error"].strip(), "```", ""]
    if d.get("plan"):
        lines += plan_section(d["plan"], d["dry_run"])
    return "\n".join(lines + parity_section(d.get("parity", {})) + throughput_section(d.get("throughput", {}), d["dry_run"])
                     + gain_section(d.get("gain", {}))) + "\n"


def plan_section(p: dict, dry_run: bool) -> list[str]:
    g = p["gain"]
    who = "of a real run (one GPU, faithful settings)" if dry_run else "of this run"
    lines = [f"## Plan {who}", "",
             f"- parity: the smoke DAG twice per mode: {', '.join(m['mode'] for m in plan.PARITY_MODES)} "
             f"({'; '.join(f'{k} {v}' for k, v in plan.CUDA_ONLY_MODES.items()) if dry_run else 'graphed against eager'}); "
             "throughput and the gain graphed if the graphed mode passes, else eager;",
             f"- throughput: {', '.join(p['throughput']['presets'])} with {' and '.join(map(str, plan.THROUGHPUT_LANES))} "
             f"lane(s), `{' '.join(plan.THROUGHPUT_ARGS)}`, within a slot of {plan.THROUGHPUT_SLOT_S:.0f} s;",
             f"- gain: `{plan.GAIN}`, cells {', '.join(c['cell'] for c in p['cells'])}, {p['seeds']} seeds each: "
             f"{g['runs']} runs of {g['epochs_per_run']} epochs ({' → '.join(plan.GAIN_CHAIN)}), "
             f"{g['lanes_per_process']} lanes to a process, {g['processes']} processes one after another;",
             f"- predicted: setup, parity and the throughput slot {span(g['before_gain_s'])}; the gain "
             f"{span(g['predicted_s'])} against {g['available_s']:.0f} s left of {g['budget_s']:.0f} s: **{g['verdict']}**.",
             "", "Sources of the predicted figures:", ""]
    lines += [f"- {k}: {v}" for k, v in g["sources"].items()]
    return lines + [""]


def span(pair) -> str:
    return plan.span(*pair)


def parity_section(p: dict) -> list[str]:
    lines = ["## a. Parity: the smoke DAG twice on the device, per mode", "", f"status: {p.get('status', 'not started')}", ""]
    for name, m in p.get("modes", {}).items():
        lines += [f"### {name}: {m['status']}", ""]
        c = m.get("checks")
        if c:
            lines += ["| check | result |", "|---|---|",
                      f"| every run ended (exit 0) | {c['runs_ok']} |",
                      f"| evaluate.json has {', '.join(EVALUATE_KEYS)} and every model | {c['evaluate_keys']} |",
                      f"| densities exact (expected {fmt(c['expected_density'], '.6f')}) | {c['densities_exact']} |",
                      f"| test accuracy of every model > {MIN_ACC} (min {fmt(c['min_test_acc'])}) | {c['accuracies_sane']} |",
                      f"| models identical in both runs | {c['models_identical']} |",
                      f"| files that differ | {', '.join(c['differing_files']) or 'none'} |",
                      f"| ops without a deterministic kernel (PyTorch's warnings) | {', '.join(c['nondeterministic_ops']) or 'none'} |",
                      f"| imported though not needed ({', '.join(NOT_ON_GPU_IMAGE)}) | {', '.join(c['missing_imports']) or 'none'} |",
                      ""]
        for r in m.get("runs", []):
            acc = (r.get("evaluate") or {}).get("test_acc", {})
            lines.append(f"- {r['name']}: {r['status']} in {fmt(r['seconds'], '.0f')} s"
                         + (f"; test_acc {', '.join(f'{k} {v:.3f}' for k, v in acc.items())}" if acc else ""))
        lines.append("")
    for m in p.get("not_run", []):
        lines += [f"### {m['mode']}: {m['why']}", ""]
    v = p.get("graphed_vs_eager")
    if v:
        lines += ["### graphed against eager (first run of each)", "", f"{v['summary']}", ""]
        if v.get("differing_files") is not None:
            lines += ["| model | max abs weight difference | test accuracy, graphed - eager (points) |", "|---|---|---|"]
            lines += [f"| {name} | {w:.3g} | {v['test_acc_points'].get(Path(name).stem, '')} |"
                      for name, w in v["max_abs_weight_difference"].items()]
            lines.append("")
    return lines


def throughput_section(t: dict, dry_run: bool) -> list[str]:
    def goal(ratio: float) -> str:
        return "" if dry_run else f" ({'met' if ratio >= 0.97 else 'not met'})"

    lines = ["## b. Throughput (`benchmarks/gpu_throughput.py`, images/s summed over lanes)", "",
             f"status: {t.get('status', 'not started')}", ""]
    if t.get("results"):
        lines += ["| preset | model | lanes | dense img/s | masked img/s | ms/step dense | ms/step masked | "
                  "masked/dense (goal ≥ 0.97) | 95% interval | host share dense | one update (ms) | masks exact |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in t["results"]:
            ips, ms, q, share = r["images_per_s"], r["ms_per_step"], r["masked_over_dense"], r["host_share"]["dense"]
            lines.append(f"| {r['experiment']} | {r['model']} | {r.get('lanes', 1)} | {ips['dense']:.0f} | "
                         f"{ips['masked']:.0f} | {ms['dense']:.3f} | {ms['masked']:.3f} | {q['ratio']:.3f}{goal(q['ratio'])} | "
                         f"[{q['low']:.3f}, {q['high']:.3f}] | {'—' if share is None else f'{100 * share:.0f}%'} | "
                         f"{r['update_ms']:.1f} | {r['masks_exact']} |")
        lines.append("")
    return lines


def gain_section(g: dict) -> list[str]:
    from suptickets.gains import COLUMNS

    lines = ["## c. Gain of superposition (superposed − sparse_baseline, test accuracy)", "",
             f"status: {g.get('status', 'not started')}", ""]
    for p in g.get("processes", []):
        lines.append(f"- {p['name']}: {p['lanes']} lanes, {p['status']} in {fmt(p['seconds'], '.0f')} s, "
                     f"{p['epochs_done']}/{p['epochs_total']} epochs ({fmt(p['epochs_per_s'], '.3f')} epochs/s in all)")
    runs = g.get("runs", [])
    if runs:
        lines += ["", "| cell | seed | process/lane | status | " + " | ".join(COLUMNS) + " | gain (pts) | epochs |",
                  "|---|---|---|---|" + "---|" * (len(COLUMNS) + 2)]
        for r in runs:
            row = r.get("row") or {}
            cells = " | ".join(fmt(100 * row[k], ".2f") if k in row else "—" for k in COLUMNS)
            gain = fmt(100 * row["gain"], "+.2f") if "gain" in row else "—"
            where = f"{r['process']}/lane-{r['lane']}" if "process" in r else "—"
            lines.append(f"| {r['cell']} | {r['seed']} | {where} | {r['status']} | {cells} | {gain} | "
                         f"{r.get('epochs_done', 0)}/{r.get('epochs_total', g.get('epochs_per_run', '?'))} |")
        lines.append("")
    if g.get("summary"):
        lines += ["Per cell, mean ± std over seeds (%); the gain paired by seed with its 95% t interval:", "",
                  "| cell | n | " + " | ".join(COLUMNS) + " | gain (pts) | 95% CI |", "|---|---|" + "---|" * (len(COLUMNS) + 2)]
        for cell, s in g["summary"].items():
            m, sd, half = s["gain"]
            ci = "— (n = 1)" if s["n"] < 2 else f"[{m - half:+.2f}, {m + half:+.2f}]"
            lines.append(f"| {cell} | {s['n']} | " + " | ".join(f"{s[k][0]:.2f} ± {s[k][1]:.2f}" for k in COLUMNS)
                         + f" | {m:+.2f} ± {sd:.2f} | {ci} |")
        lines.append("")
    return lines
