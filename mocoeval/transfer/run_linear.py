#!/usr/bin/env python
"""Linear classification on a frozen ResNet-50 (the MoCo papers' "ImageNet linear accuracy").

    python transfer/run_linear.py --weights CKPT DATA_DIR [flags]
    python transfer/run_linear.py --random-init --seed 0 DATA_DIR          # the tables' "random init" row
    torchrun --nproc_per_node 8 transfer/run_linear.py --weights CKPT /path/to/imagenet

DATA_DIR is an ImageFolder root with train/<class>/*.jpg and val/<class>/*.jpg (ImageNet, or the embedded
datasets/imagenet-mini). Defaults are the official MoCo main_lincls protocol; flags keep its names
(--pretrained is an alias of --weights). Writes OUTPUT_DIR/{checkpoint.pth.tar, model_best.pth.tar, metrics.json,
log.txt, tb/} and one record to the results store (./results/runs/, or $MOCOEVAL_RESULTS_DIR).
"""

from __future__ import annotations

import argparse

from mocoeval.runtime.errors import cli_main
from mocoeval.transfer.linear_config import PRECISIONS, LinearConfig


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags without a value (None/False: the help text says what happens)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_linear.py",
        description=__doc__.split("\n\n")[0],
        epilog="The backbone is frozen and kept in eval mode (BN statistics frozen), only fc is trained; at the "
        "end every backbone tensor is compared with the checkpoint's (a mismatch fails the run). "
        "Multi-GPU: launch with torchrun; --batch-size is the total over all processes.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("data", metavar="DATA_DIR", help="ImageFolder root holding train/ and val/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--weights",
        "--pretrained",
        dest="weights",
        metavar="CKPT",
        help="pretrained checkpoint: ours or the official MoCo v1/v2 .pth.tar, MoCo v3 R50, or a "
        "torchvision ResNet-50 state_dict (e.g. the supervised weights)",
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="a randomly initialised ResNet-50 backbone (torchvision init, seeded by --seed)",
    )
    p.add_argument(
        "--residual-bn-init",
        type=float,
        metavar="G",
        help="with --random-init: the last BN scale of every residual branch is G (train_moco.py's flag: "
        "the network such a pretraining starts from; default 1, torchvision's init)",
    )
    p.add_argument(
        "--format",
        dest="weights_format",
        metavar="FMT",
        help="force the --weights format (moco, moco_v3, torchvision) instead of detecting it",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling arbitrary objects from --weights (only for files you trust)",
    )
    p.add_argument(
        "--variant", metavar="NAME", help="name this run's variant in the results tables (default: the checkpoint's)"
    )
    p.add_argument(
        "--image-size", type=int, help="train crop / val center-crop size; val resizes to size*256/224 first"
    )
    p.add_argument("--epochs", type=int, help="number of training epochs")
    p.add_argument("-b", "--batch-size", type=int, help="total batch size over all processes")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, help="initial learning rate")
    p.add_argument(
        "--schedule", type=int, nargs="*", metavar="EPOCH", help="epochs (0-based) at which the lr is multiplied by 0.1"
    )
    p.add_argument(
        "--feature-norm",
        action="store_true",
        help="standardise the frozen features (BatchNorm1d without affine) before fc; not the MoCo "
        "protocol, but one lr then fits backbones of very different feature scales (random init)",
    )
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, help="weight decay")
    p.add_argument("-j", "--workers", type=int, help="data-loading worker processes per process")
    p.add_argument(
        "--seed",
        type=int,
        help="seeds fc init, shuffling, crops (and the backbone with --random-init); runs are "
        "reproducible and resume exactly",
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        help="checkpoints, log, tensorboard events, metrics.json (default output/linear/<weights>_seed<N>)",
    )
    p.add_argument(
        "--resume",
        metavar="CKPT|auto",
        help="continue from a checkpoint.pth.tar (mid-epoch if Ctrl-C / SIGTERM stopped the run: it "
        "saves after the current iteration); 'auto': OUTPUT_DIR's if there is one",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default cuda if available; torchrun: cuda:LOCAL_RANK)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="backbone forward precision: bf16 autocast is fast on GPUs and on CPUs with "
        "AVX-512-BF16/AMX, slow on others (fc and its update stay fp32)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the backbone")
    p.add_argument(
        "-p",
        "--print-freq",
        type=int,
        help="iterations between progress updates: the bar on a terminal, else a log line with the ETA "
        "(log.txt always has them), and tensorboard's loss",
    )
    p.set_defaults(**LinearConfig.defaults())  # one source of defaults: the config (the protocol's values)
    return p


def parse_config(argv=None) -> LinearConfig:
    return LinearConfig.from_namespace(build_parser().parse_args(argv))


@cli_main
def main(argv=None):
    config = parse_config(argv)
    # imports torch: only after parsing, so that --help and flag errors answer at once
    from mocoeval.transfer.linear import run

    result = run(config)
    from mocoeval.results.tables import regenerate

    regenerate()  # the post-run step: never fails the run, the record is safe in the store
    return result


if __name__ == "__main__":
    main()
