"""A DAG that cannot go stale: every stage declares in dvc.yaml every project file it imports and
every setting it reads, as recorded by running the smoke DAG (tests/dag_probe.py), not as listed by
hand; and DVC then calls stale what a change affects, and only that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, STAGE_ENV, run
from suptickets import dvcfiles
from suptickets.dvcfiles import declared_params, inside, stage_paths, writes

sys.path.insert(0, str(ROOT / "stages"))
sys.path.insert(0, str(Path(__file__).parent))
from _stage import RESULT_FREE  # noqa: E402
from dag_probe import Recorder  # noqa: E402

CODE = ("src/", "stages/")
SPEC = dvcfiles.stages(ROOT)


def in_dag_order(stages: dict) -> list[str]:
    """The stages of dvc.yaml, each after the stages whose outputs it reads."""
    writer = {o: name for name, s in stages.items() for o in writes(s)}

    def upstream(name):
        return {w for d in stage_paths(stages[name].get("deps")) for o, w in writer.items() if inside(d, o)} - {name}

    order: list[str] = []
    while len(order) < len(stages):
        order += [n for n in stages if n not in order and upstream(n) <= set(order)][:1]
    return order


def downstream(stages: dict, names: set[str]) -> set[str]:
    """`names` and every stage that reads, directly or not, what they write."""
    out = set(names)
    while True:
        written = {o for n in out for o in writes(stages[n])}
        more = {n for n, s in stages.items() if any(inside(d, o) for d in stage_paths(s.get("deps")) for o in written)}
        if more <= out:
            return out
        out |= more


def covered(item: str, declared: list[str]) -> bool:
    return any(item == d or item.startswith(d.rstrip("/.") + ("/" if "/" in d else ".")) for d in declared)


def test_the_recorder_notes_values_read_and_sections_used_whole():
    r = Recorder({"a": {"b": 1, "c": {"d": 2}}, "e": 3, "f": None})
    assert r["a"]["c"]["d"] == 2 and r.get("e") == 3 and r.get("z", 5) == 5 and "f" in r
    assert r.log == {"a.c.d", "e", "z", "f"}
    assert dict(r["a"]["c"]) == {"d": 2} and "a.c" in r.log
    assert [k for k, _ in r["a"].items()] == ["b", "c"] and "a" in r.log
    assert json.dumps(Recorder({"x": 1, "y": 2}, log=(log := set()))) and log == {"x", "y"}


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict:
    """What each stage of the smoke DAG imports and reads, recorded by running it (in one process) on
    a tenth of the smoke preset's images: the same code paths and settings, a fraction of the time."""
    folder = tmp_path_factory.mktemp("dag")
    out = folder / "records.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("dag_probe.py")), str(out),
                           *in_dag_order(SPEC), "--", "experiment=smoke", "data.limit_train=200",
                           "data.limit_test=100", "threads=1"],
                          cwd=folder, capture_output=True, text=True, timeout=600,
                          env=STAGE_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_stage_ran(records):
    assert list(records) == in_dag_order(SPEC)


def test_every_stage_declares_each_project_file_it_imports_and_no_other(records):
    problems = []
    for name, rec in records.items():
        deps = stage_paths(SPEC[name].get("deps"))
        problems += [f"{name}: dvc.yaml lists {d} twice" for d in sorted({d for d in deps if deps.count(d) > 1})]
        code = [d for d in deps if d.startswith(CODE)]
        problems += [f"{name}: imports {m}, missing from its deps in dvc.yaml" for m in rec["modules"]
                     if not covered(m, code)]
        problems += [f"{name}: dvc.yaml lists {d}, which it never imports" for d in code
                     if not any(covered(m, [d]) for m in rec["modules"])]
    assert problems == [], "\n".join(problems)


def test_every_stage_declares_each_setting_it_reads(records):
    """A stage that reads data/prepared may also read the settings prepare declares: data/prepared
    records them (summary.json's config, which runtime.load_batches compares with the run's), so a
    change to any of them changes that dependency."""
    recorded_by_prepared = declared_params(SPEC["prepare"])
    problems = []
    for name, rec in records.items():
        params = declared_params(SPEC[name])
        problems += [f"{name}: dvc.yaml lists param {p} twice" for p in sorted({p for p in params if params.count(p) > 1})]
        if "data/prepared" in stage_paths(SPEC[name].get("deps")):
            params = params + recorded_by_prepared
        problems += [f"{name}: reads {key}, missing from its params in dvc.yaml (and not in _stage.RESULT_FREE)"
                     for key in rec["params"] if not covered(key, params + list(RESULT_FREE))]
    assert problems == [], "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# acceptance: what DVC calls stale after a change, in a copy of the smoke run (dvc.lock complete)


@pytest.fixture()
def smoke_copy(smoke_copy) -> Path:
    """The test's own copy of the smoke run (tests/conftest.py), checked clean before the change."""
    assert stale(smoke_copy) == set()
    return smoke_copy


def stale(repo: Path) -> set[str]:
    """The stages `dvc status` reports as changed (their own deps or params)."""
    return {k.split(":")[-1] for k in json.loads(run(repo, "dvc", "status", "--json").stdout)}


def set_param(repo: Path, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, last = key.split(".")
    for p in parents:
        node = node[p]
    assert node[last] != value
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_changing_the_model_file_format_makes_every_stage_with_model_files_stale(smoke_copy):
    with open(smoke_copy / "src/suptickets/artifacts.py", "a") as f:
        f.write("\n# touched\n")
    model_stages = {n for n, s in SPEC.items()
                    if any(p.startswith("models/") for k in ("deps", "outs") for p in stage_paths(s.get(k)))}
    assert {"dense", "warmup", "tickets", "superpose", "evaluate", "report"} <= model_stages
    assert model_stages <= stale(smoke_copy)


def test_changing_channels_last_makes_superpose_and_evaluate_stale(smoke_copy):
    set_param(smoke_copy, "train.channels_last", True)
    changed = stale(smoke_copy)
    assert {"superpose", "evaluate"} <= changed
    assert "prepare" not in changed and "report" not in changed


def test_changing_the_superposition_method_reruns_only_superpose_and_what_reads_its_model(smoke_copy):
    set_param(smoke_copy, "superpose.method", "cima")
    changed = stale(smoke_copy)
    readers = {n for n, s in SPEC.items() if "models/superposed.safetensors" in stage_paths(s.get("deps"))}
    assert downstream(SPEC, changed) == {"superpose", "report"} | downstream(SPEC, readers)
    assert {"superpose", "evaluate", "report"} <= downstream(SPEC, changed)
    assert not downstream(SPEC, changed) & {"prepare", "dense", "sparse_baseline", "warmup", "tickets"}
