"""Really sparse model files, and a CPU inference module that runs on them (the `export` stage).

A masked model (bare weights plus masks, weights outside a mask exact zeros) becomes a safetensors
file in which each masked Linear / Conv2d weight is held in compressed sparse row form and every
other tensor stays dense under the bare architecture's key:

    <layer>.weight.values        the kept weights, row by row (float32)
    <layer>.weight.crow_indices  int32: rows + 1 offsets into values (int64 only if a count needs it)
    <layer>.weight.col_indices   int32: the column of each value
    <layer>.weight.shape         int64: the dense shape, [out, in] or [out, in, kh, kw]

A convolution weight [out, in, kh, kw] is the CSR of its [out, in·kh·kw] matrix. The positions are
the mask's (a kept weight that happens to be zero stays), so a layer's count is its mask's.
BatchNorm is folded into the Linear / Conv2d just before it first (torch.fx's `fuse`: Linear →
BatchNorm1d, Conv2d → BatchNorm2d): those BatchNorm tensors are gone and the layer gains a bias.
One metadata entry names the format and the architecture (the arguments of `models.build_model`),
so `load(path)` needs nothing else.

`load` returns an eval-mode module in which each CSR layer runs torch's sparse product
(`torch.addmm` on a `torch.sparse_csr_tensor`; a convolution as `F.unfold` and that product per
sample) or the dense kernel on the weight made dense again: `kernel="csr"`, `"dense"`, or `"auto"`,
which times both on this machine for each of `batch_sizes` and keeps the faster, per layer and
batch size (an input batch uses the choice of the nearest of those sizes, on a log scale), unless
the whole model runs faster with dense kernels everywhere at that batch size.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from torch.fx.experimental.optimization import fuse

from .artifacts import load_tensors, save_tensors
from .choices import KERNELS
from .errors import SparseFileError, VerificationFailed
from .models import build_model
from .sparsity import MASK_BUFFER
from .sparsity.engine import masks_of

FORMAT = "suptickets.sparse/1"
METADATA_KEY = "suptickets.sparse"
PARTS = ("values", "crow_indices", "col_indices", "shape")
TOLERANCE = 1e-4  # max |logit difference| allowed between the exported and the masked model


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


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """An eval-mode copy of `model` with each BatchNorm that directly follows a Linear / Conv2d
    folded into that layer (torch.fx.experimental.optimization.fuse)."""
    was_training = model.training
    model.eval()
    try:
        return fuse(model)
    finally:
        model.train(was_training)


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
# the inference layers


class SparseLayer(nn.Module):
    """A Linear / Conv2d whose weight is held in CSR. `infer` runs the CSR product or the dense
    kernel per input batch size, as `use` set it (CSR everywhere until then). CPU inference only."""

    def __init__(self, weight: Tensor, bias: Tensor | None, shape: Sequence[int]):
        super().__init__()
        self.weight_csr = weight  # [rows, rest] sparse CSR
        self.bias = torch.zeros(shape[0], dtype=weight.dtype) if bias is None else bias
        self.bias_col = self.bias[:, None]
        self.shape = tuple(shape)
        self._dense: Tensor | None = None
        self.use({1: "csr"})

    def dense_weight(self) -> Tensor:
        """The weight as a dense tensor of its layer's shape (made once, kept for `run_dense`)."""
        if self._dense is None:
            self._dense = self.weight_csr.to_dense().reshape(self.shape)
        return self._dense

    def use(self, kernels: Mapping[int, str]) -> None:
        """{batch size: "csr" | "dense"}; another batch size uses the nearest one's (log scale).
        The dense copy of the weight is kept only where some batch size runs the dense kernel."""
        self.kernels = dict(sorted((int(b), k) for b, k in kernels.items()))
        sizes = list(self.kernels)
        self._bounds = [math.sqrt(a * b) for a, b in zip(sizes, sizes[1:])]
        self._runs = [self.run_csr if k == "csr" else self.run_dense for k in self.kernels.values()]
        self._dense = self.dense_weight() if "dense" in self.kernels.values() else None
        self.infer = self._runs[0] if len(set(self.kernels.values())) == 1 else self._by_batch_size

    def kernel_for(self, batch_size: int) -> str:
        return list(self.kernels.values())[bisect.bisect_left(self._bounds, batch_size)]

    def _by_batch_size(self, x: Tensor) -> Tensor:
        return self._runs[bisect.bisect_left(self._bounds, x.shape[0])](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.infer(x)

    def run_csr(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def run_dense(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class SparseLinear(SparseLayer):
    def run_csr(self, x: Tensor) -> Tensor:
        # (W xᵀ + b)ᵀ, a view: the next CSR layer's xᵀ is contiguous again
        if x.dim() == 2:
            return torch.addmm(self.bias_col, self.weight_csr, x.T).T
        flat = torch.addmm(self.bias_col, self.weight_csr, x.reshape(-1, x.shape[-1]).T).T
        return flat.reshape(*x.shape[:-1], self.shape[0])

    def run_dense(self, x: Tensor) -> Tensor:
        return F.linear(x, self._dense, self.bias)


class SparseConv2d(SparseLayer):
    def __init__(self, weight: Tensor, bias: Tensor | None, shape: Sequence[int], conv: nn.Conv2d):
        super().__init__(weight, bias, shape)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def run_csr(self, x: Tensor) -> Tensor:
        # im2col, then the CSR product sample by sample: each [in·kh·kw, h·w] slice is contiguous and
        # the stacked [B, out, h·w] result is the output's layout, so nothing is transposed
        out, _, kh, kw = self.shape
        h = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w = (x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, padding=self.padding, stride=self.stride)
        return torch.stack([torch.addmm(self.bias_col, self.weight_csr, c) for c in cols]).view(x.shape[0], out, h, w)

    def run_dense(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self._dense, self.bias, self.stride, self.padding, self.dilation)


def direct_calls(model: torch.fx.GraphModule) -> None:
    """Let the graph call each CSR layer's kernel, and ReLU / Flatten as functions, without
    nn.Module.__call__ (2–3 µs a module here: most of a batch-1 pass of the MLP)."""
    graph = model.graph
    for node in list(graph.nodes):
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, (SparseLayer, nn.ReLU, nn.Flatten)):
            continue
        with graph.inserting_before(node):
            if isinstance(module, SparseLayer):
                new = graph.call_method("infer", (graph.get_attr(node.target), *node.args))
            elif isinstance(module, nn.ReLU):
                new = graph.call_function(torch.relu_ if module.inplace else torch.relu, node.args)
            else:
                new = graph.call_method("flatten", (*node.args, module.start_dim, module.end_dim))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    model.delete_all_unused_submodules()
    model.recompile()


def sparse_layers(model: nn.Module) -> dict[str, SparseLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLayer)}


def kernels(model: nn.Module) -> dict[str, dict[int, str]]:
    """Each CSR layer's kernel per measured batch size."""
    return {n: dict(m.kernels) for n, m in sparse_layers(model).items()}


# ----------------------------------------------------------------------------------------------
# loading


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


def load(path: str | Path, kernel: str = "auto", batch_sizes: Sequence[int] = (1, 256), repeats: int = 10,
         model: nn.Module | None = None, timer: Callable | None = None) -> torch.fx.GraphModule:
    """The sparse file at `path` as an eval-mode inference module on CPU.

    `kernel`: "csr", "dense", or "auto" (time both for each CSR layer, here, at each of
    `batch_sizes`, median of `repeats`, keep the faster, then keep dense kernels at a batch size
    where the whole model runs faster so; `kernels(module)` tells the choice, `module.layer_seconds`
    and `module.model_seconds` the times).
    `model`: the bare architecture the file must fit (default: the one its metadata records).
    `timer`: how "auto" times the kernels (default `medians`; see `choose_kernels`).
    Raises SparseFileError naming the file and the key when the file does not fit the architecture
    or an index array is corrupted."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: not one of {', '.join(KERNELS)}")
    path = Path(path)
    arch = read_architecture(path)
    try:
        tensors = load_tensors(path)
    except SafetensorError as err:
        raise SparseFileError(f"{path}: unreadable safetensors data ({err})") from None
    if model is None:
        try:
            model = build(arch, "meta")
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
    for key, weight in csr.items():
        name = key[: -len(".weight")]
        parent, _, child = name.rpartition(".")
        module = capable[key]
        bias = dense.pop(f"{name}.bias", None)
        shape = tuple(expected[key].shape)
        layer = SparseLinear(weight, bias, shape) if isinstance(module, nn.Linear) \
            else SparseConv2d(weight, bias, shape, module)
        setattr(folded.get_submodule(parent) if parent else folded, child, layer)
    folded.load_state_dict(dense, strict=True, assign=True)
    folded.eval().requires_grad_(False)
    folded.layer_seconds, folded.model_seconds = {}, {}
    if kernel == "auto":
        folded.layer_seconds, folded.model_seconds = choose_kernels(folded, arch["input_shape"], batch_sizes, repeats,
                                                                     timer=timer or medians)
    else:
        for layer in sparse_layers(folded).values():
            layer.use({int(b): kernel for b in batch_sizes})
    direct_calls(folded)
    return folded


# ----------------------------------------------------------------------------------------------
# timing


def medians(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1, rounds: int = 3) -> list[float]:
    """Median seconds of each function over `repeats` timed runs. The functions take turns in up to
    `rounds` blocks of runs, each block after `warmup` untimed runs: a busy spell of a shared
    machine then falls on all of them, while a block keeps each one's caches warm (interleaved run
    by run, a dense matrix product right after an MKL sparse one took up to twice as long here)."""
    times: list[list[float]] = [[] for _ in fns]
    rounds = max(1, min(rounds, repeats))
    for r in range(rounds):
        n = repeats * (r + 1) // rounds - repeats * r // rounds
        for fn, out in zip(fns, times):
            for _ in range(warmup):
                fn()
            for _ in range(n):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def input_shapes(model: nn.Module, modules: Mapping[str, nn.Module], input_shape: Sequence[int]) -> dict[str, tuple]:
    """The per-sample input shape of each of `modules` (name → submodule of `model`), from one
    forward pass of a zero input (forward pre-hooks; before `direct_calls`, which bypasses them)."""
    shapes, hooks = {}, []
    for name, module in modules.items():
        hooks.append(module.register_forward_pre_hook(
            lambda m, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[1:]))))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def layer_kernels(times: Mapping[int, Mapping[str, float]]) -> dict[int, str]:
    """{batch size: {"dense": s, "csr": s}} -> {batch size: the faster kernel} (dense on a tie)."""
    return {b: "csr" if t["csr"] < t["dense"] else "dense" for b, t in times.items()}


def keeps_choice(model_times: Mapping[str, float]) -> bool:
    """Whether the whole model at one batch size keeps the layers' choices ({"chosen", "dense"} seconds):
    only where it is not slower than with dense kernels everywhere."""
    return model_times["chosen"] <= model_times["dense"]


def choose_kernels(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int],
                   repeats: int, seed: int = 0,
                   timer: Callable[[Sequence[Callable[[], object]], int], list[float]] = medians) -> tuple[dict, dict]:
    """Time each CSR layer's two kernels on random inputs of its shape at each batch size and let it
    use the faster. Then, per batch size, time the whole model with those choices and with dense
    kernels everywhere, and keep the dense kernels where they are faster: in a model a dense product
    right after a sparse one runs slower than it does alone. `timer(fns, repeats)` gives each
    function's seconds (default `medians`). Returns the times (seconds):
    ({layer: {batch size: {"dense", "csr"}}}, {batch size: {"chosen", "dense"}})."""
    g = torch.Generator().manual_seed(seed)
    layer_times, model_times = {}, {}
    layers = sparse_layers(model)
    for name, shape in input_shapes(model, layers, input_shape).items():
        layer = layers[name]
        layer_times[name] = {}
        for b in batch_sizes:
            x = torch.randn((int(b), *shape), generator=g)
            layer.dense_weight()  # made once, outside the timing
            with torch.inference_mode():
                dense, csr = timer([lambda: layer.run_dense(x), lambda: layer.run_csr(x)], repeats)
            layer_times[name][int(b)] = {"dense": dense, "csr": csr}
        layer.use(layer_kernels(layer_times[name]))
    for b in map(int, batch_sizes):
        chosen = {n: dict(layer.kernels) for n, layer in layers.items()}
        if all(k[b] == "dense" for k in chosen.values()):
            continue
        x = torch.randn((b, *input_shape), generator=g)
        for kind in ("chosen", "dense"):
            for n, layer in layers.items():
                layer.use({**chosen[n], b: "dense"} if kind == "dense" else chosen[n])
            with torch.inference_mode():
                model_times.setdefault(b, {})[kind] = timer([lambda: model(x)], repeats)[0]
        if keeps_choice(model_times[b]):
            for n, layer in layers.items():
                layer.use(chosen[n])
    return layer_times, model_times


def latency(models: Mapping[str, nn.Module], input_shape: Sequence[int], batch_size: int, repeats: int,
            seed: int = 0) -> dict[str, float]:
    """Median seconds of one forward pass of each model (eval mode, inference mode) at `batch_size`
    on the same random input."""
    x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(seed))
    for m in models.values():
        m.eval()
    with torch.inference_mode():
        return dict(zip(models, medians([lambda m=m: m(x) for m in models.values()], repeats)))


# ----------------------------------------------------------------------------------------------
# verification


@torch.inference_mode()
def outputs(model: nn.Module, batches: Iterable[Tensor]) -> Tensor:
    """The model's outputs (eval mode) over all batches, concatenated."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x).float() for x in batches])
    finally:
        model.train(was_training)


def verify(reference: Tensor, logits: Tensor, what: str, tolerance: float = TOLERANCE) -> float:
    """Raise VerificationFailed unless `logits` give the same argmax as `reference` on every sample
    and differ by at most `tolerance`; returns the largest difference."""
    diff = float((reference - logits).abs().max()) if reference.numel() else 0.0
    differ = int((reference.argmax(1) != logits.argmax(1)).sum())
    if differ or not diff <= tolerance:
        raise VerificationFailed(f"{what}: {differ} of {reference.shape[0]} predictions differ from the masked "
                                 f"model's, max |logit difference| {diff:.3g} (allowed {tolerance:g})")
    return diff
