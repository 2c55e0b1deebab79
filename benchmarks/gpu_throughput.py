"""Training throughput of the pipeline's own epoch loop: dense vs masked, with the stages' settings.

For each `--experiment` preset (composed from params/ as the stages compose it, `--set` overrides on
top), the two variants train exactly as the stages do: `runtime.setup` (thread count, deterministic
kernels), `runtime.new_model`, `runtime.optimizer_for`, data held on the device as `Batches`
(shuffle, the preset's crops and flips, normalisation; synthetic uint8 images of the data set's
shape), and the phase functions themselves: `phases.dense` for the dense variant, `phases.sparse_phase`
(masks of the preset's `dst.*` density and distribution, its topology updates every
`dst.update_frequency` steps, the FLOPs meter) for the masked one, with `train.amp`,
`train.channels_last`, `train.compile` as configured.

A window is one call of the phase over one epoch of W steps (W set after the warm-up so a window
lasts about `--window-s`), including what the loop does at an epoch's end (one host read of the
metrics, an evaluation of one batch). Windows alternate in pairs, dense-masked then masked-dense
(a steady drift of the machine's speed cancels); each pair gives one masked/dense ratio of
images/s, reported as the mean over the pairs with its 95% t interval (`gains.mean_sd_half`).

Printed per preset: images/s and ms per step of each variant (medians over windows), the cost of one
topology update (`DST.update` on a step's dense gradient, synchronised before and after, median of
`--update-calls`), and the share of host time: on CUDA, the fraction of a step's wall time in which
the GPU runs no kernel, 1 - (kernel time per step, summed by the CUDA profiler over one extra window)
/ (wall time per step of the timed windows): the part of the step the device waits for the host
(Python, kernel launches, syncs). On a CPU host and device are the same, so no share is given.

`--lanes N` (several values: one row each) trains N copies of each variant in one process, as the
runs of a `stages/chain.py +lanes` job train: each lane its own model, optimizer, masks and data
order (seed + k), all advanced one training step each in turn by `suptickets.lanes` (on CUDA each
lane on its own stream). A window is then one epoch of every lane; images/s are summed over the
lanes, ms per step is per step of all lanes together, and the update and mask figures are lane 0's.

    python benchmarks/gpu_throughput.py                                  # both presets, on a CUDA machine
    python benchmarks/gpu_throughput.py --experiment cifar10_resnet32 --pairs 20 --json out.json
    python benchmarks/gpu_throughput.py --device cpu --set train.batch_size=16   # on a CPU
    python benchmarks/gpu_throughput.py --lanes 1 8                      # one lane, then 8 in one process
    python benchmarks/gpu_throughput.py --set train.graphs=true          # the step in CUDA graphs (each
                                                                         # window captures anew)
    python benchmarks/gpu_throughput.py --dry-run                        # tiny windows on the CPU
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import _common  # first: the environment defaults, before torch loads; this checkout's src/ on sys.path

PARAMS = Path(__file__).resolve().parents[1] / "params"
# synthetic data of the data set's shape: (C, H, W), classes
SHAPES = {"fashion_mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
VARIANTS = ("dense", "masked")


def compose(experiment: str, sets: list[str], under: tuple[str, ...] = ()) -> dict:
    """The preset's configuration as the stages compose it (Hydra, params/), with `under` (the dry
    run's sizes) and the user's `sets` on top; a refusal names the user's."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from suptickets import composition

    known = composition.presets(PARAMS)
    if experiment not in known:
        raise SystemExit(f"gpu_throughput.py: --experiment {experiment!r} is not a preset; one of {known}")
    try:
        cfg = composition.compose(PARAMS, [f"experiment={experiment}", *under, *sets])
    except (HydraException, OmegaConfBaseException) as err:
        raise SystemExit(f"gpu_throughput.py: --set {' '.join(sets)}: {' '.join(str(err).split())}") from None
    if cfg["data"]["name"] not in SHAPES:
        raise SystemExit(f"gpu_throughput.py: data.name={cfg['data']['name']!r} is not held in memory; "
                         f"one of {list(SHAPES)}")
    return cfg


def ratio_interval(dense_s: list[float], masked_s: list[float]) -> dict:
    """masked/dense images/s per adjacent pair of equal-length windows (= dense time / masked time):
    mean, 95% t interval, its half-width relative to the mean."""
    from suptickets.gains import mean_sd_half

    ratios = [d / m for d, m in zip(dense_s, masked_s)]
    mean, _, half = mean_sd_half(ratios)
    return {"ratio": mean, "low": mean - half, "high": mean + half, "half_width_rel": half / mean,
            "pairs": len(ratios), "ratios": ratios}


def main(argv=None) -> int:
    ap = _common.parser(
        __doc__, costs=("per preset a warm-up (2 short windows per variant), then --pairs x 2 windows of "
                        "--window-s (2 s) each, an extra profiled window per variant on CUDA and "
                        "--update-calls updates: about 50 s a preset, 100 s for the two default presets "
                        "(an estimate, not measured on a GPU); each further --lanes value as much again. "
                        "--dry-run: a few seconds on a CPU per preset and lane count."))
    ap.add_argument("--experiment", nargs="+", default=["fashion_mnist_resnet", "cifar10_resnet32"],
                    help="presets of params/experiment to time (default: %(default)s)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="Hydra overrides on every preset, e.g. train.batch_size=256 dst.density=0.02")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where to train (default %(default)s)")
    ap.add_argument("--window-s", type=float, default=2.0, help="seconds a timed window lasts, about (default %(default)s)")
    ap.add_argument("--pairs", type=int, default=10, help="dense+masked window pairs timed (default %(default)s)")
    ap.add_argument("--update-calls", type=int, default=5, help="timed topology updates, median (default %(default)s)")
    ap.add_argument("--lanes", type=int, nargs="+", default=[1], metavar="N",
                    help="runs trained in one process as lanes, one row per value (default %(default)s)")
    _common.add_threads(ap, 1, help="CPU threads, as the stages' `threads` (default %(default)s)")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU at tiny sizes (fashion_mnist_resnet at quarter width, batch 8, windows of "
                         "0.05 s, 2 pairs): checks the code paths, measures nothing")
    _common.add_json(ap)
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.window_s, args.pairs, args.update_calls = "cpu", 0.05, 2, 1
        if args.experiment == ap.get_default("experiment"):
            args.experiment = ["fashion_mnist_resnet"]
    dry_sets = ("train.batch_size=8", "train.eval_batch_size=8", "model.width=0.25") if args.dry_run else ()
    if args.window_s <= 0 or args.pairs < 2 or args.update_calls < 1 or min(args.lanes) < 1:
        raise SystemExit(f"gpu_throughput.py: need --window-s > 0, --pairs >= 2, --update-calls >= 1, --lanes >= 1; "
                         f"got {args.window_s}, {args.pairs}, {args.update_calls}, {args.lanes}")
    configs = {e: compose(e, args.set, dry_sets) for e in args.experiment}  # refused before torch loads

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput.py: CUDA is not available on this machine; run it on a GPU, or use --device cpu "
              "(or --dry-run to check the code paths).", file=sys.stderr)
        return 2
    from suptickets.runtime import setup

    device = setup(args.threads, args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}{' (dry run)' if args.dry_run else ''}; torch {torch.__version__}; threads {args.threads}; "
          f"windows of ~{args.window_s} s, {args.pairs} dense/masked pairs")
    results = [bench(experiment, cfg, args, device, n) for experiment, cfg in configs.items() for n in args.lanes]
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "dry_run": args.dry_run,
                                         "window_s": args.window_s, "pairs": args.pairs, "threads": args.threads,
                                         "update_calls": args.update_calls, "lanes": args.lanes,
                                         "results": results}, indent=2) + "\n")
    return 0


def synthetic_data(cfg: dict, shape, classes: int, device, steps: int, lanes: int = 1) -> list[dict]:
    """Random uint8 images on the device as the stages hold a data set: per lane a train split of one
    epoch of `steps` batches (shuffled in the lane's own order, the preset's crops and flips) and a val
    split of one batch; the lanes share the images."""
    import torch

    from suptickets.batches import Batches

    g = torch.Generator().manual_seed(0)
    b, aug = cfg["train"]["batch_size"], cfg["data"]["augment"]
    x = torch.randint(0, 256, (b * steps, *shape), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, classes, (b * steps,), generator=g).to(device)
    mean, std = [0.5] * shape[0], [0.25] * shape[0]
    return [{"train": Batches(x, y, mean, std, batch_size=b, shuffle=True, drop_last=True, seed=cfg["seed"] + k,
                              padding=aug["padding"], flip=aug["flip"]),
             "val": Batches(x[:b], y[:b], mean, std, batch_size=cfg["train"]["eval_batch_size"])}
            for k in range(lanes)]


class Lane:
    """One run of a variant: a model, its optimizer and data, trained one epoch per window by the
    stage's own phase function."""

    def __init__(self, masked: bool, cfg: dict, shape, classes: int, device, data: dict):
        from suptickets.phases import FlopsMeter
        from suptickets.runtime import new_model, optimizer_for

        self.masked, self.cfg, self.step, self.data = masked, cfg, 0, data
        self.model = new_model(cfg, {"shape": list(shape), "num_classes": classes}, device)
        self.opt = optimizer_for(self.model, cfg["train"])
        self.flops = FlopsMeter(self.model, shape, cfg["dst"]["method"] if masked else None,
                                cfg["dst"]["update_frequency"] if masked else None)

    def run_epoch(self, e: int) -> None:
        """Epoch e of the phase, as a stage resumed at this epoch runs it."""
        from suptickets.phases import dense, sparse_phase

        if self.masked:
            self.step = sparse_phase(self.model, self.opt, self.data, self.cfg, epochs=e + 1, on_epoch=lambda row: None,
                                     stage="sparse_baseline", flops=self.flops, start_epoch=e, step=self.step)
        else:
            self.step = dense(self.model, self.opt, self.data, self.cfg, epochs=e + 1, on_epoch=lambda row: None,
                              start_epoch=e, step=self.step)


class Variant:
    """One side of the comparison: its lanes (one, or several trained in turn in this process)."""

    def __init__(self, masked: bool, cfg: dict, shape, classes: int, device, data: list[dict]):
        self.epoch = 0
        self.lanes = [Lane(masked, cfg, shape, classes, device, d) for d in data]

    def set_data(self, data: list[dict]) -> None:
        for lane, d in zip(self.lanes, data):
            lane.data = d

    def run_epoch(self) -> None:
        """One epoch of every lane; several lanes one training step each in turn (suptickets.lanes)."""
        from suptickets import lanes

        e = self.epoch
        if len(self.lanes) == 1:
            self.lanes[0].run_epoch(e)
        else:
            codes = lanes.run([lambda lane=lane: lane.run_epoch(e) for lane in self.lanes],
                              [f"lane-{k}" for k in range(len(self.lanes))])
            if any(codes):
                raise SystemExit(f"gpu_throughput.py: lanes ended with exit codes {codes}")
        self.epoch += 1


def bench(experiment: str, cfg: dict, args, device, lanes: int = 1) -> dict:
    import torch

    from suptickets.sparsity.engine import DST, Masked

    shape, classes = SHAPES[cfg["data"]["name"]]
    b = cfg["train"]["batch_size"]
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def timed(v: Variant) -> float:
        sync()
        t0 = time.perf_counter()
        v.run_epoch()
        sync()
        return time.perf_counter() - t0

    t_start = time.perf_counter()
    # warm-up with short epochs: the first one pays for allocation (and compilation), the second is timed
    # to size the windows
    probe = max(2, round((8 if args.dry_run else 30) / lanes))  # steps of every lane
    data = synthetic_data(cfg, shape, classes, device, probe, lanes)
    sides = {v: Variant(v == "masked", cfg, shape, classes, device, data) for v in VARIANTS}
    for v in VARIANTS:
        timed(sides[v])
    per_step = max(timed(sides[v]) for v in VARIANTS) / probe
    steps = max(2, round(args.window_s / per_step))
    data = synthetic_data(cfg, shape, classes, device, steps, lanes)  # the same models, on epochs of one window
    for v in VARIANTS:
        sides[v].set_data(data)
        timed(sides[v])

    windows = {v: [] for v in VARIANTS}
    for k in range(args.pairs):  # dense, masked, masked, dense, ...: a steady drift cancels in pairs
        for v in (VARIANTS if k % 2 == 0 else VARIANTS[::-1]):
            windows[v].append(timed(sides[v]))

    # one topology update, on a step's dense gradient, as the loop makes it
    masked_side = sides["masked"].lanes[0]
    model, opt = masked_side.model, masked_side.opt
    masked = Masked(model, opt)
    rule = DST.from_config(cfg["dst"], steps_per_epoch=steps, epochs=cfg["train"]["epochs"],
                           budget_epochs=cfg["train"]["epochs"], seed=cfg["seed"])
    from suptickets.train import Speed, train_step

    speed = Speed.from_config(cfg["train"])
    xb, yb = next(iter(masked_side.data["train"].epoch(0)))
    update_s = []
    for k in range(args.update_calls):
        train_step(model, opt, xb, yb, step=1, masked=masked, speed=speed)  # gradients of a real step
        grads = masked.dense_grads()
        sync()
        t0 = time.perf_counter()
        rule.update(masked, rule.update_frequency * (k + 1), grads)
        sync()
        update_s.append(time.perf_counter() - t0)
    exact = all(bool((w[m == 0] == 0).all()) for w, m in zip(masked.weights, masked.masks))

    host_share = {v: None for v in VARIANTS}
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        for v in VARIANTS:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                timed(sides[v])
            busy_us = sum(e.self_device_time_total for e in prof.key_averages())
            host_share[v] = max(0.0, 1.0 - busy_us * 1e-6 / statistics.median(windows[v]))

    ms_per_step = {v: 1e3 * statistics.median(windows[v]) / steps for v in VARIANTS}
    res = {
        "experiment": experiment, "model": cfg["model"]["name"], "input_shape": list(shape), "batch": b, "lanes": lanes,
        "amp": cfg["train"]["amp"], "channels_last": cfg["train"]["channels_last"], "compile": cfg["train"]["compile"],
        "dst": {k: cfg["dst"][k] for k in ("method", "density", "update_frequency")},
        "window_steps": steps, "window_s": windows,
        "images_per_s": {v: lanes * b * steps / statistics.median(windows[v]) for v in VARIANTS},
        "ms_per_step": ms_per_step, "host_share": host_share,
        "update_ms": 1e3 * statistics.median(update_s),
        "masked_over_dense": ratio_interval(windows["dense"], windows["masked"]),
        "masks_exact": exact, "seconds": time.perf_counter() - t_start,
    }
    report(res)
    return res


def report(r: dict) -> None:
    d = r["dst"]
    print(f"{r['experiment']}: {r['model']} on {'x'.join(map(str, r['input_shape']))}, "
          f"{r['lanes']} lane{'s' if r['lanes'] > 1 else ''} (images/s summed), batch {r['batch']}, amp "
          f"{r['amp']}, channels_last {r['channels_last']}, compile {r['compile']}; masked: {d['method']} at density "
          f"{d['density']}, an update every {d['update_frequency']} steps; windows of {r['window_steps']} steps")
    for v in VARIANTS:
        share = r["host_share"][v]
        print(f"  {v:6s} {r['images_per_s'][v]:10.0f} img/s  {r['ms_per_step'][v]:8.3f} ms/step  host share "
              + ("n/a (CPU: host and device are one)" if share is None else f"{100 * share:.1f}%"))
    q = r["masked_over_dense"]
    print(f"  masked/dense {q['ratio']:.4f}, 95% interval [{q['low']:.4f}, {q['high']:.4f}] "
          f"(half-width {100 * q['half_width_rel']:.2f}%, {q['pairs']} pairs)")
    print(f"  topology update {r['update_ms']:.2f} ms; masks exact: {r['masks_exact']}")


if __name__ == "__main__":
    sys.exit(main())
