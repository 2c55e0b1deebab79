"""The progress line: which stage of how many, and what is left by the last run's times."""

from __future__ import annotations

from conftest import ROOT
from suptickets.dvcfiles import deps_changed, expected_stages, params_changed, stages
from suptickets.progress import duration, progress_line

STAGES = stages(ROOT)
ORDER = list(STAGES)


def test_a_rerun_stage_brings_everything_that_reads_it():
    def run_all_from(stage):
        return expected_stages(STAGES, stage, missing=lambda p: False, changed={stage}, recorded=set(ORDER))

    assert run_all_from("warmup") == ["warmup", "tickets", "superpose", "export", "evaluate", "report", "landscape"]
    assert run_all_from("dense") == ["dense", "evaluate", "report"]
    assert run_all_from("prepare") == ORDER
    assert run_all_from("report") == ["report"]


def test_expected_stages_after_a_superpose_setting_changed():
    lock = {"stages": {s: {"params": {"params.yaml": {"superpose": {"method": "caa"}}} if s == "superpose" else {}}
                       for s in ORDER}}
    changed = params_changed(lock, {"superpose": {"method": "cima"}})
    assert changed == {"superpose"}
    # at dense (a hand-picked start): only what reads dense, and superpose whose params changed
    assert expected_stages(STAGES, "dense", missing=lambda p: False, changed=changed,
                           recorded=set(ORDER)) == ["dense", "superpose", "export", "evaluate", "report", "landscape"]
    assert expected_stages(STAGES, "superpose", missing=lambda p: False, changed=changed,
                           recorded=set(ORDER)) == ["superpose", "export", "evaluate", "report", "landscape"]


def test_expected_stages_of_a_fresh_clone_are_all_the_rest():
    assert expected_stages(STAGES, "prepare", missing=lambda p: True, changed=set(), recorded=set()) == ORDER
    assert expected_stages(STAGES, "dense", missing=lambda p: p.startswith("models/warmup"), changed=set(),
                           recorded=set(ORDER)) == ["dense", "warmup", "tickets", "superpose", "export", "evaluate",
                                                    "report", "landscape"]


def test_a_changed_code_file_counts_folders_are_not_judged():
    lock = {"stages": {"dense": {"deps": [{"path": "stages/dense.py", "md5": "a"},
                                          {"path": "data/prepared", "md5": "d.dir"}]},
                       "tickets": {"deps": [{"path": "stages/tickets.py", "md5": "b"}]}}}
    digest = {"stages/dense.py": "a", "stages/tickets.py": "B"}.get  # data/prepared: a folder -> None
    assert deps_changed(lock, digest) == {"tickets"}


def test_the_line_names_the_place_and_the_time_left():
    times = {"warmup": 100.0, "tickets": 40.0, "superpose": 10.0, "evaluate": 5.0, "report": 5.0}
    expected = ["warmup", "tickets", "superpose", "evaluate", "report"]
    assert progress_line(ORDER, "warmup", expected, times) == \
        "[4/10] warmup — about 2m40s left (last run's times)"
    assert progress_line(ORDER, "warmup", expected, {"warmup": 30}) == \
        "[4/10] warmup — about 30s left (last run's times; none yet for tickets, superpose, evaluate, report)"
    assert progress_line(ORDER, "prepare", ORDER, {}) == \
        "[1/10] prepare — no earlier times to estimate what is left (10 stage(s) expected)"


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (0, 44.6, 60, 160, 3599, 3600, 3900)] == \
        ["0s", "45s", "1m00s", "2m40s", "59m59s", "1h00m", "1h05m"]
