"""Files on disk: atomic writes, JSON and YAML, safetensors models with their masks.

Every artifact is written to a temporary file in the target folder and renamed into place, so a
killed stage never leaves a half-written output. Models are read only from safetensors.
torch loads with the first tensor read or written: a stage that only writes JSON or text (and every
stage up to its config check) starts without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from .errors import BadInputFile, MissingInput
from .sparsity import MASK_BUFFER

if TYPE_CHECKING:
    import torch

MASK_PREFIX = "mask."


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BadInputFile(f"{path}: invalid JSON ({err})") from None


def parse_yaml(text: str):
    """The text of a YAML file of the project's own (params/, dvc.yaml, dvc.lock) as plain data, parsed
    by libyaml where PyYAML has it (the same data as PyYAML's own parser, ~10x faster on these files)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors to a safetensors file atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such file")
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as err:
        raise BadInputFile(f"{path}: not a readable safetensors file ({err})") from None


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes (hex), as DVC records it, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state_dict in the file layout: bare weights, masks as `mask.<param>` (uint8).

    Mask buffers `<module>.weight_mask` become `mask.<module>.weight`; weights outside a mask are
    stored as exact zeros.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(MASK_BUFFER):
            param = key[: -len(MASK_BUFFER)] + "weight"
            out[MASK_PREFIX + param] = value.to(torch.uint8)
        else:
            out[key] = value
    for key in [k for k in out if k.startswith(MASK_PREFIX)]:
        param = key[len(MASK_PREFIX):]
        out[param] = out[param] * out[key].to(out[param].dtype)
    return out


def model_files(root: str | os.PathLike = ".") -> dict[str, Path]:
    """The model files of a DAG that exist under `root`: name → path (relative when `root` is), in
    display order: dense, sparse_baseline, warmup, ticket_01 … (models/tickets/), superposed."""
    models = Path(root) / "models"
    paths = {name: models / f"{name}.safetensors" for name in ("dense", "sparse_baseline", "warmup")}
    paths.update({p.stem: p for p in sorted((models / "tickets").glob("ticket_*.safetensors"))})
    paths["superposed"] = models / "superposed.safetensors"
    return {name: p for name, p in paths.items() if p.is_file()}


def state_from_file(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a model file's tensors into (bare state_dict, masks keyed by parameter name)."""
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    masks = {k[len(MASK_PREFIX):]: v.bool() for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    return state, masks
