"""CPU time of what every process of the pipeline does first, under each Python 3.11 this machine
has: load the stage's packages (torch, Hydra, pandas, pandera, safetensors) and round-trip
dvc.lock through ruamel.yaml as DVC does after each stage. Every stage, `dvc` command and test
process pays this, so its ratio between two interpreters is about the ratio of `make test`.

Each interpreter runs the same work in fresh processes with this .venv's packages on its path (any
build of 3.11 reads the same wheels), alternating between interpreters, `--repeats` times; the
median CPU seconds (user + system) of each and its ratio to this .venv's are printed.

    python benchmarks/interpreter.py
    python benchmarks/interpreter.py --python /opt/python3.11/bin/python3.11 --repeats 9
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import _common  # noqa: F401  (the environment defaults; the processes it starts inherit them)

ROOT = Path(__file__).resolve().parents[1]
WORK = f"""
import io, torch, hydra, omegaconf, pandas, pandera, safetensors.torch
from ruamel.yaml import YAML
yaml = YAML()
text = open({str(ROOT / 'dvc.lock')!r}).read()
for _ in range(3):
    out = io.StringIO()
    yaml.dump(yaml.load(text), out)
"""
DESCRIBE = "import sys, sysconfig; print(sys.executable); print(sys.version.split()[0]); print(sysconfig.get_config_var('CONFIG_ARGS'))"


def describe(python: str) -> tuple[str, str, str] | None:
    """(executable, version, configure arguments) of `python`; None when it is not a Python 3.11."""
    try:
        proc = subprocess.run([python, "-c", DESCRIBE], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 3 or not lines[1].startswith("3.11."):
        return None
    return os.path.realpath(lines[0]), lines[1], lines[2]


def cpu_seconds(python: str, env: dict[str, str]) -> float:
    """User + system CPU seconds of one fresh process running WORK."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([python, "-c", WORK], env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{python}: the work failed:\n{proc.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = _common.parser(__doc__, costs="about 3 s per process on a 2-core CPU: with two interpreters and the "
                                       "default 5 repeats, about 30 s. It writes nothing.")
    ap.add_argument("--python", action="append", default=[],
                    help="another interpreter to compare (repeatable); by default every python3.11 found on PATH "
                         "and /usr/bin/python3.11")
    ap.add_argument("--repeats", type=int, default=5, help="processes per interpreter (default %(default)s)")
    _common.add_json(ap)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be >= 1")
    mine = describe(sys.executable)
    others = args.python or list(filter(None, [shutil.which("python3.11"), "/usr/bin/python3.11"]))
    pythons: dict[str, tuple[str, str, str]] = {mine[0]: mine}
    for python in others:
        info = describe(python)
        if info is None:
            if python in args.python:
                sys.exit(f"--python {python}: not a Python 3.11 that runs")
            continue
        pythons.setdefault(info[0], info)
    site = sysconfig.get_paths()["purelib"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, str(ROOT / "src")]))
    _common.busy_warning(1)
    times: dict[str, list[float]] = {exe: [] for exe in pythons}
    for _ in range(args.repeats):
        for exe in pythons:
            times[exe].append(cpu_seconds(exe, env))
    base = _common.median(times[mine[0]])
    rows = []
    for exe, (_, version, config) in pythons.items():
        m = _common.median(times[exe])
        rows.append({"python": exe, "version": version, "this_venv": exe == mine[0], "cpu_s_median": round(m, 3),
                     "cpu_s": [round(t, 3) for t in times[exe]], "ratio_to_this_venv": round(m / base, 3),
                     "configure": config})
        print(f"{exe} ({version}{', this .venv' if exe == mine[0] else ''}): {m:.2f} s CPU per process "
              f"(median of {args.repeats}), {m / base:.2f}x this .venv's")
    if args.json:
        args.json.write_text(json.dumps({"work": "imports of a stage + 3 dvc.lock round trips", "rows": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
