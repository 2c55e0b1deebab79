"""export: really sparse files of the superposed model and of sparse_baseline (BatchNorm folded, each
masked layer in CSR), verified on the whole test split against the masked model, with their
inference latency on this CPU.

Writes models/{superposed,sparse_baseline}.sparse.safetensors and metrics/export.json (sizes, layer
counts, what was verified: the same bytes on every run). Latencies, speed-ups and the kernel each
layer chose under `export.kernel=auto` depend on the machine and the moment: they go to the
git-ignored metrics/export_speed.json and the W&B run, never into what DVC tracks.
"""

import os
from contextlib import ExitStack
from pathlib import Path

from _stage import Stage, log, main_of

from suptickets.artifacts import atomic_path

MODELS = ("superposed", "sparse_baseline")
SPEED = "metrics/export_speed.json"


def export(name: str, tmp: Path, arch: dict, test, ex: dict) -> tuple[dict, dict]:
    """Write the sparse file of models/<name>.safetensors to `tmp`, verify it, time it:
    (deterministic facts, timings)."""
    from suptickets import csr, runtime
    from suptickets.sparsity.engine import masks_of
    from suptickets.sparsity.masks import densities

    source = Path(f"models/{name}.safetensors")
    target = Path(f"models/{name}.sparse.safetensors")
    masked = runtime.load_model(source, csr.build(arch)).eval()
    layers = csr.layer_stats(csr.save(tmp, masked, arch))
    chosen = csr.load(tmp, kernel=ex["kernel"], batch_sizes=ex["batch_sizes"], repeats=ex["repeats"])
    checks = {ex["kernel"]: chosen}
    if ex["kernel"] != "csr":  # the verdict must not hang on which kernels the timing picked
        checks["csr"] = csr.load(tmp, kernel="csr")
    reference = csr.outputs(masked, (x for x, _ in test.epoch()))
    diffs = {label: csr.verify(reference, csr.outputs(m, (x for x, _ in test.epoch())),
                               f"{target} ({label} kernels)")
             for label, m in checks.items()}
    nnz, density = sum(v["nnz"] for v in layers.values()), densities(masks_of(masked))[0]
    dense_bytes, sparse_bytes = csr.dense_bytes(masked), tmp.stat().st_size
    facts = {"dense_bytes": dense_bytes, "masked_file_bytes": source.stat().st_size, "sparse_bytes": sparse_bytes,
             "smaller": dense_bytes / sparse_bytes, "nnz": nnz, "density": density, "layers": layers,
             "test_samples": reference.shape[0], "verified_kernels": sorted(checks), "predictions_equal": True}
    folded = csr.load(tmp, kernel="dense")
    seconds = {b: csr.latency({"dense": masked, "folded_dense": folded, "sparse": chosen}, arch["input_shape"],
                              b, ex["repeats"]) for b in ex["batch_sizes"]}
    timing = {"latency_ms": {str(b): {k: 1e3 * v for k, v in t.items()} for b, t in seconds.items()},
              "speedup": {str(b): t["dense"] / t["sparse"] for b, t in seconds.items()},
              "kernels": {layer: {str(b): k for b, k in ks.items()} for layer, ks in csr.kernels(chosen).items()},
              "whole_model_ms": {str(b): {k: 1e3 * v for k, v in t.items()} for b, t in chosen.model_seconds.items()},
              "max_abs_logit_diff": diffs}
    return facts, timing


def run(s: Stage) -> None:
    from suptickets import csr, runtime

    cfg, ex = s.cfg, s.cfg["export"]
    device = runtime.setup(cfg["threads"], "cpu")  # the export is for CPU inference
    data, summary = runtime.load_batches("data/prepared", cfg, device)
    arch = csr.architecture(cfg["model"], summary)
    facts, timings = {}, {}
    with ExitStack() as stack:  # every file is renamed into place only once all are verified
        for name in MODELS:
            tmp = stack.enter_context(atomic_path(f"models/{name}.sparse.safetensors"))
            facts[name], timings[name] = export(name, tmp, arch, data["test"], ex)
    s.write_metrics({"kernel": ex["kernel"], "tolerance": csr.TOLERANCE, "models": facts})
    load = os.getloadavg()[0]
    s.write_metrics({"threads": cfg["threads"], "batch_sizes": ex["batch_sizes"], "repeats": ex["repeats"],
                     "load_average": load, "models": timings}, path=SPEED)
    for name in MODELS:
        f, t = facts[name], timings[name]
        speed = ", ".join(f"batch {b} {x:.2f}x" for b, x in t["speedup"].items())
        log.info(f"export: {name}: {f['dense_bytes'] / 1e3:.0f} kB dense -> {f['sparse_bytes'] / 1e3:.0f} kB sparse "
                 f"({f['smaller']:.1f}x smaller), {speed} faster than the masked model (load average {load:.1f}); "
                 f"same predictions on the test split")


if __name__ == "__main__":
    main_of("export", run)
