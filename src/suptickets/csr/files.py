"""The sparse model file: written from a masked model, read back and checked.

A masked model (bare weights plus masks, weights outside a mask exact zeros) becomes a safetensors
file in which each masked Linear / Conv2d weight is held in compressed sparse row form and every
other tensor stays dense under the bare architecture's key:

    <layer>.weight.values        the kept weights, row by row (float32)
    <layer>.weight.crow_indices  int32: rows + 1 offsets into values (int64 only if a count needs it)
    <layer>.weight.col_indices   int32: the column of each value
    <layer>.weight.shape         int64: the dense shape, [out, in] or [out, in, kh, kw]

A convolution weight [out, in, kh, kw] is the CSR of its [out, in·kh·kw] matrix. The positions are
the mask's (a kept weight that happens to be zero stays), so a layer's count is its mask's.
BatchNorm is folded first (`bn_fold`). One metadata entry names the format and the architecture
(the arguments of `models.build_model`), so reading a file needs nothing else.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from ..artifacts import load_tensors, save_tensors
from ..errors import SparseFileError
from ..models import build_model
from ..sparsity import MASK_BUFFER
from ..sparsity.engine import masks_of
from .bn_fold import fold_batchnorm

FORMAT = "suptickets.sparse/1"
METADATA_KEY = "suptickets.sparse"
PARTS = ("values", "crow_indices", "col_indices", "shape")


# ----------------------------------------------------------------------------------------------
# the architecture


def architecture(model_cfg: Mapping, summary: Mapping) -> dict:
    """The arguments of `models.build_model` for the `model` config section and a data summary."""
    return {"name": model_cfg["name"], "options": {k: v for k, v in model_cfg.items() if k != "name"},
            "input_shape": [int(s) for s in summary["shape"]], "num_classes": int(summary["num_classes"])}


def build(arch: Mapping, device: str | torch.device = "cpu") -> nn.Module:
    """The bare architecture `arch` describes, freshly initialised (on the meta device: shapes only)."""
    with torch.device(device):
        return build_model(arch["name"], tuple(arch["input_shape"]), arch["num_classes"], **arch["options"])


def _csr_capable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _csr_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Weight key → module of every layer whose weight may be held in CSR."""
    return {(f"{n}.weight" if n else "weight"): m for n, m in model.named_modules() if _csr_capable(m)}


# ----------------------------------------------------------------------------------------------
# writing


def csr_parts(weight: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The file parts of `weight` as CSR of its [rows, rest] matrix at the positions of `mask`."""
    rows = weight.shape[0]
    keep = mask.reshape(rows, -1).bool().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pattern = keep.to_sparse_csr()  # torch's own conversion: offsets and columns of the mask
    crow, col = pattern.crow_indices(), pattern.col_indices()
    index = torch.int32 if max(int(crow[-1]), keep.shape[1]) < 2**31 else torch.int64
    return {"values": weight.detach().cpu().reshape(rows, -1)[keep], "crow_indices": crow.to(index),
            "col_indices": col.to(index), "shape": torch.tensor(list(weight.shape), dtype=torch.int64)}


def sparse_state(model: nn.Module) -> dict[str, Tensor]:
    """The tensors of the sparse file of a masked model (masks attached as by `runtime.load_model`):
    BatchNorm folded, each masked Linear / Conv2d weight as CSR parts, the rest dense."""
    masks = masks_of(model)
    folded = fold_batchnorm(model)
    state = {k: v.detach().cpu() for k, v in folded.state_dict().items() if k.rsplit(".", 1)[-1] != MASK_BUFFER}
    for key in _csr_layers(folded):
        if key in masks:
            state.update({f"{key}.{part}": t for part, t in csr_parts(state.pop(key), masks[key]).items()})
    return state


def save(path: str | Path, model: nn.Module, arch: Mapping) -> dict[str, Tensor]:
    """Write the sparse file of `model` (built from `arch`, see `architecture`); returns its tensors."""
    state = sparse_state(model)
    meta = json.dumps({"format": FORMAT, "architecture": dict(arch)}, sort_keys=True)
    save_tensors(path, state, metadata={METADATA_KEY: meta})  # one entry: its bytes never depend on key order
    return state


def layer_stats(state: Mapping[str, Tensor]) -> dict[str, dict]:
    """Per CSR layer of a sparse file's tensors: dense shape, kept weights, density."""
    out = {}
    for key in sorted(k[: -len(".values")] for k in state if k.endswith(".values")):
        shape = [int(s) for s in state[f"{key}.shape"]]
        nnz = int(state[f"{key}.values"].numel())
        out[key] = {"shape": shape, "nnz": nnz, "density": nnz / math.prod(shape)}
    return out


def dense_bytes(model: nn.Module) -> int:
    """Size of the bare model's weights as a safetensors file (no masks): what the sparse file replaces."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if k.rsplit(".", 1)[-1] != MASK_BUFFER}
    return len(save(state))


# ----------------------------------------------------------------------------------------------
# reading


def _fail(path: Path, key: str, what: str) -> SparseFileError:
    return SparseFileError(f"{path}: key {key}: {what}")


def read_architecture(path: str | Path) -> dict:
    """The architecture recorded in a sparse file's metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as err:
        raise SparseFileError(f"{path}: not a safetensors file ({err})") from None
    try:
        info = json.loads(meta) if meta is not None else None
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("architecture"), dict):
        raise SparseFileError(f"{path}: no {FORMAT} metadata: not a sparse model file written by suptickets")
    return info["architecture"]


def _read_csr(path: Path, key: str, tensors: Mapping[str, Tensor], shape: Sequence[int]) -> Tensor:
    """One layer's CSR parts, checked against the architecture's weight shape and by torch's own
    invariant checks (offsets start at 0 and never decrease, columns in range and sorted per row)."""
    parts = {p: tensors.get(f"{key}.{p}") for p in PARTS}
    for p, t in parts.items():
        if t is None:
            raise _fail(path, f"{key}.{p}", "missing")
    size = parts["shape"]
    if size.dtype != torch.int64 or size.dim() != 1 or size.tolist() != list(shape):
        raise _fail(path, f"{key}.shape", f"{size.tolist()} in the file, but the architecture's weight is {list(shape)}")
    rows, cols = shape[0], math.prod(shape[1:])
    crow, col, values = parts["crow_indices"], parts["col_indices"], parts["values"]
    if crow.dtype not in (torch.int32, torch.int64) or col.dtype != crow.dtype:
        raise _fail(path, f"{key}.crow_indices", f"index dtypes {crow.dtype} and {col.dtype}: expected int32 or "
                                                 f"int64, the same for both")
    if crow.dim() != 1 or crow.numel() != rows + 1:
        raise _fail(path, f"{key}.crow_indices", f"{crow.numel()} offsets, expected rows + 1 = {rows + 1}")
    if not values.is_floating_point() or values.dim() != 1 or col.dim() != 1 or col.numel() != values.numel():
        raise _fail(path, f"{key}.col_indices", f"{col.numel()} column indices for {values.numel()} values "
                                                f"({values.dtype}); expected one per value, both 1-D")
    try:
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, values, (rows, cols), check_invariants=True)
    except RuntimeError as err:
        raise _fail(path, key, f"corrupted CSR index arrays: {str(err).splitlines()[0]}") from None


def read(path: str | Path, model: nn.Module | None = None
         ) -> tuple[dict, torch.fx.GraphModule, dict[str, Tensor], dict[str, Tensor]]:
    """The sparse file at `path` checked against the bare architecture `model` (default: the one its
    metadata records): (architecture, that model with BatchNorm folded, {weight key: its CSR
    tensor}, {key: every other tensor}). Raises SparseFileError naming the file and the key when the
    file does not fit the architecture or an index array is corrupted."""
    path = Path(path)
    arch = read_architecture(path)
    try:
        tensors = load_tensors(path)
    except SafetensorError as err:
        raise SparseFileError(f"{path}: unreadable safetensors data ({err})") from None
    if model is None:
        try:
            # shapes only: built without initialising, in uninitialised CPU memory (folding BatchNorm
            # on the meta device would load PyTorch's compiler for its Python meta kernels)
            model = build(arch, "meta").to_empty(device="cpu")
        except (KeyError, TypeError, ValueError) as err:
            raise SparseFileError(f"{path}: the recorded architecture {arch} cannot be built: {err}") from None
        fits = f"model {arch['name']} {arch['options']}"
    else:
        fits = f"the given {type(model).__name__}"
    folded = fold_batchnorm(model)
    expected = {k: v for k, v in folded.state_dict().items() if k.rsplit(".", 1)[-1] != MASK_BUFFER}
    capable = _csr_layers(folded)
    dense, csr = {}, {}
    for key, ref in expected.items():
        if key in capable and any(f"{key}.{p}" in tensors for p in PARTS):
            csr[key] = _read_csr(path, key, tensors, ref.shape)
        elif key not in tensors:
            raise _fail(path, key, f"missing: the file does not fit {fits}")
        elif tensors[key].shape != ref.shape:
            raise _fail(path, key, f"shape {list(tensors[key].shape)} in the file, {list(ref.shape)} in {fits}")
        else:
            dense[key] = tensors[key]
    known = set(dense) | {f"{k}.{p}" for k in csr for p in PARTS}
    unexpected = sorted(set(tensors) - known)
    if unexpected:
        raise _fail(path, unexpected[0], f"not a tensor of {fits}")
    return arch, folded, csr, dense
