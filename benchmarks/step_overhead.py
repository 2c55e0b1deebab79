"""Per-step overhead of dynamic sparse training (RigL through `Masked` + `DST`) against dense training.

Both sides run the project's own loop, `suptickets.train.train_epochs`, on the same random data and
the same initial weights; the sparse side gets `masked=Masked(...)` and `topology=rule` (a
`DST`) exactly as `phases.sparse_phase` does, so every bit of masking work is inside the timed
region (the dense-gradient copy and topology update on due steps, mask_grads, optimizer step,
apply). One timed window is one call of `train_epochs` over one "epoch" of k
steps (a data set of 128·k samples); the per-epoch validation pass runs on 8 samples only, so it is
negligible next to k training steps (it is the same on both sides anyway). Dense and masked windows
alternate (order swapped every repeat) after a warm-up; the figures are medians.

When a window is at least `update_frequency` steps long (the MLP default: k = 100), the topology
update falls inside the windows at its real rate. When it is shorter (ResNet-32, close to a second
per step here), the windows avoid due steps and the update is timed on its own (median of a few calls
after a real backward) and added as update / update_frequency: "amortised".

`--mode step` times the loop's own step function (`train.train_step`: zero_grad, forward, loss,
backward, mask_grads, optimizer step, apply, topology update when due) step by step, interleaving
dense and masked.

Also printed: a breakdown of the masking work measured in isolation (mask_grads, apply, the
topology update) and the ratio it predicts, which is much less sensitive to a busy machine; the
isolated calls find their tensors in cache, so it is a lower bound (in the loop, mask_grads + apply
cost about twice as much).

On a machine shared with other processes, 2 OpenMP threads spin-waiting for each other make the
timings swing by 10x and more; `OMP_WAIT_POLICY=PASSIVE` in the environment (or `--threads 1`) keeps
them steady. The script warns when the load average exceeds the core count.

    python benchmarks/step_overhead.py                       # MLP + ResNet-32, 2 threads
    python benchmarks/step_overhead.py --models mlp --repeats 9 --json step_overhead.json
    python benchmarks/step_overhead.py --profile             # torch.profiler table of masked steps
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

from _common import add_json, add_threads, busy_warning, median, parser  # first: the environment defaults, before torch loads

import torch  # noqa: E402
import torch.nn.functional as F

from suptickets.batches import Batches
from suptickets.models import build_model
from suptickets.runtime import deterministic_kernels
from suptickets.sparsity.engine import DST, Masked, init_masks
from suptickets.train import set_lr, train_epochs, train_step


TARGET = 1.10
MODELS = {  # name -> (input shape, classes, mean, std, augmentation (padding, flip))
    "mlp": ((1, 28, 28), 10, [0.286], [0.353], (0, False)),
    "resnet32": ((3, 32, 32), 10, [0.491, 0.482, 0.447], [0.247, 0.243, 0.262], (4, True)),
}


class Side:
    """One model + optimizer (+ masks and the DST rule for the sparse side)."""

    def __init__(self, name: str, init: dict, sparse: bool, args):
        shape, classes = MODELS[name][:2]
        self.model = build_model(name, shape, classes)
        self.model.load_state_dict(init)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        self.masked = self.rule = None
        if sparse:
            init_masks(self.model, args.density, "erk", False, torch.Generator().manual_seed(0))
            self.masked = Masked(self.model, self.opt)
            # the default run's schedule: 30 epochs of 421 steps (Fashion-MNIST, batch 128)
            cfg = {"method": "rigl", "density": args.density, "update_frequency": args.update_frequency,
                   "prune_rate": 0.5, "prune_rate_decay": "constant", "stop_fraction": 1.0, "repicked": "keep"}
            self.rule = DST.from_config(cfg, steps_per_epoch=421, epochs=30, budget_epochs=30, seed=0)
        self.lr = args.lr

    def window(self, train: Batches, val: Batches, epoch: int, step: int) -> float:
        """Seconds for one train_epochs call over one epoch of `train`."""
        t0 = time.perf_counter()
        train_epochs(self.model, self.opt, train, val, epochs=range(epoch, epoch + 1), step=step,
                     lr_at=lambda e, i: self.lr, masked=self.masked, topology=self.rule, stage="bench")
        return time.perf_counter() - t0

    def step(self, x, y, step: int) -> float:
        """One step exactly as the loop takes it; seconds."""
        t0 = time.perf_counter()
        set_lr(self.opt, self.lr)
        train_step(self.model, self.opt, x, y, step=step, masked=self.masked, topology=self.rule)
        return time.perf_counter() - t0


def fresh_grads(side: Side, x, y) -> None:
    side.opt.zero_grad(set_to_none=True)
    F.cross_entropy(side.model(x), y).backward()


def timed(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return median(ts)


def breakdown(side: Side, x, y, calls: int, update_calls: int, due_step: int) -> dict:
    """Masking work measured in isolation on the sparse side, seconds (medians)."""
    fresh_grads(side, x, y)
    out = {"mask_grads": timed(side.masked.mask_grads, calls), "apply": timed(side.masked.apply, calls),
           "optimizer_step": timed(side.opt.step, calls)}
    fresh_grads(side, x, y)
    out["update"] = timed(lambda: side.rule.update(side.masked, due_step, side.masked.dense_grads()), update_calls)
    side.masked.mask_grads()
    side.opt.step()
    side.masked.apply()
    return out


def bench_model(name: str, args) -> dict:
    shape, classes, mean, std, (padding, flip) = MODELS[name]
    big = name != "mlp"
    k = args.resnet_steps if big else args.mlp_steps
    repeats = args.resnet_repeats if big else args.repeats
    freq = args.update_frequency
    g = torch.Generator().manual_seed(0)
    n = 128 * k
    x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=g)
    train = Batches(x, y, mean, std, batch_size=128, shuffle=True, drop_last=True, seed=0, padding=padding, flip=flip)
    warm = Batches(x[:128], y[:128], mean, std, batch_size=128, shuffle=True, drop_last=True, seed=0,
                   padding=padding, flip=flip)
    val = Batches(x[:8], y[:8], mean, std, batch_size=8)

    torch.manual_seed(0)
    init = copy.deepcopy(build_model(name, shape, classes).state_dict())
    dense = Side(name, init, False, args)
    sparse = Side(name, init, True, args)
    natural = k >= freq  # windows contain due steps at their real rate
    if natural and k % freq:
        print(f"  note: {k} steps per window is not a multiple of update_frequency {freq}")

    # warm-up (first calls allocate, JIT the BN kernels, build optimizer state)
    dense.window(warm, val, 0, 1)
    sparse.window(warm, val, 0, 1)

    d_times, m_times = [], []
    xb, yb = next(iter(train.epoch(0)))
    if args.mode == "loop":
        for r in range(repeats):
            # sparse windows start at a multiple of freq (one due step each when k == freq),
            # or just after one (no due step) when k < freq
            start = freq * (r + 1) + (0 if natural else 1)
            order = [(dense, d_times), (sparse, m_times)]
            for side, out in (order if r % 2 == 0 else order[::-1]):
                out.append(side.window(train, val, r + 1, start) / k)
    else:
        batches = list(train.epoch(1))
        steps = k * repeats
        s0 = freq + (0 if natural else 1)
        for j in range(steps):
            xj, yj = batches[j % len(batches)]
            step = s0 + j
            if not natural and step % freq == 0:
                step += 1  # keep due steps out; they are amortised below
            pair = [(dense, d_times), (sparse, m_times)]
            for side, out in (pair if j % 2 == 0 else pair[::-1]):
                out.append(side.step(xj, yj, step))

    parts = breakdown(sparse, xb, yb, calls=args.calls if not big else max(5, args.calls // 4),
                      update_calls=args.update_calls, due_step=freq * 10)
    dense_ms = median(d_times) * 1e3
    masked_ms = median(m_times) * 1e3
    if args.mode == "step":  # per-step medians drop the due step: always amortise
        natural = False
    amortised = not natural
    if amortised:
        masked_ms += parts["update"] * 1e3 / freq
    masking_ms = (parts["mask_grads"] + parts["apply"] + parts["update"] / freq) * 1e3
    if args.mode == "step":  # show and pair per-window medians of the per-step times
        d_times = [median(d_times[i:i + k]) for i in range(0, len(d_times), k)]
        m_times = [median(m_times[i:i + k]) for i in range(0, len(m_times), k)]
    paired = [m / d for d, m in zip(d_times, m_times)]
    res = {
        "model": name, "mode": args.mode, "batch": 128, "steps_per_window": k, "repeats": repeats,
        "update_frequency": freq, "update_in_windows": natural, "update_amortised": amortised,
        "dense_ms_per_step": dense_ms, "masked_ms_per_step": masked_ms, "ratio": masked_ms / dense_ms,
        "paired_ratio_median": median(paired) if not amortised else median(paired) + parts["update"] / freq / median(d_times),
        "dense_ms_all": [t * 1e3 for t in d_times], "masked_ms_all": [t * 1e3 for t in m_times],
        "isolated_ms": {k_: v * 1e3 for k_, v in parts.items()},
        "masking_ms_per_step": masking_ms, "predicted_ratio": 1 + masking_ms / dense_ms,
        "target": TARGET,
    }
    return res


def report(res: dict) -> None:
    how = "train_epochs windows" if res["mode"] == "loop" else "per-step function (loop body)"
    upd = ("topology update inside the windows" if res["update_in_windows"] else
           f"topology update timed alone, amortised /{res['update_frequency']}")
    print(f"{res['model']}: {how}, {res['steps_per_window']} steps x {res['repeats']} repeats, batch 128; {upd}")
    print(f"  dense   {res['dense_ms_per_step']:9.2f} ms/step   (all: {', '.join(f'{t:.1f}' for t in res['dense_ms_all'])})")
    excl = ", before the amortised update" if res["update_amortised"] else ""
    print(f"  masked  {res['masked_ms_per_step']:9.2f} ms/step   (all{excl}: "
          f"{', '.join(f'{t:.1f}' for t in res['masked_ms_all'])})")
    ok = "meets" if res["ratio"] <= TARGET else "MISSES"
    print(f"  ratio masked/dense {res['ratio']:.3f} (median of paired windows {res['paired_ratio_median']:.3f}); "
          f"target <= {TARGET}: {ok}")
    iso = res["isolated_ms"]
    print(f"  isolated: mask_grads {iso['mask_grads']:.3f} ms, apply {iso['apply']:.3f} ms, "
          f"optimizer step {iso['optimizer_step']:.3f} ms, topology update {iso['update']:.1f} ms "
          f"(/{res['update_frequency']} = {iso['update'] / res['update_frequency']:.3f} ms/step)")
    print(f"  masking work {res['masking_ms_per_step']:.3f} ms/step -> predicted ratio {res['predicted_ratio']:.3f} "
          f"(isolated calls run cache-warm: a lower bound)")


def profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile as prof

    name = args.models[0]
    shape, classes, mean, std, (padding, flip) = MODELS[name]
    k = args.update_frequency if name == "mlp" else 2
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (128 * k, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (128 * k,), generator=g)
    train = Batches(x, y, mean, std, batch_size=128, shuffle=True, drop_last=True, seed=0, padding=padding, flip=flip)
    val = Batches(x[:8], y[:8], mean, std, batch_size=8)
    torch.manual_seed(0)
    init = build_model(name, shape, classes).state_dict()
    for sparse in (False, True):
        side = Side(name, init, sparse, args)
        side.window(train, val, 0, 1)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            side.window(train, val, 1, args.update_frequency)
        print(f"== {name} {'masked' if sparse else 'dense'}: {k} steps")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main(argv=None) -> int:
    ap = parser(__doc__, costs=("the default (MLP and ResNet-32, 2 threads) takes well under a minute on a quiet 2-core "
                                "CPU (15 s of CPU time; 1m43s of wall time measured beside other jobs), most of it the "
                                "ResNet-32 steps (about 0.5 s each); --models mlp alone takes seconds."))
    ap.add_argument("--models", nargs="+", default=["mlp", "resnet32"], choices=list(MODELS),
                    help="architectures to time: mlp (Fashion-MNIST MLP), resnet32 (CIFAR-shaped data) "
                         "(default: both)")
    ap.add_argument("--mode", choices=["loop", "step"], default="loop",
                    help="loop: time train_epochs windows (default); step: a per-step function doing the loop body")
    add_threads(ap, 2)
    ap.add_argument("--density", type=float, default=0.05, help="RigL density, ERK (default %(default)s)")
    ap.add_argument("--update-frequency", type=int, default=100,
                    help="steps between topology updates (default %(default)s)")
    ap.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the timed steps (default %(default)s)")
    ap.add_argument("--mlp-steps", type=int, default=100, help="MLP steps per timed window (default 100 = one update)")
    ap.add_argument("--repeats", type=int, default=5, help="timed windows per side for the MLP (default %(default)s)")
    ap.add_argument("--resnet-steps", type=int, default=2, help="ResNet-32 steps per timed window (default %(default)s)")
    ap.add_argument("--resnet-repeats", type=int, default=3,
                    help="timed windows per side for ResNet-32 (default %(default)s)")
    ap.add_argument("--calls", type=int, default=40,
                    help="calls per isolated timing of mask_grads / apply (default %(default)s)")
    ap.add_argument("--update-calls", type=int, default=3,
                    help="calls per isolated timing of the topology update (default %(default)s)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables of one window instead")
    ap.add_argument("--profile-rows", type=int, default=15, help="rows per profiler table (default %(default)s)")
    add_json(ap)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    deterministic_kernels(warn_only=False)  # as runtime.setup does for the stages
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), RigL density {args.density} ERK, "
          f"update every {args.update_frequency} steps")
    busy_warning(args.threads)
    if args.profile:
        profile(args)
        return 0
    t0 = time.perf_counter()
    results = []
    for name in args.models:
        res = bench_model(name, args)
        report(res)
        results.append(res)
    total = time.perf_counter() - t0
    print(f"total {total:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": results,
                                         "seconds": total}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
