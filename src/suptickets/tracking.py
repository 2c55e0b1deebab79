"""Weights & Biases: one run per stage, grouped by experiment, offline unless told otherwise.

Only rank 0 logs. The mode comes from WANDB_MODE when the caller passes it (an explicit `mode=`
argument would beat the variable), else from the config. No network is needed in offline mode.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence


SECRET_WORDS = ("key", "token", "secret", "password")
NOT_SETTINGS = ("tracking", "chain", "lanes")  # where results go, which stages run and beside what: not what they compute


def config_hash(cfg: dict) -> str:
    """A short, stable hash of the config without its tracking section (names a DVC-less group)."""
    body = {k: v for k, v in cfg.items() if k not in NOT_SETTINGS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]


def public_config(cfg: Any) -> Any:
    """The config with anything that looks like a secret dropped."""
    if isinstance(cfg, dict):
        return {k: public_config(v) for k, v in cfg.items() if not any(w in k.lower() for w in SECRET_WORDS)}
    return cfg


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of a nested config (lists are leaves)."""
    if isinstance(cfg, dict) and cfg:
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg}


def overrides(cfg: dict, base: dict, given: Sequence[str] = ()) -> list[str]:
    """What a sweep changed: the command line's own overrides `given` (Hydra's, e.g. one job of a
    multirun; hydra.*, experiment= and the chain left out), then `key=value` for every other setting
    where `cfg` differs from `base` (the preset it started from; `dvc exp run -S` arrives this way),
    tracking and the chain excluded, in the config's order."""
    skip = ("hydra", "experiment=", *NOT_SETTINGS)
    literal = [o for o in given if not o.lstrip("+~").startswith(skip)]
    named = {o.lstrip("+~").split("=")[0] for o in literal}
    new, old = flatten(public_config({k: v for k, v in cfg.items() if k not in NOT_SETTINGS})), \
        flatten({k: v for k, v in base.items() if k not in NOT_SETTINGS})
    return literal + [f"{k}={json.dumps(v, separators=(',', ':')) if isinstance(v, (list, dict)) else v}"
                      for k, v in new.items() if (k not in old or old[k] != v) and k not in named]


def run_name(stage: str, label: str, changed: list[str], limit: int = 128) -> str:
    """`<label> <overrides...> · <stage>`, shortened with '…' to at most `limit` characters."""
    head = " ".join([label, *changed])
    tail = f" · {stage}"
    if len(head) + len(tail) > limit:
        head = head[:limit - len(tail) - 1] + "…"
    return head + tail


class Run:
    """A thin handle over a wandb run (or nothing when disabled / not rank 0)."""

    def __init__(self, run=None):
        self._run = run

    @classmethod
    def start(cls, *, stage: str, cfg: dict, group: str, directory: str, mode: str | None,
              rank: int = 0, changed: list[str] | None = None, source: dict | None = None) -> "Run":
        """One W&B run: grouped by experiment, the stage as job type, named by the preset and the
        overrides `changed` (also in the run config as `overrides`, to filter on); `source` (the git
        commit and DVC experiment it ran from) goes into the config as `source`."""
        if rank != 0 or mode == "disabled":
            return cls(None)
        import wandb

        w = cfg["tracking"]["wandb"]
        changed = changed or []
        run = wandb.init(project=w["project"], entity=w.get("entity"), group=group, job_type=stage,
                         name=run_name(stage, str(cfg.get("name", "run")), changed),
                         config={**public_config(cfg), "overrides": changed, "source": source or {}}, dir=directory, mode=mode,
                         reinit="create_new",
                         settings=wandb.Settings(silent=True, console="off", save_code=False,
                                                 x_disable_stats=True, disable_git=True))
        return cls(run)

    @property
    def wandb_run(self):
        """The wandb run itself, for what this handle does not wrap; None when not tracking."""
        return self._run

    @property
    def dir(self) -> str | None:
        return None if self._run is None else self._run.dir

    def log(self, row: dict) -> None:
        if self._run is not None:
            self._run.log(row)

    def summary(self, values: dict) -> None:
        if self._run is not None:
            for k, v in values.items():
                self._run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None


def remote_uri(location: str | None) -> str | None:
    """A DVC remote object's location as a W&B reference: a URL (s3://, gs://, ssh://, ...) as it is;
    a folder remote's file as file:// once it is there (W&B refuses a file:// reference to a missing
    file, and a run's outputs reach the remote only at `make push`, after the run); else None."""
    if not location:
        return None
    if "://" in location:
        return location
    path = Path(location).absolute()
    return "file://" + str(path) if path.is_file() else None
