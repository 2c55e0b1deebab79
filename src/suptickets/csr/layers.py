"""The inference layers of a sparse file: a Linear / Conv2d whose weight is held in CSR, running
torch's sparse product (`torch.addmm` on a `torch.sparse_csr_tensor`; a convolution as `F.unfold`
and that product per sample) or the dense kernel on the weight made dense again, chosen per input
batch size (an input batch uses the choice of the nearest set size, on a log scale). CPU only.
"""

from __future__ import annotations

import bisect
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
