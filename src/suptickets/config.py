"""Validation of the resolved configuration, before any data is loaded.

`check(cfg)` returns one line per problem, each naming the key, the bad value and what is allowed;
`validate(cfg)` raises `ConfigError` with all of them. The config is a plain nested dict (the
resolved Hydra config); nothing here reads files or the environment.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from .data import DATASETS, FOLDER_DATASETS
from .errors import ConfigError
from .models import MODEL_NAMES, STEMS
from .schedules import epoch_split

SECTIONS = ("data", "model", "train", "dst", "tickets", "superpose", "tracking", "launcher")
DST_METHODS = ("set", "rigl", "granet")
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "data.name": DATASETS,
    "model.name": MODEL_NAMES,
    "dst.method": DST_METHODS,
    "dst.distribution": ("erk", "uniform"),
    "dst.prune_rate_decay": ("constant", "cosine"),
    "superpose.method": ("caa", "cima"),
    "superpose.reprune": ("each", "final"),
    "superpose.scope": ("global", "layerwise"),
    "tracking.wandb.mode": ("offline", "online", "disabled"),
    "train.amp": ("none", "bf16"),
}


def get(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("threads", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("data.limit_train", lambda v: v is None or (_integer(v) and v >= 20), "null or an integer >= 20"),
    ("data.limit_test", lambda v: v is None or (_integer(v) and v >= 1), "null or an integer >= 1"),
    ("data.augment.padding", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("data.augment.flip", lambda v: isinstance(v, bool), "true or false"),
    ("train.epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("train.batch_size", lambda v: _integer(v) and v >= 2, "an integer >= 2"),
    ("train.eval_batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("train.lr", lambda v: _number(v) and v > 0, "a number > 0"),
    ("train.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("train.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("train.channels_last", lambda v: isinstance(v, bool), "true or false"),
    ("train.compile", lambda v: isinstance(v, bool), "true or false"),
    ("train.gamma", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("train.label_smoothing", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("train.lr_warmup_epochs", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("train.weight_decay_bn", lambda v: isinstance(v, bool), "true or false"),
    ("train.milestones", lambda v: isinstance(v, list) and all(_number(m) and 0 < m < 1 for m in v),
     "a list of fractions in (0, 1)"),
    ("dst.density", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("dst.keep_first_dense", lambda v: isinstance(v, bool), "true or false"),
    ("dst.update_frequency", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("dst.prune_rate", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("dst.stop_fraction", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("tickets.cycle_rate", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("tickets.cycle_epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("tickets.lr_min", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("tickets.lr_max", lambda v: _number(v) and v > 0, "a number > 0"),
    ("tickets.re_explore_rate", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("superpose.cima_factor", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("superpose.bn_update", lambda v: isinstance(v, bool), "true or false"),
    ("launcher.nproc_per_node", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("launcher.check_sync", lambda v: isinstance(v, bool), "true or false"),
]
GRANET_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("dst.init_density", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("dst.init_prune_epoch", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("dst.final_prune_epoch", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
]
FOLDER_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.root", lambda v: isinstance(v, str) and v != "", "the folder holding train/ and val/"),
    ("data.workers", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("data.folder.image_size", lambda v: _integer(v) and v >= 8, "an integer >= 8"),
    ("data.folder.resize_size", lambda v: _integer(v) and v >= 8, "an integer >= 8"),
    ("data.folder.check_decode", lambda v: isinstance(v, bool), "true or false"),
]
MISSING = object()


def check(cfg: dict) -> list[str]:
    """Every problem with the config, one line each (empty when it can run)."""
    if not isinstance(cfg, dict):
        return [f"config: expected a mapping, got {type(cfg).__name__}"]
    problems = []
    for section in SECTIONS:
        value = cfg.get(section, MISSING)
        if value is MISSING:
            problems.append(f"{section}: missing section")
        elif not isinstance(value, dict):
            problems.append(
                f"{section}={value!r}: a section turned into a string; a group override such as "
                f"'{section}={value}' only works in `dvc exp run -S` or when running a stage by hand "
                f"without -cn params; set its keys instead ({section}.<key>=...)")
    if problems:
        return problems
    for key, allowed in CHOICES.items():
        value = get(cfg, key, MISSING)
        if value not in allowed:
            shown = "missing" if value is MISSING else repr(value)
            problems.append(f"{key}={shown}: not one of {', '.join(allowed)}")
    rules = RULES + (GRANET_RULES if get(cfg, "dst.method") == "granet" else []) \
        + (FOLDER_RULES if get(cfg, "data.name") in FOLDER_DATASETS else [])
    if get(cfg, "model.name") == "resnet50" and get(cfg, "model.stem", "cifar") not in STEMS:
        problems.append(f"model.stem={get(cfg, 'model.stem')!r}: not one of {', '.join(STEMS)}")
    for key, ok, allowed in rules:
        value = get(cfg, key, MISSING)
        if value is MISSING:
            problems.append(f"{key}: missing; expected {allowed}")
        elif not ok(value):
            problems.append(f"{key}={value!r}: expected {allowed}")
    if problems:
        return problems
    procs, batch = get(cfg, "launcher.nproc_per_node"), get(cfg, "train.batch_size")
    if batch % procs:
        problems.append(f"train.batch_size={batch!r}: the global batch must divide evenly over "
                        f"launcher.nproc_per_node={procs!r} processes")
    if get(cfg, "train.lr_warmup_epochs") >= get(cfg, "train.epochs"):
        problems.append(f"train.lr_warmup_epochs={get(cfg, 'train.lr_warmup_epochs')!r}: must be less than "
                        f"train.epochs={get(cfg, 'train.epochs')!r}")
    if get(cfg, "data.name") in FOLDER_DATASETS and \
            get(cfg, "data.folder.resize_size") < get(cfg, "data.folder.image_size"):
        problems.append(f"data.folder.resize_size={get(cfg, 'data.folder.resize_size')!r}: must be >= "
                        f"data.folder.image_size={get(cfg, 'data.folder.image_size')!r} "
                        "(evaluation centre-crops the resized image)")
    if get(cfg, "tickets.lr_min") > get(cfg, "tickets.lr_max"):
        problems.append(f"tickets.lr_min={get(cfg, 'tickets.lr_min')!r}: must not exceed "
                        f"tickets.lr_max={get(cfg, 'tickets.lr_max')!r}")
    try:
        warmup, _, _ = epoch_split(get(cfg, "train.epochs"), get(cfg, "tickets.cycle_rate"),
                                   get(cfg, "tickets.cycle_epochs"))
    except ValueError as err:
        problems.append(str(err))
        warmup = None
    if get(cfg, "dst.method") == "granet":
        d, d0 = get(cfg, "dst.density"), get(cfg, "dst.init_density")
        if d0 < d:
            problems.append(f"dst.init_density={d0!r}: must be >= dst.density={d!r} (GraNet prunes down to it)")
        first, last = get(cfg, "dst.init_prune_epoch"), get(cfg, "dst.final_prune_epoch")
        if first >= last:
            problems.append(f"dst.init_prune_epoch={first!r}: must be < dst.final_prune_epoch={last!r}")
        if warmup is not None and last > warmup:
            problems.append(f"dst.final_prune_epoch={last!r}: must be <= the warmup's {warmup} epochs "
                            f"(train.epochs minus the cyclic epochs)")
    return problems


def validate(cfg: dict) -> None:
    problems = check(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
