"""The training path stays lean: with tracking disabled, the training stages (and their chain) never
import W&B, DVC, pandas or pandera (the GPU machine has none of them but pandas), nor PyTorch's
compilers (torch._dynamo, torch._inductor: about 1.2 s and 1.3 s of CPU per process; see
`train.optimizer_step` and `runtime.deterministic_kernels`). And a refused setting answers before
torch loads."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, SMALL, STAGE_ENV

HEAVY = {"pandas", "pandera", "wandb", "dvc", "torch._dynamo", "torch._inductor"}
RUN_AND_LIST = """
import json, runpy, sys
script, *args = sys.argv[1:]
sys.argv = [script, *args]
sys.path.insert(0, {stages!r})
runpy.run_path(script, run_name="__main__")
compilers = {{"torch._dynamo", "torch._inductor"}} & set(sys.modules)
print("LOADED=" + json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} | compilers)))
"""


def test_the_training_stages_import_no_tracking_dvc_or_table_packages(small_project):
    proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST.format(stages=str(ROOT / "stages")),
                           str(ROOT / "stages" / "chain.py"), *SMALL, "train.epochs=4", "tracking.wandb.mode=disabled",
                           "+chain=[dense,sparse_baseline,warmup,tickets]", "hydra.run.dir=."],
                          cwd=small_project, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in STAGE_ENV.items() if k != "WANDB_MODE"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout.split("LOADED=")[-1]))
    assert {"torch", "hydra", "suptickets"} <= loaded  # the list is the real one
    assert loaded & HEAVY == set()
    for out in ("models/dense.safetensors", "models/sparse_baseline.safetensors", "models/tickets/ticket_01.safetensors",
                "plots/tickets.csv"):
        assert (small_project / out).is_file(), out  # every training stage ran to its end


def test_a_refused_setting_answers_before_torch_loads(tmp_path):
    """Every stage checks its config before it imports torch (its body imports it): a bad value costs
    a Python start and Hydra's composition, not the seconds torch takes to load."""
    scripts = sorted(p for p in (ROOT / "stages").glob("[!_]*.py") if p.stem != "chain")
    assert len(scripts) == 10
    for script in scripts:
        proc = subprocess.run([sys.executable, "-X", "importtime", str(script), "tracking.wandb.mode=sometimes"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, env=STAGE_ENV)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and errors == [
            f"error: {script.stem}: tracking.wandb.mode='sometimes': not one of offline, online, disabled"], proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "hydra" in imported and "torch" not in imported, script.stem
    assert list(tmp_path.iterdir()) == []
