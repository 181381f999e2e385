#!/usr/bin/env python
"""Fine-tune and evaluate converted MoCo weights on VOC07+12 -> VOC07 test (Faster R-CNN R50-C4), N trials.

    python transfer/run_voc.py --weights out.pkl --trials 5

The command for both detection benchmarks: `run_coco` builds its parser and main here with the COCO texts.
"""

from __future__ import annotations

import argparse
import sys

from mocoeval.runtime.errors import cli_main
from mocoeval.transfer.detection.benchmark import BENCHMARKS  # no Detectron2 import: --help stays fast

# What the help says per benchmark; the flags and the rest of the text are shared.
TEXTS = {
    "voc": dict(
        description=__doc__.splitlines()[0],
        examples="""\
  python transfer/run_voc.py --weights moco_v2_200ep.pkl --trials 5 --num-gpus 8      # the paper's setup
  python transfer/run_voc.py --weights moco_v2_200ep.pkl --trials 5 --launcher slurm --gpus-per-job 8
  python transfer/run_voc.py --weights w.pkl --trials 2 --opts SOLVER.MAX_ITER 200      # a short check
  python transfer/run_voc.py --weights R-50.pkl --trials 5 --num-gpus 8     # the supervised row (MSRA Caffe2)""",
        batch="""\
  --opts SOLVER.IMS_PER_BATCH 8      # lr 0.01, MAX_ITER 48000, STEPS (36000, 44000), WARMUP_ITERS 200""",
        data="""\
Data: Detectron2's voc_2007_trainval, voc_2012_trainval and voc_2007_test under --dataset-root
(default: $DETECTRON2_DATASETS, else ./datasets): VOC2007/ and VOC2012/ as the VOC devkit lays them out.""",
        cost="""\
Cost (measured, full protocol config, fp32): one H100 80GB runs batch 16 at 0.91 s/iter using 74 GB,
i.e. ~6 h of training per trial (24k iterations) plus ~8 min of VOC07 test evaluation (0.1 s/image).""",
        results="metrics.json (AP50, AP, AP75)",
        dataset_root="folder holding VOC2007/ and VOC2012/",
    ),
    "coco": dict(
        description="Fine-tune and evaluate converted MoCo weights on COCO train2017 -> val2017 (Mask R-CNN R50-C4, "
        "1x or 2x), N trials.",
        examples="""\
  python transfer/run_coco.py --weights moco_v2_200ep.pkl --trials 5 --num-gpus 8     # 2x, the official config
  python transfer/run_coco.py --weights moco_v2_200ep.pkl --schedule 1x --trials 5 --launcher slurm --gpus-per-job 8
  python transfer/run_coco.py --weights w.pkl --trials 2 --opts SOLVER.MAX_ITER 200     # a short check
  python transfer/run_coco.py --weights R-50.pkl --trials 5 --num-gpus 8    # the supervised row (MSRA Caffe2)""",
        batch="""\
  --opts SOLVER.IMS_PER_BATCH 8      # 2x: lr 0.01, MAX_ITER 360000, STEPS (240000, 320000), WARMUP_ITERS 2000""",
        data="""\
Data: Detectron2's builtin coco_2017_train and coco_2017_val under --dataset-root (default:
$DETECTRON2_DATASETS, else ./datasets): coco/{train2017,val2017}/ and coco/annotations/instances_{train,val}2017.json,
checked before anything trains (the json is parsed: about half a minute for train2017).""",
        cost="""\
Cost: unmeasured here. The 2x schedule is 180k iterations at batch 16 (1x: 90k), 7.5x (3.75x) VOC's 24k
iterations at larger images (640-800 short side, VOC 480-800): at VOC's measured 0.91 s/iter on one H100
that would be ~45 h (~23 h) per trial on one GPU, plus evaluation of 5k val2017 images; an estimate, not a
measurement.""",
        results="metrics.json (box_AP, box_AP50, box_AP75, mask_AP, mask_AP50, mask_AP75)",
        dataset_root="folder holding coco/",
    ),
}

EPILOG = """\
Examples:
{examples}

Trials and seeds: trial i (1-based) runs in OUTPUT_DIR/trial_i with seed SEEDS[i-1]; the default seeds are
0, 1, ..., N-1, so `--trials 5` after `--trials 3` adds trials 4 and 5 (seeds 3 and 4) and skips 1-3.
Re-running a command skips finished trials and resumes an interrupted one from its last checkpoint
(saved every SOLVER.CHECKPOINT_PERIOD iterations and every --checkpoint-minutes of training; only
model_final.pth is kept once a trial finishes); finished metrics are never rewritten. Ctrl-C or SIGTERM
(one process per trial, not under --launcher slurm) finishes the current iteration, saves it and exits
(130 / 143), so nothing is lost; a second one stops at once. A trial run with another config, seed or weights is refused
(use another --output-dir). Results: OUTPUT_DIR/trial_i/{results}, OUTPUT_DIR/summary.{{json,csv}}
(mean, population std with ddof=0, min, max, n), one record in the results store, tables regenerated.

Batch size: SOLVER.IMS_PER_BATCH is the total over all GPUs (16 in the protocol). Changing it through
--opts applies the protocol's rule (same epochs): SOLVER.BASE_LR is scaled by batch/16 and MAX_ITER, STEPS
and WARMUP_ITERS by 16/batch, each unless --opts sets it too; the resolved values are printed and recorded.
{batch}

{data}

Scale: --num-gpus G uses Detectron2's launch (one process per GPU); one process starts no process group
(synchronised BN then is plain BN). --num-gpus G --device cpu runs G CPU processes (gloo, BN synchronised
across them): for checking the distributed path on a machine without GPUs, not for speed.
Multi-machine: run the same command on every machine with --num-machines M --machine-rank R
--dist-url tcp://HOST0:PORT and a shared --output-dir.
Slurm: --launcher slurm submits every pending trial as its own job (needs `pip install submitit`);
trials run in parallel and a job that hits its time limit is requeued and resumes.

{cost}
On CPU only tiny schedules are practical (the R50-C4 RoI head runs res5 on every proposal).
"""


def build_parser(benchmark: str = "voc") -> argparse.ArgumentParser:
    bench, text = BENCHMARKS[benchmark], TEXTS[benchmark]
    default = bench.configs[bench.default_schedule]
    p = argparse.ArgumentParser(
        prog=f"run_{benchmark}.py",
        description=text["description"],
        epilog=EPILOG.format(**text),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="PKL",
        help="converted Detectron2 R50 weights (.pkl from convert/to_d2.py), or Detectron2's MSRA "
        "Caffe2 R-50.pkl (the supervised row)",
    )
    p.add_argument(
        "--trials", type=int, default=None, metavar="N", help="number of trials (default 5, or the number of --seeds)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, metavar="S", help="one seed per trial (default 0 1 ... N-1)"
    )
    p.add_argument(
        "--config-file",
        default=None,
        metavar="YAML",
        help=f"Detectron2 config (default by the weights: {default['torchvision'].name} for converted "
        f"torchvision/MoCo weights, {default['caffe2'].name} (BGR, std 1, stride in 1x1) for "
        f"Caffe2 weights; one whose input settings contradict the weights is refused)",
    )
    if bench.schedules:
        p.add_argument(
            "--schedule",
            choices=bench.schedules,
            default=None,
            help=f"the default config's schedule (default {bench.default_schedule}, the official MoCo "
            f"config; 1x: the MoCo v1 paper's 90k iterations); not with --config-file",
        )
    p.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help=f"run directory (default: output/{benchmark}_<weights file name>)",
    )
    p.add_argument(
        "--dataset-root",
        default=None,
        metavar="DIR",
        help=f"{text['dataset_root']} (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    p.add_argument(
        "--norm",
        choices=("naiveSyncBN", "SyncBN", "BN"),
        default=None,
        help="MODEL.RESNETS.NORM (default: the config's naiveSyncBN, the official choice; SyncBN was "
        "used before Nov 2020; both are synchronised BN)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="MODEL.DEVICE (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: Detectron2's AMPTrainer (SOLVER.AMP.ENABLED True: fp16 autocast, gradient scaling; "
        "CUDA only). Not the protocol's fp32: it is part of the run's config identity, so the tables label its rows "
        "AMP",
    )
    p.add_argument(
        "--variant",
        default=None,
        metavar="NAME",
        help="variant name for the results store (default: from the .pkl's source checkpoint; "
        "'supervised' / 'random-init' for the baselines)",
    )
    dist = p.add_argument_group("distributed (Detectron2 conventions)")
    dist.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        metavar="G",
        help="processes (GPUs) per machine (default 1); with --device cpu, CPU processes "
        "(gloo) for checking the distributed path, not for speed",
    )
    dist.add_argument("--num-machines", type=int, default=1, metavar="M")
    dist.add_argument("--machine-rank", type=int, default=0, metavar="R")
    dist.add_argument(
        "--dist-url",
        default="auto",
        metavar="URL",
        help="tcp://HOST:PORT of machine 0 (default: auto, a free local port)",
    )
    slurm = p.add_argument_group("Slurm (--launcher slurm; one job per trial, submitted with submitit)")
    slurm.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="run trials here one after another (local) or as parallel Slurm jobs",
    )
    slurm.add_argument("--partition", default=None, metavar="NAME", help="Slurm partition")
    slurm.add_argument(
        "--gpus-per-job", type=int, default=None, metavar="G", help="GPUs per trial job (default: --num-gpus)"
    )
    slurm.add_argument(
        "--time",
        dest="time_min",
        type=int,
        default=24 * 60,
        metavar="MIN",
        help="time limit per job in minutes (default 1440); on expiry the job is requeued and resumes",
    )
    slurm.add_argument("--cpus-per-task", type=int, default=10, metavar="C", help="CPUs per job (default 10)")
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=30.0,
        metavar="MIN",
        help="also save a resume checkpoint every MIN minutes of training, so that an interrupted "
        "trial loses at most MIN minutes (default 30; 0: only SOLVER.CHECKPOINT_PERIOD)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check weights, data and config, print what would run, train nothing"
    )
    # Overrides as Detectron2's tools take them (trailing KEY VALUE pairs) or after --opts, anywhere and
    # repeatable: --opts stops at the next flag instead of swallowing the rest of the line.
    p.add_argument(
        "--opts",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for every trial, e.g. --opts SOLVER.IMS_PER_BATCH 8 (or, as in Detectron2's tools, "
        "the pairs alone after the flags)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides in Detectron2's convention, e.g. SOLVER.MAX_ITER 200 (the same as --opts)",
    )
    return p


def parse_args(argv=None, benchmark: str = "voc") -> argparse.Namespace:
    """The flags, with the trailing KEY VALUE pairs appended to --opts (flags and pairs may be interleaved)."""
    args = build_parser(benchmark).parse_intermixed_args(argv)
    args.opts = [*args.opts, *args.overrides]
    del args.overrides
    return args


@cli_main
def main(argv=None, benchmark: str = "voc") -> int:
    args = parse_args(argv, benchmark)
    from mocoeval.results.tables import regenerate
    from mocoeval.transfer.detection.config import opts_pairs
    from mocoeval.transfer.detection.run import RunOptions, run

    opts_pairs(args.opts)  # an odd count is a typo on the command line: say so before checking any file

    code = run(RunOptions(**vars(args), benchmark=benchmark))
    if code == 0 and not args.dry_run:
        regenerate()  # the post-run step: never fails the run, the records are safe in the store
    return code


if __name__ == "__main__":
    sys.exit(main())
