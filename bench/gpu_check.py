"""The GPU check: what one GPU (and the cores beside it) does with this project's training code.

    make gpu-check                      # = python bench/gpu_check.py --doc docs/gpu.md
    python bench/gpu_check.py --tiny    # a few seconds on a CPU (what the tests run)

On the first CUDA device (else the CPU), in one run:

- MCC, ResNet-50 at 224 px, bf16 mixed precision and channels_last as the GPU configs train it:
  images/s of training steps fed by the real loader (DataLoader workers over a real shard,
  pinned memory, copies on a side stream by Lightning's way of moving batches: ``non_blocking``);
  beside the same steps on one batch already on the device (the GPU's ceiling), and the loader
  alone (its workers' ceiling);
- LocSens (the paper's MLP, 1,024 positives, 6 negatives each, location sampling): training
  positives/s, bf16 mixed;
- exact evaluation (every image x tag triplet through LocSens): triplets/s in bf16 and fp32.

The shard is written first by the shard task from a synthetic world (``data/bench``). ``--doc``
writes the table into docs/gpu.md's gpu-check block, only when a GPU was measured. On an H100 the
whole run is meant to take well under 8 minutes (most of it the shard, once).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loader_throughput import real_shard  # noqa: E402
from locsens_throughput import _sync, training_rate  # noqa: E402

from common.markdown import table as md_table  # noqa: E402
from common.markdown import write_block  # noqa: E402
from training.data.shards import ShardStream, loader_workers  # noqa: E402
from training.evaluate.locsens import autocast, exact_tags  # noqa: E402
from training.models.locsens import LocSensNet  # noqa: E402
from training.models.mcc import MCC  # noqa: E402


def _timed(fn, steps: int, device: torch.device, units: int) -> float:
    """Units per second of ``steps`` calls of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return steps * units / (time.perf_counter() - t0)


def mcc_rates(shards: Path, device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Training images/s fed by the loader, on a batch already on the device, and the loader alone."""
    precision = "bf16" if device.type == "cuda" else "32"
    model = MCC(num_tags=1000, backbone={"name": args.backbone, "pretrained": False},
                optimizer=None, channels_last=True).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    stream = ShardStream(shards, "train", batch_size=args.batch, crop=args.crop, train=True, shuffle=True, seed=1)
    workers = args.workers if args.workers is not None else loader_workers(None, 1)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, **({"prefetch_factor": 4} if workers else {}))

    def on_device(batch):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def train(batch):
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = model.compute_loss(batch)
        loss.backward()
        opt.step()

    def batches():
        while True:
            yield from loader

    fixed = on_device(next(iter(loader)))
    rates = {"ceiling": _timed(lambda: train(fixed), args.steps, device, args.batch)}
    feed = batches()
    rates["loader_only"] = _timed(lambda: next(feed), args.steps, device, args.batch)
    feed = batches()
    rates["fed"] = _timed(lambda: train(on_device(next(feed))), args.steps, device, args.batch)
    rates["workers"] = workers
    return rates


def eval_rates(device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """Exact tagging's triplets/s (images x tags through the MLP) in bf16 mixed and in fp32."""
    net = LocSensNet(hidden=args.hidden).to(device).eval() if args.hidden else LocSensNet().to(device).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.eval_images, 300, generator=gen).to(device)
    loc = torch.rand(args.eval_images, 2, generator=gen).to(device)
    tags = torch.randn(args.eval_tags, 300, generator=gen).to(device)
    out = {}
    for precision in ("bf16", "32"):
        def score():
            exact_tags(net, images, loc, tags, 10, args.pairs, [None], None, precision)
        out[precision] = _timed(score, max(1, args.steps // 4), device, args.eval_images * args.eval_tags)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small sizes: a CPU run of a few seconds (the tests')")
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--doc", type=Path, default=None, help="write the table into this page (GPU runs only)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: the cores, less one)")
    args = ap.parse_args()
    tiny = dict(backbone="resnet18", crop=32, batch=8, steps=3, images=48, source=96, hidden=[64, 32],
                positives=64, eval_images=8, eval_tags=512, pairs=4096)
    full = dict(backbone="resnet50", crop=224, batch=256, steps=40, images=4096, source=500, hidden=None,
                positives=1024, eval_images=64, eval_tags=100_000, pairs=1 << 22)
    for k, v in (tiny if args.tiny else full).items():
        setattr(args, k, v)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    t0 = time.perf_counter()
    shards = real_shard(args.work.resolve(), args.images, args.source, short_side=max(args.crop, 64 if args.tiny else 300))
    mcc = mcc_rates(shards, device, args)
    positives = training_rate(max(2, args.steps // 2), args.positives, 1000, pool=args.positives, device=str(device),
                              precision="bf16" if device.type == "cuda" else "32", hidden=args.hidden)
    evaluation = eval_rates(device, args)
    rows = [
        [f"MCC {args.backbone} at {args.crop} px, fed by the loader ({mcc['workers']} workers)", f"{mcc['fed']:,.0f}",
         "images/s", f"{mcc['fed'] / mcc['ceiling']:.2f} of the ceiling"],
        ["MCC on a batch already on the device (the ceiling)", f"{mcc['ceiling']:,.0f}", "images/s", "1.00"],
        ["the loader alone", f"{mcc['loader_only']:,.0f}", "images/s", f"{mcc['loader_only'] / mcc['ceiling']:.2f}"],
        [f"LocSens training ({args.positives} positives a step)", f"{positives:,.0f}", "positives/s", ""],
        ["exact evaluation, bf16", f"{evaluation['bf16']:,.0f}", "triplets/s",
         f"{evaluation['bf16'] / evaluation['32']:.2f}x fp32"],
        ["exact evaluation, fp32", f"{evaluation['32']:,.0f}", "triplets/s", "1.00x"],
    ]
    text = (f"{name}, torch {torch.__version__}; batch {args.batch}, {args.steps} steps after 2 warm-up; "
            f"{time.perf_counter() - t0:.0f} s in all.\n\n" + md_table(["what", "rate", "unit", "against"], rows))
    print(text)
    if args.doc:
        if device.type == "cuda" and not args.tiny:
            write_block(args.doc, "gpu-check", text, " ".join(["python bench/gpu_check.py", *sys.argv[1:]]))
        else:
            print(f"(not written to {args.doc}: no GPU was measured)")


if __name__ == "__main__":
    main()
