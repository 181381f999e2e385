#!/usr/bin/env python
"""Pretraining throughput in image pairs per second: the model step alone and the full loop with the loader.

    python pretrain/bench.py                                 # CPU defaults: R50, 64 px, batch 32, K 4096
    python pretrain/bench.py --compare lightly --json        # beside lightly's MoCo v2, A B A B ..., ratio
    python pretrain/bench.py --device cuda --image-size 224 --batch-size 256 --moco-k 65536 \\
        --precision bf16 --channels-last --modes step loop --data /data/imagenet
    python pretrain/bench.py --modes workers --image-size 224 --source-size 448 --augment-on device \
        --compare lightly                                    # pairs/s one loader worker delivers for a GPU

One line per (mode, precision, implementation); with --json one JSON object per line. Warm-up steps are
not timed; each implementation runs in a process of its own, timed in alternating rounds. Loop mode reads
DATA_DIR/train (default: a generated imagenet-mini of --images images in a temporary folder). Keep the machine
otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mocoeval.pretrain.config import AUGMENT_ON, LOADER_PRIORITY
from mocoeval.runtime.errors import UserError, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-a", "--arch", default="resnet50", help="torchvision ResNet (default resnet50)")
    p.add_argument("--image-size", type=int, default=64, help="crop size (default 64)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="batch (default 32)")
    p.add_argument("--moco-k", type=int, default=4096, help="queue size (default 4096)")
    p.add_argument("--moco-m", type=float, default=0.999, help="key encoder momentum (default 0.999)")
    p.add_argument("--moco-t", type=float, default=0.2, help="temperature (default 0.2)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument(
        "--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"], help="one or more (default fp32)"
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile our encoders, as train_moco.py --compile (warm-up then includes compiling)",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=("step", "loop", "loader", "workers"),
        default=["step", "loop"],
        help="step: model step on an in-memory batch; loop: data loader + step; loader: the loader alone, up to "
        "the views on the device (with --workers 0: its cost on one core); workers: one loader worker's share "
        "alone, single-threaded as a worker runs (pairs/s per worker; --workers ignored) (default step loop)",
    )
    p.add_argument("--steps", type=int, default=6, help="timed steps per round (default 6)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per implementation (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("-j", "--workers", type=int, default=2, help="loader workers in loop mode (default 2)")
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="ImageFolder root with train/ for loop mode (default: generate imagenet-mini)",
    )
    p.add_argument("--images", type=int, default=400, help="images to generate when --data is not given")
    p.add_argument(
        "--source-size",
        type=int,
        default=0,
        metavar="PX",
        help="side of the generated images, 16-512 (default 0: max(--image-size, 64); ImageNet's photos are "
        "~400x350 px, and decoding costs more the larger they are)",
    )
    p.add_argument(
        "--compare",
        choices=("lightly",),
        default=None,
        help="also run lightly's MoCo v2 (pip install -e .[bench]) and add ours/lightly 'ratio'",
    )
    p.add_argument(
        "--augment-on",
        choices=AUGMENT_ON,
        default="auto",
        help="ours: where the colour augmentations run, as train_moco.py --augment-on (default auto: the device "
        "on CUDA, the loader's workers on CPU)",
    )
    p.add_argument(
        "--loader-priority",
        choices=LOADER_PRIORITY,
        default="auto",
        help="ours: the loader workers' CPU scheduling, as train_moco.py --loader-priority (default auto: idle on "
        "CPU, normal on CUDA; lightly's workers run at normal priority, as its example ships)",
    )
    p.add_argument(
        "--bn-splits",
        type=int,
        default=0,
        metavar="S",
        help="ours: BN groups per batch, as train_moco.py --bn-splits (default 0: its default, 2 for one process: "
        "the shuffle-BN emulation; lightly's MoCo example has no shuffle BN, so 1 compares equal work)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def _line(r: dict) -> str:
    ratio = f"  ours/lightly {r['ratio']:.2f}" if "ratio" in r else ""
    mem = "peak GPU mem" if r["device"].startswith("cuda") else "peak RSS"
    return (
        f"{r['impl']:8s} {r['mode']:6s} {r['arch']} {r['image_size']}px b{r['batch_size']} K{r['moco_k']} "
        f"{r['device']} {r['precision']}{' CL' if r['channels_last'] else ''}"
        f"{' compiled' if r['compile'] else ''} threads {r['threads']}"
        f"{' workers ' + str(r['workers']) if r['mode'] in ('loop', 'loader') else ''}"
        f"{' (idle priority)' if r['idle_workers'] else ''}"
        f"{' colour on device' if r['colour_on_device'] else ''}: {r['pairs_per_s']:7.1f} pairs/s "
        f"({r['steps_timed']} steps)  {mem} {r['peak_memory_mib']:.0f} MiB{ratio}"
    )


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.steps, args.rounds, args.batch_size, args.image_size) < 1 or args.warmup < 0:
        raise UserError("--steps, --rounds, --batch-size and --image-size must be positive, --warmup >= 0")
    if args.source_size and not 16 <= args.source_size <= 512:
        raise UserError(
            f"--source-size must be 0 or between 16 and 512 (the generator's range), got {args.source_size}"
        )
    if args.bn_splits < 0 or (args.bn_splits and args.batch_size % args.bn_splits):
        raise UserError(f"--bn-splits {args.bn_splits} must be 0 or divide --batch-size {args.batch_size}")
    if args.moco_k % args.batch_size:
        raise UserError(f"--moco-k {args.moco_k} must be a multiple of --batch-size {args.batch_size}")
    impls = ("ours",)
    if args.compare == "lightly":
        try:
            import lightly  # noqa: F401
        except ImportError:
            raise UserError("--compare lightly needs the lightly package: pip install -e .[bench]") from None
        impls = ("ours", "lightly")

    import torch

    from mocoeval.pretrain.throughput import BenchConfig, benchmark

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here")
    with tempfile.TemporaryDirectory(prefix="mocoeval-bench-") as tmp:
        data = args.data
        if {"loop", "loader", "workers"} & set(args.modes) and data is None:
            from mocoeval.data.make_mini_data import generate

            per_class = max(1, -(-args.images // 20))
            generate(
                tmp,
                seed=0,
                workers=args.workers or 1,
                voc2007_trainval=4,
                voc2007_test=2,
                voc2012_trainval=4,
                imagenet_train_per_class=per_class,
                imagenet_val_per_class=1,
                imagenet_size=args.source_size or max(args.image_size, 64),
            )
            data = tmp + "/imagenet-mini"
        elif data is not None and not (Path(data) / "train").is_dir():
            raise UserError(f"--data {data}: expected an ImageFolder root holding train/<class>/<image>")
        for mode in args.modes:
            for precision in args.precision:
                cfg = BenchConfig(
                    arch=args.arch,
                    image_size=args.image_size,
                    batch_size=args.batch_size,
                    moco_k=args.moco_k,
                    moco_m=args.moco_m,
                    moco_t=args.moco_t,
                    device=args.device,
                    precision=precision,
                    channels_last=args.channels_last,
                    compile=args.compile,
                    mode=mode,
                    workers=args.workers,
                    data=data,
                    augment_on=args.augment_on,
                    loader_priority=args.loader_priority,
                    bn_splits=args.bn_splits,
                )
                for r in benchmark(cfg, impls, steps=args.steps, warmup=args.warmup, rounds=args.rounds):
                    print(json.dumps(r) if args.json else _line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
