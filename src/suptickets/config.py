"""Validation of the resolved configuration, before any data is loaded.

`check(cfg, keys, known)` returns one line per problem, each naming the key, the bad value and what
is allowed; `validate(...)` raises `ConfigError` with all of them. `keys` limits the checks to the
settings a caller reads (a stage judges only its own settings); `known` (from `known_keys` over the
config files) refuses any other key, naming the nearest known one. The config is a plain nested
dict (the resolved Hydra config); nothing here reads files or the environment.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable

from .choices import (AMP_MODES, DATASETS, DEVICES, DISTRIBUTIONS, DST_METHODS, FOLDER_DATASETS, KERNELS,
                      MODEL_NAMES, MODEL_OPTIONS, PRUNE_RATE_DECAYS, REPICKED, REPRUNE_MODES, SCOPES, STEMS,
                      SUPERPOSE_METHODS, WANDB_MODES)
from .errors import ConfigError
from .schedules import prune_window, split_of

SECTIONS = ("data", "model", "train", "dst", "tickets", "superpose", "tracking", "launcher", "export")
CHOICES = {  # each option's choices (choices.py, which the implementing modules use too)
    "device": DEVICES,
    "data.name": DATASETS,
    "model.name": MODEL_NAMES,
    "dst.method": DST_METHODS,
    "dst.distribution": DISTRIBUTIONS,
    "dst.prune_rate_decay": PRUNE_RATE_DECAYS,
    "dst.repicked": REPICKED,
    "superpose.method": SUPERPOSE_METHODS,
    "superpose.reprune": REPRUNE_MODES,
    "superpose.scope": SCOPES,
    "tracking.wandb.mode": WANDB_MODES,
    "train.amp": AMP_MODES,
    "export.kernel": KERNELS,
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
    ("train.graphs", lambda v: isinstance(v, bool), "true or false"),
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
    ("export.batch_sizes", lambda v: isinstance(v, list) and len(v) > 0 and all(_integer(b) and b >= 1 for b in v)
     and len(set(v)) == len(v), "a non-empty list of distinct integers >= 1"),
    ("export.repeats", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
]
GRANET_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("dst.init_density", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("dst.init_prune_fraction", lambda v: _number(v) and 0 <= v < 1, "a fraction of train.epochs in [0, 1)"),
    ("dst.final_prune_fraction", lambda v: _number(v) and 0 < v <= 1, "a fraction of train.epochs in (0, 1]"),
]
FOLDER_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.root", lambda v: isinstance(v, str) and v != "", "the folder holding train/ and val/"),
    ("data.workers", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("data.folder.image_size", lambda v: _integer(v) and v >= 8, "an integer >= 8"),
    ("data.folder.resize_size", lambda v: _integer(v) and v >= 8, "an integer >= 8"),
    ("data.folder.check_decode", lambda v: isinstance(v, bool), "true or false"),
]
MODEL_RULES: dict[str, list[tuple[str, Callable[[Any], bool], str]]] = {  # per model.name
    "mlp": [("model.hidden", lambda v: isinstance(v, list) and all(_integer(h) and h >= 1 for h in v),
             "a list of integers >= 1"),
            ("model.batch_norm", lambda v: isinstance(v, bool), "true or false")],
    "resnet32": [("model.width", lambda v: _integer(v) and v >= 1, "an integer >= 1")],
    "resnet50": [("model.stem", lambda v: v in STEMS, f"one of {', '.join(STEMS)}")],
}
MISSING = object()


def reads(key: str, keys: Iterable[str] | None) -> bool:
    """Whether `key` is among `keys` (dotted keys or whole sections; None: every key)."""
    return keys is None or any(key == k or key.startswith(k + ".") for k in keys)


def flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested mapping, sections included ("data", "data.augment",
    "data.augment.flip"); lists and other values are leaves."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out.append(key)
            out.extend(flat_keys(v, key + "."))
    return out


def known_keys(options: Iterable[tuple[str, dict]]) -> set[str]:
    """The union of the keys of every config file: (package, content) pairs, where package is the
    group's key ("data", "model", ...) or "" for the root and global presets; `defaults` lists are
    Hydra's, not keys."""
    known: set[str] = set()
    for package, content in options:
        body = {k: v for k, v in (content or {}).items() if k != "defaults"}
        if package:
            known.update(package.split(".")[:1])
            body = {package: body}
        known.update(flat_keys(body))
    return known


def unknown_keys(cfg: dict, known: set[str], prefix: str = "") -> list[str]:
    """One line per setting of `cfg` that no config file defines (each leaf of a new subtree, as
    typed: `trian.epochs`), naming the nearest known key."""
    problems = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            problems += unknown_keys(v, known, key + ".")
        elif key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}?" if near else "see params/ for the settings that exist"
            problems.append(f"{key}: unknown key; {hint}")
    return problems


def check(cfg: dict, keys: Iterable[str] | None = None, known: set[str] | None = None) -> list[str]:
    """Every problem with the settings among `keys` (dotted keys or whole sections, e.g. the
    params a stage reads; None: all of them), one line each; empty when they can run. A rule that
    relates several keys applies when all of them are among `keys`. With `known` (see known_keys),
    any key of the config outside it is a problem too, whatever `keys` says."""
    if not isinstance(cfg, dict):
        return [f"config: expected a mapping, got {type(cfg).__name__}"]
    keys = None if keys is None else list(keys)
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
    if known is not None:
        problems += unknown_keys(cfg, known)
    for key, allowed in CHOICES.items():
        value = get(cfg, key, MISSING)
        if reads(key, keys) and value not in allowed:
            shown = "missing" if value is MISSING else repr(value)
            problems.append(f"{key}={shown}: not one of {', '.join(allowed)}")
    model = get(cfg, "model.name")
    rules = RULES + (GRANET_RULES if get(cfg, "dst.method") == "granet" else []) \
        + (FOLDER_RULES if get(cfg, "data.name") in FOLDER_DATASETS else []) + MODEL_RULES.get(model, [])
    if model in MODEL_OPTIONS:
        allowed = MODEL_OPTIONS[model]
        problems += [f"model.{k}: not an option of model {model!r} (its options: {', '.join(allowed) or 'none'})"
                     for k in cfg["model"] if k != "name" and k not in allowed and reads(f"model.{k}", keys)]
    for key, ok, allowed in rules:
        if not reads(key, keys):
            continue
        value = get(cfg, key, MISSING)
        if value is MISSING:
            problems.append(f"{key}: missing; expected {allowed}")
        elif not ok(value):
            problems.append(f"{key}={value!r}: expected {allowed}")
    if problems:
        return problems
    for rule_keys, rule in CROSS_RULES:
        if all(reads(k, keys) for k in rule_keys):
            problems += rule(cfg)
    return problems


def _batch_over_processes(cfg: dict) -> list[str]:
    procs, batch = get(cfg, "launcher.nproc_per_node"), get(cfg, "train.batch_size")
    return [f"train.batch_size={batch!r}: the global batch must divide evenly over "
            f"launcher.nproc_per_node={procs!r} processes"] if batch % procs else []


def _graphs_where_they_apply(cfg: dict) -> list[str]:
    """`train.graphs` captures one process's eager fp32 step on CUDA, from tensors held on the device."""
    if not get(cfg, "train.graphs"):
        return []
    clashes = [f"device={get(cfg, 'device')!r}" if get(cfg, "device") == "cpu" else None,
               f"launcher.nproc_per_node={get(cfg, 'launcher.nproc_per_node')!r}"
               if get(cfg, "launcher.nproc_per_node") > 1 else None,
               f"train.amp={get(cfg, 'train.amp')!r}" if get(cfg, "train.amp") != "none" else None,
               "train.compile=true" if get(cfg, "train.compile") else None,
               f"data.name={get(cfg, 'data.name')!r}" if get(cfg, "data.name") in FOLDER_DATASETS else None]
    clashes = [c for c in clashes if c]
    return [f"train.graphs=true: not with {', '.join(clashes)} (graphs capture one process's fp32 eager step on "
            "CUDA, with the data held on the device); set train.graphs=false"] if clashes else []


def _lr_warmup_within_budget(cfg: dict) -> list[str]:
    if get(cfg, "train.lr_warmup_epochs") >= get(cfg, "train.epochs"):
        return [f"train.lr_warmup_epochs={get(cfg, 'train.lr_warmup_epochs')!r}: must be less than "
                f"train.epochs={get(cfg, 'train.epochs')!r}"]
    return []


def _resize_covers_crop(cfg: dict) -> list[str]:
    if get(cfg, "data.name") in FOLDER_DATASETS and \
            get(cfg, "data.folder.resize_size") < get(cfg, "data.folder.image_size"):
        return [f"data.folder.resize_size={get(cfg, 'data.folder.resize_size')!r}: must be >= "
                f"data.folder.image_size={get(cfg, 'data.folder.image_size')!r} "
                "(evaluation centre-crops the resized image)"]
    return []


def _cycle_lr_range(cfg: dict) -> list[str]:
    if get(cfg, "tickets.lr_min") > get(cfg, "tickets.lr_max"):
        return [f"tickets.lr_min={get(cfg, 'tickets.lr_min')!r}: must not exceed "
                f"tickets.lr_max={get(cfg, 'tickets.lr_max')!r}"]
    return []


def _warmup_epochs(cfg: dict) -> int | None:
    try:
        return split_of(cfg)[0]
    except ConfigError:
        return None


def _epoch_split_ok(cfg: dict) -> list[str]:
    try:
        split_of(cfg)
    except ConfigError as err:
        return [str(err)]
    return []


def _granet_schedule(cfg: dict) -> list[str]:
    if get(cfg, "dst.method") != "granet":
        return []
    problems = []
    d, d0 = get(cfg, "dst.density"), get(cfg, "dst.init_density")
    if d0 < d:
        problems.append(f"dst.init_density={d0!r}: must be >= dst.density={d!r} (GraNet prunes down to it)")
    first, last, epochs = get(cfg, "dst.init_prune_fraction"), get(cfg, "dst.final_prune_fraction"), \
        get(cfg, "train.epochs")
    if first >= last:
        problems.append(f"dst.init_prune_fraction={first!r}: must be < dst.final_prune_fraction={last!r}")
    else:
        start, end = prune_window(first, last, epochs)
        if end <= start:
            problems.append(f"dst.final_prune_fraction={last!r}: GraNet's pruning window is empty with "
                            f"train.epochs={epochs!r} (epochs {start} to {end}); widen it or train longer")
    return problems


def _granet_within_warmup(cfg: dict) -> list[str]:
    """The window (fractions of the budget) must end within the warmup, the same epochs in both phases."""
    if get(cfg, "dst.method") != "granet":
        return []
    warmup, epochs = _warmup_epochs(cfg), get(cfg, "train.epochs")
    first, last = get(cfg, "dst.init_prune_fraction"), get(cfg, "dst.final_prune_fraction")
    if warmup is None or first >= last:
        return []
    end = prune_window(first, last, epochs)[1]
    if end > warmup:
        return [f"dst.final_prune_fraction={last!r}: GraNet's pruning ends at epoch {end} of train.epochs={epochs!r}, "
                f"after the warmup's {warmup} epochs (train.epochs minus the cyclic epochs); lower it to at most "
                f"{warmup / epochs:.4g}"]
    return []


SPLIT_KEYS = ("train.epochs", "tickets.cycle_rate", "tickets.cycle_epochs")
CROSS_RULES: list[tuple[tuple[str, ...], Callable[[dict], list[str]]]] = [  # (the keys it relates, rule)
    (("train.batch_size", "launcher.nproc_per_node"), _batch_over_processes),
    (("train.graphs", "device", "launcher.nproc_per_node", "train.amp", "train.compile"), _graphs_where_they_apply),
    (("train.lr_warmup_epochs", "train.epochs"), _lr_warmup_within_budget),
    (("data.folder.resize_size", "data.folder.image_size"), _resize_covers_crop),
    (("tickets.lr_min", "tickets.lr_max"), _cycle_lr_range),
    (SPLIT_KEYS, _epoch_split_ok),
    (("dst.method", "dst.density", "dst.init_density", "dst.init_prune_fraction", "dst.final_prune_fraction",
      "train.epochs"), _granet_schedule),
    (("dst.method", "dst.init_prune_fraction", "dst.final_prune_fraction", *SPLIT_KEYS), _granet_within_warmup),
]


def validate(cfg: dict, keys: Iterable[str] | None = None, known: set[str] | None = None) -> None:
    """Raise ConfigError with every problem check() finds."""
    problems = check(cfg, keys, known)
    if problems:
        raise ConfigError("\n".join(problems))
