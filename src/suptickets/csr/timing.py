"""The kernel choice by timing, on the machine that loads the file: each CSR layer's two kernels
timed at each batch size, the faster kept, unless the whole model runs faster with dense kernels
everywhere at that batch size; and the latency of whole models.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .layers import sparse_layers


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
