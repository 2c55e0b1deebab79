"""Training throughput on a GPU: dense vs masked (`Masked`, foreach), GPU-resident data vs a DataLoader.

For CIFAR ResNet-50 (100 classes) and ResNet-32 (10 classes) at batch 128, in images/s:

- dense, GPU-resident data: synthetic CIFAR-shaped uint8 images held on the GPU and fed by the
  project's `suptickets.batches.Batches` (shuffle, then random crop with padding 4 + horizontal flip by
  `suptickets.batches.augment` and normalisation, all on the GPU);
- masked, GPU-resident data: the same with RigL masks at density 0.05 (ERK), `Masked.mask_grads`
  before and `Masked.apply` after the optimizer step (two `torch._foreach_mul_`), timed without
  topology updates; the update (`DST.update` on a due step, with the dense-gradient copy) is timed on its own and also shown
  amortised over `--update-frequency` steps;
- dense, DataLoader: the same model fed by `torch.utils.data.DataLoader` (`--workers` workers, pinned
  memory) over an in-memory data set of PIL images with torchvision's RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize.

All under bf16 autocast with channels_last (each can be switched off), eager or `--compile`. Windows of
`--steps` steps alternate between the variants after a warm-up; medians reported. Model FLOPs
utilisation = images/s x 3 x forward FLOPs per image (Conv2d + Linear, dense, `models.forward_flops`)
/ `--peak-tflops` (989: H100 SXM bf16 dense; use the figure of the card it prints).

Needs only torch, torchvision (with Pillow), numpy and the suptickets package (taken from ../src when
it is not installed): modules that suptickets imports at the top but this script never uses (pandas,
safetensors, tqdm) are replaced by inert stand-ins when they are not installed.

    python benchmarks/gpu_throughput.py                       # on a CUDA machine
    python benchmarks/gpu_throughput.py --compile --json gpu.json
    python benchmarks/gpu_throughput.py --dry-run             # 2 steps of everything on CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import _common  # first: the environment defaults, before torch loads; this checkout's src/ on sys.path

CIFAR = {"resnet50": (100, [0.507, 0.487, 0.441], [0.267, 0.256, 0.276]),
         "resnet32": (10, [0.491, 0.482, 0.447], [0.247, 0.243, 0.262])}
# imported at module level by some suptickets modules (.train: tqdm), never used on this script's path
OPTIONAL = ("pandas", "safetensors", "tqdm")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def stub_missing_modules() -> list[str]:
    """Put inert stand-ins in sys.modules for the OPTIONAL modules that are not installed."""

    def unavailable(qualname):
        def call(*args, **kwargs):
            raise ImportError(f"{qualname} is not installed on this machine (stand-in from gpu_throughput.py)")
        return call

    def module(name):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__path__ = []  # a package, so `from safetensors.torch import ...` resolves

        def getattr_(attr):
            if attr.startswith("__"):  # keep inspect / pickle / importlib probing ordinary
                raise AttributeError(attr)
            return unavailable(f"{name}.{attr}")

        mod.__getattr__ = getattr_
        return mod

    stubbed = []
    for name in OPTIONAL:
        if not _installed(name):
            sys.modules[name] = module(name)
            stubbed.append(name)
    if "safetensors" in stubbed:
        sys.modules["safetensors.torch"] = module("safetensors.torch")
    if "tqdm" in stubbed:  # the training loop's progress bar: a pass-through
        sys.modules["tqdm"].tqdm = lambda iterable=None, *a, **k: iterable
    return stubbed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_common.cost("per model 3 variants x (10 warm-up + 3 x 30 timed) steps at batch 128, "
               "600 steps for the default two models, plus a synthetic data set of 50,000 images held twice "
               "(on the GPU and as PIL images): 45 s on one H200 (eager, measured 2026-11-30), much longer with --compile. "
               "--dry-run runs on a CPU at tiny sizes."))
    ap.add_argument("--models", nargs="+", default=["resnet50", "resnet32"], choices=list(CIFAR),
                    help="CIFAR models to time (default: both)")
    ap.add_argument("--batch", type=int, default=128, help="images per step (default %(default)s)")
    ap.add_argument("--steps", type=int, default=30, help="steps per timed window (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up steps per variant (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per variant, median reported (default %(default)s)")
    ap.add_argument("--dataset-size", type=int, default=50_000, help="images in the synthetic data set (default %(default)s)")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers (default %(default)s)")
    ap.add_argument("--density", type=float, default=0.05, help="RigL density of the masked variant, ERK (default %(default)s)")
    ap.add_argument("--update-frequency", type=int, default=100,
                    help="steps between topology updates, to amortise the timed update over (default %(default)s)")
    ap.add_argument("--update-calls", type=int, default=3, help="timed topology updates, median (default %(default)s)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak of the card for MFU (989: H100 SXM bf16 dense)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 instead of bf16 autocast")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="keep the default (NCHW) memory format instead of channels_last")
    ap.add_argument("--dry-run", action="store_true",
                    help="run 2 steps of everything on CPU at tiny sizes (checks the code paths, measures nothing)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (dry run; default %(default)s)")
    ap.add_argument("--image-size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    args = ap.parse_args(argv)

    import torch
    import torchvision  # noqa: F401  (imports torch._dynamo, which probes installed packages)

    stubbed = stub_missing_modules()

    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
        args.batch, args.steps, args.warmup, args.repeats = 4, 2, 0, 1
        args.dataset_size, args.update_calls, args.image_size = 16, 1, 8
        args.workers = min(args.workers, 2)
        args.compile = False
        name = "CPU (dry run)"
    else:
        if not torch.cuda.is_available():
            print("gpu_throughput.py: CUDA is not available on this machine; run it on a GPU "
                  "(or use --dry-run to check the code paths on CPU).", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)

    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}, bf16 autocast {args.bf16}, "
          f"channels_last {args.channels_last}, compile {args.compile}; peak {args.peak_tflops} TFLOPS")
    if stubbed:
        print(f"not installed here, replaced by inert stand-ins: {', '.join(stubbed)}")
    results = [bench_model(m, args, device) for m in args.models]
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "dry_run": args.dry_run,
                                         "batch": args.batch, "bf16": args.bf16, "channels_last": args.channels_last,
                                         "compile": args.compile, "peak_tflops": args.peak_tflops,
                                         "stubbed_modules": stubbed, "results": results}, indent=2) + "\n")
    return 0


def bench_model(model_name: str, args, device) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from suptickets.models import build_model, forward_flops
    from suptickets.sparsity.engine import DST, Masked, init_masks
    from suptickets.batches import Batches
    from suptickets.train import Speed
    from suptickets.train import train_step as loop_step

    classes, mean, std = CIFAR[model_name]
    cuda = device.type == "cuda"
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # data: uint8 [N, 3, 32, 32] on the device, and the same images as PIL for the DataLoader
    g = torch.Generator().manual_seed(0)
    size = args.image_size
    shape = (3, size, size)
    x = torch.randint(0, 256, (args.dataset_size, *shape), generator=g, dtype=torch.uint8)
    y = torch.randint(0, classes, (args.dataset_size,), generator=g)
    resident = Batches(x.to(device), y.to(device), mean, std, batch_size=args.batch, shuffle=True,
                       drop_last=True, seed=0, padding=4, flip=True)

    class PILSet(Dataset):
        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.transform(self.images[i]), self.labels[i]

    hwc = x.permute(0, 2, 3, 1).numpy()
    pil = PILSet([Image.fromarray(np.ascontiguousarray(a)) for a in hwc], y.tolist(), transforms.Compose([
        transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std)]))
    loader = DataLoader(pil, batch_size=args.batch, shuffle=True, num_workers=args.workers, pin_memory=cuda,
                        drop_last=True, persistent_workers=args.workers > 0)

    def endless(make_epoch):
        epoch = 0
        while True:
            yield from make_epoch(epoch)
            epoch += 1

    torch.manual_seed(0)
    base = build_model(model_name, shape, classes)
    fwd_flops = forward_flops(base, shape)
    train_flops_per_image = 3 * fwd_flops

    def make(sparse: bool):
        model = build_model(model_name, shape, classes)
        model.load_state_dict(base.state_dict())
        model = model.to(device=device, memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        masked = rule = None
        if sparse:
            init_masks(model, args.density, "erk", False, torch.Generator().manual_seed(0))
            model = model.to(memory_format=fmt)  # mask buffers like the weights
            masked = Masked(model, opt)
            rule = DST(method="rigl", update_frequency=args.update_frequency, prune_rate=0.5,
                       prune_rate_decay="cosine", total_steps=10**7, stop_step=10**7, seed=0,
                       target_density=args.density)
        net = torch.compile(model) if args.compile else model
        return {"model": model, "net": net, "opt": opt, "masked": masked, "rule": rule}

    speed = Speed(amp="bf16" if args.bf16 else "none", channels_last=args.channels_last)

    def train_step(side, xb, yb, step):  # the loop's own step (train.train_step)
        loop_step(side["net"], side["opt"], xb, yb, step=step, masked=side["masked"], topology=side["rule"],
                  speed=speed)

    dense, sparse = make(False), make(True)
    freq = args.update_frequency

    def resident_batches():
        return endless(resident.epoch)

    def loader_batches():
        for xb, yb in endless(lambda e: iter(loader)):
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    variants = {  # name -> [side, batch iterator, step counter, times]
        "dense_resident": [dense, resident_batches(), 1, []],
        "masked_resident": [sparse, resident_batches(), 1, []],
        "dense_dataloader": [dense, loader_batches(), 1, []],
    }

    def window(v, n):
        side, it, step, _ = variants[v]
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            if step % freq == 0:
                step += 1  # no topology update inside timed windows; timed on its own below
            xb, yb = next(it)
            train_step(side, xb, yb, step)
            step += 1
        sync()
        variants[v][2] = step
        return time.perf_counter() - t0

    t_start = time.perf_counter()
    for v in variants:
        if args.warmup:
            window(v, args.warmup)
    names = list(variants)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            variants[v][3].append(window(v, args.steps))

    # the topology update, on fresh gradients, on its own
    xb, yb = next(variants["masked_resident"][1])
    update_times = []
    for _ in range(args.update_calls):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = F.cross_entropy(sparse["net"](xb.contiguous(memory_format=fmt)), yb)
        sparse["opt"].zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t0 = time.perf_counter()
        sparse["rule"].update(sparse["masked"], freq * 10, sparse["masked"].dense_grads())
        sync()
        update_times.append(time.perf_counter() - t0)
        sparse["masked"].mask_grads()
        sparse["opt"].step()
        sparse["masked"].apply()
    update_s = _common.median(update_times)
    # host-to-device copies inside a masked step (goal: none; normalisation constants, augmentation
    # randomness and the data live on the device), counted by the CUDA profiler over 10 steps
    h2d_per_step = None
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            window("masked_resident", 10)
        h2d_per_step = sum(e.count for e in prof.key_averages() if "HtoD" in e.key) / 10
    # masks still exact after all that
    exact = all(bool((w[m == 0] == 0).all()) for w, m in zip(sparse["masked"].weights, sparse["masked"].masks))

    ips = {v: args.batch * args.steps / _common.median(t[3]) for v, t in variants.items()}
    step_masked = _common.median(variants["masked_resident"][3]) / args.steps
    ips["masked_resident_with_updates"] = args.batch / (step_masked + update_s / freq)

    def mfu(v):
        return ips[v] * train_flops_per_image / (args.peak_tflops * 1e12)

    res = {
        "model": model_name, "classes": classes, "forward_gflops_per_image": fwd_flops / 1e9,
        "images_per_s": ips, "window_s": {v: t[3] for v, t in variants.items()},
        "mfu": {v: mfu(v) for v in ips}, "update_ms": update_s * 1e3, "update_frequency": freq,
        "masked_over_dense": ips["masked_resident"] / ips["dense_resident"],
        "masked_with_updates_over_dense": ips["masked_resident_with_updates"] / ips["dense_resident"],
        "resident_over_dataloader": ips["dense_resident"] / ips["dense_dataloader"],
        "masks_exact": exact, "h2d_copies_per_masked_step": h2d_per_step, "seconds": time.perf_counter() - t_start,
    }
    print(f"{model_name} ({classes} classes): {fwd_flops / 1e9:.3f} GFLOP forward per image, "
          f"{args.steps} steps x {args.repeats} windows per variant")
    for v, label in (("dense_resident", "dense,  GPU-resident data     "),
                     ("masked_resident", "masked, GPU-resident data     "),
                     ("masked_resident_with_updates", f"masked + update every {freq:<4d}    "),
                     ("dense_dataloader", f"dense,  DataLoader ({args.workers} workers)  ")):
        print(f"  {label} {ips[v]:10.0f} img/s   MFU {100 * mfu(v):5.1f}%")
    print(f"  topology update {update_s * 1e3:.1f} ms; masks exact: {exact}; host-to-device copies per masked "
          f"step: {'not measured (CPU)' if h2d_per_step is None else h2d_per_step}")
    print(f"  ratios: masked/dense {res['masked_over_dense']:.3f} (with updates "
          f"{res['masked_with_updates_over_dense']:.3f}); GPU-resident/DataLoader {res['resident_over_dataloader']:.2f}")
    del loader
    return res


if __name__ == "__main__":
    sys.exit(main())
