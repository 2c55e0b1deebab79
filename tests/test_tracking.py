"""Tests of the W&B tracking (suptickets.tracking, as the stages use it): run names from the
overrides, one offline run per stage of a DVC run, and a queued experiment's runs (group, names, the
commit they ran from, model references). `read_wandb_records` reads a run's transaction log back
(test_report, test_landscape, test_compare, test_sweep and test_lanes use it too)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from conftest import ROOT, run
from suptickets import dvcfiles
from suptickets.tracking import overrides, run_name

STAGES = list(dvcfiles.stages(ROOT))


def read_wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log, decoded with wandb's own protobuf classes.

    The file is a 7-byte header (":W&B", magic 0xBEE1, version) and LevelDB-log framing: 32 KiB
    blocks of chunks, each [crc32 u32][length u16][type u8][payload], type 1 = whole record,
    2/3/4 = first/middle/last piece; a block tail under 7 bytes is padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), "not a W&B transaction log"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        assert zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF == crc, "corrupt chunk"
        pieces = payload if kind in (1, 2) else pieces + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def test_run_names_carry_the_overrides_against_the_preset():
    base = {"name": "smoke", "seed": 0, "train": {"lr": 0.1, "milestones": [0.5, 0.75]},
            "tracking": {"wandb": {"mode": "offline"}}}
    cfg = {"name": "smoke", "seed": 3, "train": {"lr": 0.1, "milestones": [0.3]}, "dst": {"density": 0.02},
           "tracking": {"wandb": {"mode": "online", "api_key": "x"}}}
    changed = overrides(cfg, base)
    assert changed == ["seed=3", "train.milestones=[0.3]", "dst.density=0.02"]
    assert overrides(base, base) == []
    given = ["seed=3", "+chain=[warmup]", "hydra.sweep.dir=x", "experiment=smoke", "tickets.lr_max=0.05"]
    assert overrides(cfg, base, given) == ["seed=3", "tickets.lr_max=0.05", "train.milestones=[0.3]",
                                           "dst.density=0.02"]
    assert run_name("tickets", "smoke", changed) == "smoke seed=3 train.milestones=[0.3] dst.density=0.02 · tickets"
    long = run_name("evaluate", "smoke", [f"k{i}=v" for i in range(100)])
    assert len(long) == 128 and long.endswith("… · evaluate")


@pytest.mark.e2e
def test_wandb_offline_runs_exist_for_each_stage(smoke_repo):
    runs = list((smoke_repo / "wandb").glob("offline-run-*"))
    assert len(runs) == len(STAGES)
    for r in runs:
        assert next(r.glob("*.wandb")).stat().st_size > 0


@pytest.mark.e2e
def test_a_queued_experiments_wandb_runs_are_grouped_named_and_point_at_its_models(queued_repo):
    """The queued experiment (GraNet at 0.02: every stage but prepare and dense, which it shares with
    the smoke run) ran in DVC's temporary copy; its W&B runs land in the real repository, one group,
    named by what it changed, with the commit they ran from; its model
    references point into the repository's DVC cache, and the metadata names the remote's copy."""
    repo = queued_repo
    runs = list((repo / "wandb").glob("offline-run-*"))  # under the real repo root, one folder per stage run
    ran = [s for s in STAGES if s not in ("prepare", "dense")]
    assert len(runs) == len(ran) and len({r.name for r in runs}) == len(runs)
    named = {}  # W&B run name -> (group, job type), read back from each run's transaction log
    head = run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    for r in runs:
        record = next(rec.run for rec in read_wandb_records(next(r.glob("*.wandb"))) if rec.HasField("run"))
        named[record.display_name] = (record.run_group, record.job_type)
        config = {item.key: json.loads(item.value_json) for item in record.config.update}
        source = config["source"]["value"] if "value" in config["source"] else config["source"]
        assert source == {"git_commit": head, "dvc_exp_baseline_rev": head, "dvc_exp_name": record.run_group}
    by_stage = {name.rsplit(" · ", 1)[1]: name for name in named}  # (the names are cut to 128 characters)
    assert sorted(by_stage) == sorted(ran), named
    assert all(name.startswith("smoke dst.method=granet dst.density=0.02 ") for name in named), named
    assert len({group for group, _ in named.values()}) == 1  # one group per experiment
    assert named[by_stage["tickets"]][1] == "tickets"
    references = [entry.ref for r in runs for rec in read_wandb_records(next(r.glob("*.wandb")))
                  if rec.HasField("artifact") and rec.artifact.type == "model" for entry in rec.artifact.manifest.contents]
    assert len(references) == 8  # the report's: dense (the smoke run's), sparse_baseline, warmup, 4 tickets, superposed
    remote = run(repo, "dvc", "remote", "list").stdout.split()[1]  # the default remote's folder
    for r in runs:
        for rec in read_wandb_records(next(r.glob("*.wandb"))):
            if rec.HasField("artifact") and rec.artifact.type == "model":
                meta = json.loads(rec.artifact.metadata)  # where a colleague gets the file after make push
                assert meta["dvc_remote_object"] == f"{remote}/files/md5/{meta['md5'][:2]}/{meta['md5'][2:]}", meta
    cache = (repo / ".dvc/cache/files/md5").resolve()
    for ref in references:  # the temporary experiment folder is gone; the DVC cache's copies are not
        path = Path(ref.removeprefix("file://"))
        assert path.is_file() and path.is_relative_to(cache), ref
