"""Paired gains and factor effects (`suptickets.gains`), and the factorial grid that
benchmarks/gain.py plans from its command line (`--list` runs nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from suptickets.gains import effects, row

ROOT = Path(__file__).resolve().parents[1]


def gain_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/gain.py"), *args], capture_output=True,
                          text=True, timeout=120)


def test_row_has_both_gains_and_t0():
    r = row({"test_acc": {"sparse_baseline": 0.80, "warmup": 0.7, "ticket_01": 0.79, "ticket_02": 0.81,
                          "superposed": 0.82, "ticket_ensemble": 0.83}})
    assert r["warmup"] == 0.7
    assert r["gain"] == pytest.approx(0.02) and r["gain_vs_best_ticket"] == pytest.approx(0.01)


def test_effects_pair_by_seed_and_average_over_the_other_factors():
    # gain = 1.0 at level "b" of factor A (else 0) plus a seed offset that pairing must cancel; factor
    # B moves nothing except in one cell, where it adds 0.4 for every seed (its effect: 0.2 on average)
    levels = [["a", "b"], ["x", "y"]]
    gain = {}
    for A in levels[0]:
        for B in levels[1]:
            gain[(A, B)] = {s: (1.0 if A == "b" else 0.0) + 0.3 * s + (0.4 if (A, B) == ("b", "y") else 0.0)
                            for s in range(4)}
    found = {e["factor"]: e for e in effects(gain, levels, ["A", "B"])}
    assert found["A"]["level"] == "b" and found["A"]["versus"] == "a" and found["A"]["n"] == 4
    assert found["A"]["effect"][0] == pytest.approx(1.2) and found["A"]["effect"][1] == pytest.approx(0)
    assert found["B"]["effect"][0] == pytest.approx(0.2) and found["B"]["effect"][1] == pytest.approx(0)


def test_effects_skip_single_level_factors_and_seeds_missing_a_cell():
    levels = [["0.05"], ["keep", "zero"]]
    gain = {("0.05", "keep"): {0: 0.1, 1: 0.2, 2: 0.0}, ("0.05", "zero"): {0: -0.1, 1: 0.0}}
    [e] = effects(gain, levels, ["dst.density", "dst.repicked"])
    assert e["factor"] == "dst.repicked" and e["n"] == 2
    assert e["effect"][0] == pytest.approx(-0.2)


def test_gain_lists_the_factorial_grid_with_joined_keys():
    proc = gain_py("--factor", "dst.prune_rate_decay=constant,cosine",
                   "--factor", "train.epochs+tickets.cycle_rate=30+0.2,100+0.1", "--densities", "0.05",
                   "--seeds", "2", "--prefix", "t", "-S", "threads=1", "--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "4 cells x 2 seeds = 8 experiments"
    assert lines[0] == ("t-0.05-constant-30_0.2-s0 -S dst=rigl -S dst.density=0.05 -S dst.prune_rate_decay=constant "
                        "-S train.epochs=30 -S tickets.cycle_rate=0.2 -S seed=0 -S threads=1")
    assert any(line.startswith("t-0.05-cosine-100_0.1-s1 ") and "-S train.epochs=100 -S tickets.cycle_rate=0.1" in line
               for line in lines)


def test_gain_grid_keeps_its_defaults_unless_given():
    lines = gain_py("--grid", "--list").stdout.strip().splitlines()
    assert lines[-1] == "9 cells x 3 seeds = 27 experiments" and lines[0].startswith("grid-0.2-0.01-s0 ")
    lines = gain_py("--grid", "--densities=0.1", "--seeds", "2", "--list").stdout.strip().splitlines()
    assert lines[-1] == "3 cells x 2 seeds = 6 experiments"


@pytest.mark.parametrize("factor", ["dst.repicked", "dst.repicked=", "a+b=1+2,3", "a=1,1", "+=1"])
def test_a_bad_factor_is_one_line_naming_it(factor):
    proc = gain_py("--factor", factor, "--list")
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: --factor {factor!r}:")
