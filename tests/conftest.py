"""Shared fixtures: a throwaway git + DVC copy of the project, a runner for its commands, and the
suite's few end-to-end runs, each made once and shared by every test that only reads it:

- `smoke_repo`: `dvc exp run -S experiment=smoke`, the whole smoke DAG (read it, never change it:
  `smoke_copy` gives a test its own copy, where DVC's run cache reruns only what a change affects);
- `queued_repo`: a copy of it where the README's queue example adds one experiment beside the
  existing one: GraNet at density 0.02 (DVC reruns all but prepare and dense, the smoke run's);
- `resume_pair`: the smoke run killed in warmup and in tickets then rerun, beside `smoke_repo` as
  the uninterrupted run of the same config (tests/test_resume.py; tests/test_repro.py compares the two).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import project_copy  # noqa: E402
from project_copy import copy_project  # noqa: E402

# commands in a copy: commits by "test"; W&B disabled (WANDB_MODE), except where a test reads the W&B
# runs and asks for wandb=None: then as the copy's params.yaml says (offline). W&B costs a stage
# process about a second and a half; DVC-tracked outputs are the same either way.
env_for = functools.partial(project_copy.env_for, wandb="disabled", author="test")
WANDB_AS_CONFIGURED = None


def run(repo: Path, *cmd: str, check: bool = True, timeout: int = 600,
        wandb: str | None = "disabled") -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=repo, env=env_for(repo, wandb=wandb), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_repo(dest: Path) -> Path:
    """A fresh git repo holding the project's files, committed, with DVC initialised as in the project."""
    return copy_project(dest)


def once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """What `build(folder)` returns (JSON), built once per test session: under pytest-xdist (`make
    test` runs the suite in a process per core) the workers share it — the first to ask builds it
    under a file lock, the others wait for it and reuse it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder, done = base / name, base / f"{name}.json"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done.write_text(json.dumps(build(folder)))
    return json.loads(done.read_text())


BUILT = ("smoke_repo", "queued_repo", "resume_pair")  # the shared runs, each built once (`once`)

# The readers of a shared run that run stages or DVC commands of their own, longest first. They go
# first among the readers, so that the suite does not end on one of them while the other workers
# sit idle.
LONG_READERS = ("test_share.py::test_a_colleague_pulls_outputs_run_cache_and_experiments_and_trains_nothing",
                "test_readme.py::test_the_readme_examples_run_as_written",
                "test_compare.py::test_compare_marks_a_stale_workspace_and_names_each_rows_preset_and_overrides")


# The longest end-to-end tests that read no shared run (~110 and ~70 s in a `make test` on 2 cores).
LONG_E2E = ("test_imagefolder.py::test_the_dag_runs_on_an_image_folder_under_two_processes",
            "test_gpu_check.py::test_dry_run_plans_and_reports_parity_throughput_and_gain")


def pytest_collection_modifyitems(config, items) -> None:
    """The order `make test`'s workers take the tests in. pytest-xdist with `--maxschedchunk=1` gives
    each worker two tests to start with and then one test at a time, keeping one waiting behind
    the one running: first the queued run's build (which builds the smoke run) and the GPU check's
    dry run on one worker, the image-folder DAG and then the resume pair's build on the other (its
    run ends by asking for the smoke run, by then built: a worker asking for a run that another is
    building waits idle under the lock); then the other end-to-end tests that need no shared run,
    the other tests, and last the tests that read a shared run, by then built (the longest of them
    first: LONG_READERS)."""
    def reads(item) -> bool:
        return any(f in item.fixturenames for f in BUILT)

    builders = []
    for name in ("queued_repo", "resume_pair"):  # queued_repo builds smoke_repo first
        first = next((i for i in items if name in i.fixturenames), None)
        if first is not None and first not in builders:
            builders.append(first)
    rest = [i for i in items if i not in builders]
    e2e = [i for i in rest if i.get_closest_marker("e2e") and not reads(i)]
    others = [i for i in rest if not i.get_closest_marker("e2e") and not reads(i)]
    readers = [i for i in rest if reads(i)]

    def longest_first(tests: list, names: tuple[str, ...]) -> list:  # stable: the rest keep their order
        rank = {name: k for k, name in enumerate(names)}
        return sorted(tests, key=lambda i: rank.get(i.nodeid.split("/")[-1], len(rank)))

    e2e, readers = longest_first(e2e, LONG_E2E), longest_first(readers, LONG_READERS)
    long = [i for i in e2e if i.nodeid.split("/")[-1] in LONG_E2E]  # image folder, GPU check
    first = builders[:1] + long[1:2] + long[:1] + builders[1:]
    items[:] = first + [i for i in e2e if i not in first] + others + readers


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory) -> Path:
    """The project copied into a new repo, after `dvc exp run -S experiment=smoke` (its log in
    exp_run.log, which git ignores through .git/info/exclude). Shared: tests only read it."""
    def build(folder: Path) -> str:
        repo = make_repo(folder / "repo")
        proc = run(repo, "dvc", "exp", "run", "-S", "experiment=smoke", wandb=WANDB_AS_CONFIGURED)
        (repo / "exp_run.log").write_text(proc.stdout + proc.stderr)
        with open(repo / ".git/info/exclude", "a") as f:
            f.write("exp_run.log\n")
        return str(repo)

    return Path(once(tmp_path_factory, "smoke", build))


def copy_repo(source: Path, dest: Path, keep: tuple[str, ...] = ()) -> Path:
    """A copy of a finished run (git, DVC cache and lock, outputs, the stage times under .cache),
    without its W&B runs and DVC's temporary files unless named in `keep`."""
    dropped = {(source, "wandb"), (source / ".dvc", "tmp")}

    def ignore(folder, names):
        return {n for n in names if (Path(folder), n) in dropped and n not in keep}

    return Path(shutil.copytree(source, dest, symlinks=True, ignore=ignore))


@pytest.fixture()
def smoke_copy(smoke_repo, tmp_path) -> Path:
    """This test's own copy of the smoke run, to change and rerun."""
    return copy_repo(smoke_repo, tmp_path / "repo")


# the smoke preset (warmup 8 epochs, then 4 two-epoch cycles: several epochs to kill each stage in),
# W&B off (by WANDB_MODE, not in params.yaml: the run's params equal `smoke_repo`'s)
RESUME_PARAMS = ["experiment=smoke"]


def repro_until(repo: Path, pattern: str, timeout: float = 600) -> None:
    """Run `dvc repro` and SIGKILL the whole process group once a checkpoint matching `pattern` exists."""
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env_for(repo), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.time()
    try:
        while time.time() - start < timeout:
            if list((repo / ".cache/suptickets/resume").glob(pattern)):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            if proc.poll() is not None:
                raise AssertionError(f"dvc repro ended (rc {proc.returncode}) before {pattern} appeared")
            time.sleep(0.02)
        raise AssertionError(f"no checkpoint {pattern} within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def resume_pair(tmp_path_factory, request) -> dict:
    """The smoke run in a fresh copy of the project, SIGKILLed in warmup and again in tickets, then
    rerun with `dvc repro` (its output in `log`), and `smoke_repo` as the uninterrupted run of the
    same config: two independent runs. Returns {"uninterrupted": repo, "resumed": repo, "log": str}."""
    resumed = once(tmp_path_factory, "resume", make_resumed_run)
    smoke_repo = request.getfixturevalue("smoke_repo")  # after: the two are built side by side
    return {"uninterrupted": smoke_repo, "resumed": Path(resumed["repo"]), "log": resumed["log"]}


def make_resumed_run(base: Path) -> dict:
    from project_copy import compose_params

    repo = make_repo(base / "resumed")
    compose_params(ROOT, RESUME_PARAMS, repo / "params.yaml")
    repro_until(repo, "warmup-*/state.safetensors")
    repro_until(repo, "tickets-*/tickets/ticket_01.safetensors")  # after the first cycle, 3 to go
    assert not (repo / "models/tickets").exists()
    proc = run(repo, "dvc", "repro")
    return {"repo": str(repo), "log": proc.stdout + proc.stderr}


README_QUEUE = ["dvc exp run --queue -S experiment=smoke -S dst=granet -S dst.density=0.02", "dvc queue start -j 2 && dvc queue status"]


def queued_experiment(repo: Path) -> str:
    """The name of the experiment the README's queue example ran in `queued_repo` (GraNet): its row
    of `make compare`'s table (scripts/compare.py reads `dvc exp show --json`)."""
    from compare import rows

    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    return next(row["experiment"] for row in rows(shown) if row["method"] == "granet")


def experiment_refs(repo: Path) -> str:
    """The git refs DVC keeps experiments under (cheap to read: git, not a `dvc` process of a second
    of CPU that would compete with the queued run)."""
    return subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=repo, capture_output=True, text=True).stdout


def wait_for_queue(repo: Path, timeout: float = 900, every: float = 30) -> None:
    """Until `dvc queue status` shows nothing queued or running (and nothing failed), asked when the
    experiment refs change (a finished experiment is stored there) and at least every `every` s."""
    start, asked, refs = time.time(), 0.0, None
    while time.time() - start < timeout:
        now_refs = experiment_refs(repo)
        if now_refs == refs and time.time() - asked < every:
            time.sleep(1)
            continue
        refs, asked = now_refs, time.time()
        proc = run(repo, "dvc", "queue", "status", check=False)
        if proc.returncode != 0 and "Expecting value" in proc.stderr:
            # DVC 3.67 can read a worker's info file while the worker rewrites it; asking again works
            asked = 0.0
            time.sleep(1)
            continue
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status = proc.stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            assert "Failed" not in status, status + run(repo, "dvc", "queue", "logs", "-h", check=False).stdout
            return
    raise AssertionError("queue did not finish in time")


@pytest.fixture(scope="session")
def queued_repo(smoke_repo, tmp_path_factory) -> Path:
    """A copy of the smoke run where the README's queue example (tests/test_readme.py checks the
    README holds it) queues one more experiment, GraNet at density 0.02, and the queue runs it beside
    the existing one. The queue workers outlive `dvc queue start`, so its output goes to a file, not a pipe."""
    def build(folder: Path) -> str:
        repo = copy_repo(smoke_repo, folder / "repo")
        run(repo, "bash", "-c", README_QUEUE[0], wandb=WANDB_AS_CONFIGURED)
        with open(repo / ".dvc" / "tmp" / "queue_start.log", "w") as log:
            subprocess.run(["bash", "-c", README_QUEUE[1]], cwd=repo, env=env_for(repo, wandb=WANDB_AS_CONFIGURED), stdout=log,
                           stderr=subprocess.STDOUT, check=True, timeout=120)
        wait_for_queue(repo)
        return str(repo)

    return Path(once(tmp_path_factory, "queued", build))


# ----------------------------------------------------------------------------------------------
# stage scripts run by hand (outside DVC), on a small subset

SMALL = ["experiment=smoke", "data.limit_train=200", "data.limit_test=50", "threads=1", "device=cpu"]
STAGE_ENV = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "src"),
             "OMP_WAIT_POLICY": "PASSIVE"}


def run_stage(cwd: Path, name: str, *args: str, small: bool = True, env: dict | None = None,
              timeout: int = 300) -> subprocess.CompletedProcess:
    """`python stages/<name>.py [SMALL] args...` in `cwd`, as a user would run it by hand."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *(SMALL if small else []), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**STAGE_ENV, **(env or {})})


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The `error: <stage>: ...` lines of a stage's stderr (its log lines go there too)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (links followed) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory) -> Path:
    """data/prepared of the SMALL settings, made by the real prepare stage (written in place)."""
    def build(folder: Path) -> str:
        proc = run_stage(folder, "prepare", "hydra.run.dir=.")
        assert proc.returncode == 0, proc.stderr
        return str(folder / "data" / "prepared")

    return Path(once(tmp_path_factory, "prepared", build))


@pytest.fixture()
def small_project(small_prepared, tmp_path) -> Path:
    """This test's folder (tmp_path) holding its own copy of `small_prepared` as data/prepared."""
    shutil.copytree(small_prepared, tmp_path / "data" / "prepared")
    return tmp_path


def check_budget(repo: Path, density: float, *, may_empty: bool) -> dict:
    """The smoke MLP's run in `repo` trained to `density`: every sparse model holds the budget within
    one weight per layer (3 Linear layers) and the models learned (10 classes; at 0.02 it keeps ~1,000
    weights). `may_empty`: global re-pruning may empty a layer of the superposed model (reported in
    metrics/superpose.json, not hidden), which then need not learn. Returns evaluate.json."""
    m = json.loads((repo / "metrics/evaluate.json").read_text())
    assert m["target_density"] == density
    for name, d in m["density"].items():
        assert d == pytest.approx(density, abs=3 / (784 * 64 + 64 * 32 + 32 * 10)), name
    assert m["test_acc"]["sparse_baseline"] > 0.3
    if may_empty:
        empty = json.loads((repo / "metrics/superpose.json").read_text())["empty_layers"]
        assert empty or m["test_acc"]["superposed"] > 0.3
    else:
        assert m["test_acc"]["superposed"] > 0.3
    return m


# ----------------------------------------------------------------------------------------------
# data files


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz: bool = False,
              extra: bytes = b"", cut: int = 0) -> Path:
    """Write a uint8 IDX file (optionally gzipped, with bytes appended or cut off the end)."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = (0x08 << 8) | array.ndim
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes() + extra
    if cut:
        blob = blob[:-cut]
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(blob)
    else:
        path.write_bytes(blob)
    return path
