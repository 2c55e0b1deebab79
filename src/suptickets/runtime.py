"""What every training stage sets up the same way: determinism, data on the device, the model, the
optimizer, and model files (safetensors only, masks included)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .artifacts import MASK_PREFIX, load_tensors, model_tensors, read_json, save_tensors, state_from_file
from .batches import Batches
from .errors import BadModelFile, ConfigError, TrainingDiverged
from .imagefolder import MANIFEST, load_folder_batches
from .models import build_model
from .prepared import check_prepared_for, load_prepared
from .sparsity import MASK_BUFFER
from .sparsity.engine import attach_masks, maskable
from .train import resolve_device, skip_compiler_import


def distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def setup(threads: int, device_name: str) -> torch.device:
    """Fixed thread count and deterministic kernels, so a CPU run is bit-identical for a seed.
    Under torchrun: joins the process group (NCCL on GPUs, gloo on CPU), one GPU per local rank."""
    # cuBLAS reads this when its first handle is made: deterministic GEMMs (set before any CUDA work)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = resolve_device(device_name)
    rank, world = distributed()
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(threads)
    deterministic_kernels(warn_only=device.type == "cuda")
    return device


def deterministic_kernels(warn_only: bool) -> None:
    """What `torch.use_deterministic_algorithms(True)` does for eager kernels, without its import of
    the compiler's config (torch._inductor, about 1.3 s of every stage's start-up on CPU): the stages
    run eagerly; `train.compile` sets the compiler's flag too (`Speed.wrap`)."""
    torch._C._set_deterministic_algorithms(True, warn_only=warn_only)


def load_batches(prepared: str | os.PathLike, cfg: dict, device: torch.device) -> tuple[dict[str, Batches], dict]:
    """train (shuffled, augmented, last partial batch dropped), val and test batches on `device`,
    from prepared data made for the data settings of `cfg` (else DataError):
    tensors held on the device (GPU-resident on CUDA), or, for a folder data set's manifest, a
    DataLoader with worker processes (`imagefolder.FolderBatches`)."""
    if (Path(prepared) / MANIFEST).is_file():
        summary = read_json(Path(prepared) / "summary.json")
        check_prepared_for(summary, cfg, prepared)
        return load_folder_batches(Path(prepared), summary, cfg, device, *distributed()), summary
    splits, summary = load_prepared(prepared)
    check_prepared_for(summary, cfg, prepared)
    mean, std = summary["mean"], summary["std"]
    train_cfg, aug = cfg["train"], cfg["data"]["augment"]
    out = {}
    for name, (x, y) in splits.items():
        is_train = name == "train"
        rank, world = distributed() if is_train else (0, 1)  # evaluation sees the whole split on every rank
        out[name] = Batches(x.to(device), y.to(device), mean, std,
                            batch_size=train_cfg["batch_size"] if is_train else train_cfg["eval_batch_size"],
                            shuffle=is_train, drop_last=is_train, seed=cfg["seed"],
                            padding=aug["padding"] if is_train else 0, flip=aug["flip"] and is_train,
                            rank=rank, world_size=world)
    return out, summary


def new_model(cfg: dict, summary: dict, device: torch.device) -> nn.Module:
    """The configured architecture, initialised from `seed` (the same on every rank)."""
    options = {k: v for k, v in cfg["model"].items() if k != "name"}
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"]["name"], tuple(summary["shape"]), summary["num_classes"], **options)
    model = model.to(device)
    if cfg["train"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def optimizer_for(model: nn.Module, train_cfg: dict) -> torch.optim.SGD:
    """SGD with momentum; `train.weight_decay_bn: false` exempts BatchNorm weights and biases from
    weight decay (the ImageNet recipe), in a second parameter group. `train.graphs`: fused SGD, on a
    CUDA model only (ConfigError otherwise, before the first step)."""
    graphs = train_cfg.get("graphs", False)
    device = next(model.parameters()).device
    if graphs and device.type != "cuda":
        raise ConfigError(f"train.graphs=true: CUDA graphs need a CUDA device, and this run trains on {device.type} "
                          "(device=auto without a GPU, or device=cpu); set train.graphs=false")
    if not train_cfg.get("compile", False):
        skip_compiler_import()
    params = list(model.parameters())
    if not train_cfg.get("weight_decay_bn", True):
        norm = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in m.parameters(recurse=False)}
        params = [{"params": [p for p in params if id(p) not in norm]},
                  {"params": [p for p in params if id(p) in norm], "weight_decay": 0.0}]
    return torch.optim.SGD(params, lr=train_cfg["lr"], momentum=train_cfg["momentum"],
                           weight_decay=train_cfg["weight_decay"], **({"fused": True} if graphs else {}))


def save_model(path: str | os.PathLike, model: nn.Module) -> None:
    """Bare weights plus `mask.<param>`; refuses to write non-finite weights."""
    tensors = model_tensors(model.state_dict())
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingDiverged(f"{path}: refusing to write a model with non-finite values in {', '.join(bad[:3])}")
    save_tensors(path, tensors)


def read_model_file(path: str | os.PathLike, model: nn.Module) -> tuple[dict, dict]:
    """(state, masks) of a model file, checked strictly against `model`'s architecture: the bare
    weights must be exactly the architecture's keys with its shapes, and each `mask.<param>` must name
    one of its Conv2d / Linear weights with that weight's shape. A missing or extra key is named."""
    device = next(model.parameters()).device
    state, masks = state_from_file(load_tensors(path, device))
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("." + MASK_BUFFER)}
    weights = {name for name, _ in maskable(model)}
    problems = [f"missing {k}" for k in expected if k not in state] + \
        [f"unexpected {k}" for k in state if k not in expected] + \
        [f"{k}: shape {tuple(v.shape)}, expected {tuple(expected[k])}" for k, v in state.items()
         if k in expected and v.shape != expected[k]] + \
        [f"unexpected {MASK_PREFIX}{k} (not a Conv2d/Linear weight of {type(model).__name__})"
         for k in masks if k not in weights] + \
        [f"{MASK_PREFIX}{k}: shape {tuple(v.shape)}, expected {tuple(expected[k])}" for k, v in masks.items()
         if k in weights and v.shape != expected[k]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BadModelFile(f"{path}: does not fit model {type(model).__name__}: {'; '.join(problems[:3])}{more}")
    return state, masks


def load_model(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a model file (weights + masks) into a freshly built model of the same architecture."""
    state, masks = read_model_file(path, model)  # checked: strict loading cannot fail on keys or shapes
    model.load_state_dict(state, strict=True)
    if masks:
        attach_masks(model, masks)
    return model


def save_optimizer(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Momentum buffers by parameter name, and the global step, for exact continuation."""
    tensors = {f"momentum.{name}": optimizer.state[p]["momentum_buffer"]
               for name, p in model.named_parameters() if "momentum_buffer" in optimizer.state.get(p, {})}
    save_tensors(path, tensors, metadata={"step": str(step)})


def load_optimizer(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    from safetensors import safe_open

    device = next(model.parameters()).device
    tensors = load_tensors(path, device)
    for name, p in model.named_parameters():
        buf = tensors.get(f"momentum.{name}")
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf.clone()
    with safe_open(str(Path(path)), framework="pt") as f:
        step = (f.metadata() or {}).get("step", "")
    if not step.isdigit():
        raise BadModelFile(f"{path}: no optimizer step in its metadata (got {step!r}); expected the file "
                           "warmup writes")
    return int(step)
