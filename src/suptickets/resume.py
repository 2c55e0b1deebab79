"""Resume checkpoints: the state at the end of the last finished epoch, so a killed stage picks up
where it stopped and ends bit-identical to an uninterrupted run.

One checkpoint folder per (stage, its settings, input files[, run folder]) under
`<root>/.cache/suptickets/resume/`; the state is one safetensors file (model tensors, momentum
buffers, and the loop's counters as JSON metadata) replaced atomically after every epoch. A
checkpoint of another config or other inputs has another key and is never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .artifacts import model_tensors, save_tensors, state_from_file
from .errors import BadModelFile
from .sparsity import MASK_BUFFER
from .sparsity.engine import attach_masks

STATE = "state.safetensors"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def key(stage: str, cfg: dict, inputs: list[Path], workdir: str = "") -> str:
    """Hash of the stage, its config (without tracking), its input files and (for DVC's temporary
    experiment copies) the folder it runs in, so concurrent runs never share a checkpoint."""
    body = {"stage": stage, "cfg": {k: v for k, v in cfg.items() if k != "tracking"},
            "inputs": {str(p): file_digest(p) for p in inputs}, "workdir": workdir}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class Checkpoint:
    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @classmethod
    def for_stage(cls, root: Path, stage: str, cfg: dict, inputs: list[Path], workdir: str = "") -> "Checkpoint":
        return cls(Path(root) / ".cache" / "suptickets" / "resume" / f"{stage}-{key(stage, cfg, inputs, workdir)}")

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
        tensors = {f"model.{k}": v for k, v in model_tensors(model.state_dict()).items()}
        names = {p: n for n, p in model.named_parameters()}
        for p, state in optimizer.state.items():
            if "momentum_buffer" in state and p in names:
                tensors[f"momentum.{names[p]}"] = state["momentum_buffer"]
        save_tensors(self.dir / STATE, tensors, metadata={"meta": json.dumps(meta, sort_keys=True)})

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
        """Restore model and momentum from the checkpoint; returns its metadata, or None if none."""
        path = self.dir / STATE
        if not path.is_file():
            return None
        device = next(model.parameters()).device
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state, masks = state_from_file({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if masks:
            attach_masks(model, masks)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("." + MASK_BUFFER) for k in missing):
            raise BadModelFile(f"{path}: resume checkpoint does not fit the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}); delete {path.parent} to start the stage afresh")
        params = dict(model.named_parameters())
        for k, v in tensors.items():
            if k.startswith("momentum."):
                optimizer.state[params[k[len("momentum."):]]]["momentum_buffer"] = v.clone()
        return meta

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
