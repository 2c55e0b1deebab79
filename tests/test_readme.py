"""The examples of the README and of the pages of docs/: their `dvc exp run` and hand-run lines, taken
from their ```sh blocks, and their ```python blocks, run exactly as written in a copy of the smoke run
(DVC's run cache skips the stages it has seen). An example that cannot run here says so in its
comment: `(not run by the tests...: why)`. Also: every page of docs/ is linked from the README, every
relative link of the README and the pages reaches an existing file (and heading), and the README's
Layout names every module, script and benchmark, and nothing that is not there."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import README_QUEUE, ROOT, check_budget, copy_repo, queued_experiment, run

SKIPPED = "(not run by the tests"


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples(text: str) -> list[tuple[str, str]]:
    """(command, comment) of every line of a page's ```sh blocks (continued lines joined)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command, _, comment = line.partition("  #")
            if command.strip():
                out.append((" ".join(command.split()), comment.strip()))
    return out


README = [example for page in PAGES for example in examples(page.read_text())]  # README.md, then docs/*.md
PYTHON = [block for page in PAGES for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]
DVC_RUNS = [(c, why) for c, why in README if c.startswith("dvc exp run ")]
HAND_RUNS = [(c, why) for c, why in README if c.startswith(".venv/bin/python stages/")]
RUN = [c for c, why in DVC_RUNS + HAND_RUNS if SKIPPED not in why and c not in README_QUEUE]


def test_the_examples_are_found_and_every_one_left_out_says_why():
    assert "dvc exp run -S experiment=smoke" in RUN and "dst=granet" in README_QUEUE[0]
    assert ".venv/bin/python stages/dense.py experiment=smoke train.epochs=2 device=cpu" in RUN
    assert any("csr.load(" in block for block in PYTHON)
    left_out = [(c, why) for c, why in DVC_RUNS + HAND_RUNS if c not in RUN and c not in README_QUEUE]
    assert all(re.search(r"\(not run by the tests[^:]*: \S", why) for _, why in left_out), left_out


def granet_checks(repo: Path) -> None:
    """GraNet pruned from density 0.5 to exactly 0.02 in the warmup's window; every sparse model holds
    the budget within one weight per layer; the models learned. (Which stages the experiment reran:
    its W&B runs, tests/test_tracking.py.)"""
    check_budget(repo, 0.02, may_empty=True)
    baseline = json.loads((repo / "metrics/sparse_baseline.json").read_text())
    assert baseline["flops_ratio"] > 0.05  # counted at the densities used: from 0.5 down to 0.02
    with open(repo / "plots/sparse_baseline.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["density"]) > 0.02 and float(rows[-1]["density"]) == pytest.approx(0.02, abs=1e-3)


@pytest.mark.e2e
def test_the_readme_queue_example_is_run_as_written_by_the_queued_fixture(queued_repo, tmp_path):
    """tests/conftest.py's `queued_repo` runs these README lines, in order, in a copy of the smoke run:
    GraNet end to end at density 0.02, applied here in a copy to read its outputs."""
    commands = [c for c, _ in README]
    assert all(line in commands for line in README_QUEUE), README_QUEUE
    assert commands.index(README_QUEUE[1]) == commands.index(README_QUEUE[0]) + 1
    shown = run(queued_repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    assert shown.count("\n") >= 3  # header, the workspace / HEAD, and the experiments
    repo = copy_repo(queued_repo, tmp_path / "repo")
    run(repo, "dvc", "exp", "apply", queued_experiment(repo))
    granet_checks(repo)


@pytest.mark.e2e
def test_the_readme_examples_run_as_written(smoke_copy):
    repo = smoke_copy
    (repo / ".venv").symlink_to(Path(sys.prefix))  # the README's .venv: the one running the tests
    order = list(dict.fromkeys(c for c, _ in README if c in RUN))  # a line two pages show runs once
    for command in order:
        proc = run(repo, "bash", "-c", command, check=False, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if command.startswith(".venv/bin/python stages/dense.py"):  # by hand: in a run folder of its own
            (made,) = list((repo / "outputs").glob("*/*-dense/models/dense.safetensors"))
            assert made.stat().st_size > 1000
            assert run(repo, "dvc", "status", "-q", check=False).returncode == 0  # DVC's outputs untouched
    for block in PYTHON:  # after the runs above: the workspace holds a whole DAG's outputs (make repro's)
        proc = run(repo, ".venv/bin/python", "-c", block, check=False, timeout=300)
        assert proc.returncode == 0, f"{block}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


# ----------------------------------------------------------------------------------------------
# links and the Layout


def prose(text: str) -> str:
    """A page without its code: fenced blocks and inline code hold no links."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to -."""
    text = heading.strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    """The targets of a page's links and images, [text](target)."""
    return re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text()))


def test_every_docs_page_is_linked_from_the_readme():
    linked = {target.split("#")[0] for target in links(ROOT / "README.md")}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages and pages <= linked, sorted(pages - linked)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, broken


def layout() -> dict[str, tuple[set[str], str]]:
    """The README's Layout block: per top-level entry (a folder, a file, or files separated by ", "),
    the paths its indented entries name (relative to it) and the whole text of its lines."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^## Layout\n\n```\n(.*?)```", text, flags=re.S | re.M).group(1)
    entries: dict[str, tuple[set[str], str]] = {}
    top = ""
    for line in block.splitlines():
        name = re.split(r"\s{2,}", line.strip())[0]
        if not line.startswith(" "):
            top = name
            entries[top] = (set(), "")
        elif not line.startswith("    "):  # an entry of the folder above
            entries[top][0].update(n.strip() for n in name.split(", "))
        entries[top] = (entries[top][0], entries[top][1] + line + "\n")  # a description going on, too
    return entries


def test_the_readme_layout_names_only_what_exists():
    missing = []
    for top, (names, _) in layout().items():
        missing += [n for n in top.split(", ") if not (ROOT / n).exists()]
        missing += [top + n for n in names if not (ROOT / top / n).exists()]
    assert not missing, missing


def test_the_readme_layout_names_every_module_script_and_benchmark():
    entries = layout()
    tracked = subprocess.run(["git", "ls-files", "src/suptickets", "stages", "scripts", "benchmarks"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    unnamed = []
    for path in [p for p in tracked if p.endswith((".py", ".sh"))]:
        top = max((t for t in entries if t.endswith("/") and path.startswith(t)), key=len, default=None)
        rest = path[len(top):] if top else path
        if top is None or (rest not in entries[top][0]
                           and not re.search(rf"(?<![\w/.]){re.escape(rest)}(?![\w/])", entries[top][1])):
            unnamed.append(path)
    assert not unnamed, unnamed
