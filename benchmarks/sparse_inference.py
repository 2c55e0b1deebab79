"""Exported sparse models (`suptickets.csr`) against the masked dense model: file size and CPU
inference latency, measured side by side in one run.

Cases: the default MLP 784-300-100-10 (BatchNorm) at density 0.05 and 0.02, a wider MLP
784-1000-1000-10 at 0.05, and ResNet-32 on CIFAR-shaped input (3x32x32) at 0.05. The models are
randomly initialised with random ERK masks of exact counts (`init_masks`) and random BatchNorm
statistics: latency and size depend on the shapes and the masks' counts, not on training. Each is
exported with `csr.save` and timed three ways at each batch size, median of the repeats, each
model in a block of its own after warm-up runs, with a fixed thread count:

  dense   the masked model as trained (the bare nn.Module with BatchNorm, eval mode)
  folded  the sparse file loaded with kernel="dense": BatchNorm folded, dense kernels (what
          folding alone gives)
  sparse  the sparse file loaded with kernel="auto": each layer runs the CSR product or the dense
          kernel, whichever it measured faster at that batch size when loaded (dense everywhere
          where the whole model measured faster so)

Sizes: the dense weights as safetensors (no masks) vs the sparse file (CSR values, int32 indices).
For ResNet-32 it also times F.unfold (im2col) alone at each conv layer, the cost the CSR
convolution pays before its product, against the dense convolution.

OMP_WAIT_POLICY=PASSIVE is set before torch is imported unless the environment sets it.

    python benchmarks/sparse_inference.py                          # about 90 s on a loaded 2-core CPU
    python benchmarks/sparse_inference.py --cases mlp-0.05 --json sparse.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import add_json, add_threads, busy_warning, parser  # noqa: E402  (first: the environment defaults, this checkout's src/)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MLP = {"name": "mlp", "input_shape": [1, 28, 28], "num_classes": 10}
CASES = {
    "mlp-0.05": ({**MLP, "options": {"hidden": [300, 100], "batch_norm": True}}, 0.05),
    "mlp-0.02": ({**MLP, "options": {"hidden": [300, 100], "batch_norm": True}}, 0.02),
    "mlp1000-0.05": ({**MLP, "options": {"hidden": [1000, 1000], "batch_norm": True}}, 0.05),
    "resnet32-0.05": ({"name": "resnet32", "options": {}, "input_shape": [3, 32, 32], "num_classes": 10}, 0.05),
}
GOAL_SPEEDUP, GOAL_SMALLER = 2.0, 8.0  # MLPs at density 0.05


def masked_model(arch: dict, density: float, seed: int = 0) -> torch.nn.Module:
    """`arch` with random weights, random ERK masks of exact counts and random BatchNorm statistics."""
    from suptickets import csr
    from suptickets.sparsity.engine import init_masks

    torch.manual_seed(seed)
    model = csr.build(arch)
    init_masks(model, density, "erk", False, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def unfold_vs_conv(model: torch.nn.Module, input_shape, batch: int, repeats: int) -> tuple[float, float]:
    """Seconds of F.unfold alone and of the dense convolution, summed over the conv layers at `batch`."""
    from suptickets.csr import timing

    convs = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    shapes = timing.input_shapes(model, convs, input_shape)
    unfold = conv = 0.0
    with torch.inference_mode():
        for name, shape in shapes.items():
            m, x = convs[name], torch.randn(batch, *shape)
            u, c = timing.medians([lambda: F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride),
                                   lambda: F.conv2d(x, m.weight, None, m.stride, m.padding, m.dilation)], repeats)
            unfold, conv = unfold + u, conv + c
    return unfold, conv


def run_case(name: str, arch: dict, density: float, batch_sizes, repeats: int, folder: Path) -> dict:
    from suptickets import csr

    t0 = time.perf_counter()
    model = masked_model(arch, density)
    path = folder / f"{name}.sparse.safetensors"
    layers = csr.layer_stats(csr.save(path, model, arch))
    x = torch.randn(64, *arch["input_shape"])
    chosen = csr.load(path, kernel="auto", batch_sizes=batch_sizes, repeats=repeats)
    folded = csr.load(path, kernel="dense")
    reference = csr.outputs(model, [x])
    max_diff = max(csr.verify(reference, csr.outputs(m, [x]), f"{name} {label}")
                   for label, m in (("auto", chosen), ("folded", folded), ("csr", csr.load(path, kernel="csr"))))
    seconds = {b: csr.latency({"dense": model, "folded": folded, "sparse": chosen}, arch["input_shape"], b, repeats)
               for b in batch_sizes}
    kernels = csr.kernels(chosen)
    out = {"arch": arch, "density": density, "dense_bytes": csr.dense_bytes(model),
           "sparse_bytes": path.stat().st_size, "layers": len(layers),
           "latency_ms": {str(b): {k: 1e3 * v for k, v in t.items()} for b, t in seconds.items()},
           "speedup": {str(b): t["dense"] / t["sparse"] for b, t in seconds.items()},
           "speedup_vs_folded": {str(b): t["folded"] / t["sparse"] for b, t in seconds.items()},
           "csr_layers": {str(b): sum(k[b] == "csr" for k in kernels.values()) for b in batch_sizes},
           "kernels": {layer: {str(b): k for b, k in ks.items()} for layer, ks in kernels.items()},
           "whole_model_ms": {str(b): {k: 1e3 * v for k, v in t.items()} for b, t in chosen.model_seconds.items()},
           "max_abs_logit_diff": max_diff}
    out["smaller"] = out["dense_bytes"] / out["sparse_bytes"]
    if arch["name"] != "mlp":
        b = max(batch_sizes)
        unfold, conv = unfold_vs_conv(model, arch["input_shape"], b, max(1, repeats // 2))
        out["unfold_vs_conv_ms"] = {"batch": b, "unfold": 1e3 * unfold, "dense_conv": 1e3 * conv}
    out["seconds"] = time.perf_counter() - t0
    return out


def table(results: dict, batch_sizes) -> str:
    head = "| case | layers | dense kB | sparse kB | smaller |" + "".join(
        f" batch {b}: dense / folded / sparse ms | speed-up (vs folded) | CSR layers |" for b in batch_sizes)
    lines = [head, "|" + "---|" * (5 + 3 * len(batch_sizes))]
    for name, r in results.items():
        row = f"| {name} | {r['layers']} | {r['dense_bytes'] / 1e3:,.0f} | {r['sparse_bytes'] / 1e3:,.0f} | " \
              f"{r['smaller']:.1f}× |"
        for b in map(str, batch_sizes):
            t = r["latency_ms"][b]
            row += f" {t['dense']:.3g} / {t['folded']:.3g} / {t['sparse']:.3g} | {r['speedup'][b]:.2f}× " \
                   f"({r['speedup_vs_folded'][b]:.2f}×) | {r['csr_layers'][b]} of {r['layers']} |"
        lines.append(row)
    return "\n".join(lines)


def verdicts(results: dict, batch_sizes) -> list[str]:
    out = []
    for name, r in results.items():
        if r["arch"]["name"] == "mlp" and r["density"] == 0.05:
            speedups = [r["speedup"][str(b)] for b in batch_sizes]
            met = min(speedups) >= GOAL_SPEEDUP and r["smaller"] >= GOAL_SMALLER
            shown = ", ".join(f"{x:.2f}x" for x in speedups)
            out.append(f"{name}: goal >= {GOAL_SPEEDUP:g}x faster at batch {', '.join(map(str, batch_sizes))} "
                       f"and >= {GOAL_SMALLER:g}x smaller: {'met' if met else 'MISSED'} ({shown}; {r['smaller']:.1f}x)")
        if "unfold_vs_conv_ms" in r:
            u = r["unfold_vs_conv_ms"]
            won = ", ".join(f"batch {b}: {r['csr_layers'][str(b)]}" for b in batch_sizes)
            out.append(f"{name}: at batch {u['batch']} F.unfold alone takes {u['unfold']:.0f} ms over the conv "
                       f"layers against {u['dense_conv']:.0f} ms for the dense (oneDNN) convolutions, so a CSR "
                       f"convolution cannot win there however sparse; what is gained comes from folding "
                       f"BatchNorm and from the layers that kept CSR ({won} of {r['layers']})")
    return out


def main(argv=None) -> int:
    ap = parser(__doc__, details=True, costs=("the default (four models, batch 1 and 256, 30/5 repeats, 1 thread) "
                                              "took 90 s on this 2-core machine while it was loaded by other jobs."))
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                    help="which models (default: all four)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256],
                    help="batch sizes for the kernel choice and the latencies (default: 1 256)")
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per MLP measurement; the median counts "
                                                            "(default 30)")
    ap.add_argument("--resnet-repeats", type=int, default=5,
                    help="the same for ResNet-32, whose batch of 256 takes about a second (default 5)")
    add_threads(ap, 1, help="torch CPU threads (default 1: steadiest on a shared 2-core machine)")
    add_json(ap, help="also write every figure as JSON to this path")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    busy_warning(args.threads)
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load_before:.1f} on "
          f"{os.cpu_count()} cores; random weights, random ERK masks")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            arch, density = CASES[name]
            repeats = args.resnet_repeats if arch["name"] != "mlp" else args.repeats
            results[name] = run_case(name, arch, density, args.batch_sizes, repeats, Path(tmp))
            print(f"{name}: done in {results[name]['seconds']:.1f} s", flush=True)
    print()
    print(table(results, args.batch_sizes))
    print()
    for line in verdicts(results, args.batch_sizes):
        print(line)
    load_after = os.getloadavg()[0]
    print(f"load average {load_before:.1f} before, {load_after:.1f} after")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": args.threads,
                                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                         "batch_sizes": args.batch_sizes, "load_average": [load_before, load_after],
                                         "cases": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
