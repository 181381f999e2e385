#!/usr/bin/env python
"""Linear classification on a frozen ResNet-50 (the MoCo papers' "ImageNet linear accuracy").

    python transfer/run_linear.py --weights CKPT DATA_DIR [flags]
    python transfer/run_linear.py --random-init --seed 0 DATA_DIR          # the tables' "random init" row
    torchrun --nproc_per_node 8 transfer/run_linear.py --weights CKPT /path/to/imagenet

DATA_DIR is an ImageFolder root with train/<class>/*.jpg and val/<class>/*.jpg (ImageNet, or the embedded
datasets/imagenet-mini). Defaults are the official MoCo main_lincls protocol; flags keep its names
(--pretrained is --weights here). Writes OUTPUT_DIR/{checkpoint.pth.tar, model_best.pth.tar, metrics.json,
log.txt, tb/} and one record to the results store (results/runs/, or $MOCOEVAL_RESULTS_DIR).
"""
from __future__ import annotations

import argparse

from mocoeval.runtime.errors import cli_main
from mocoeval.results.identity import LINCLS_DEFAULTS
from mocoeval.transfer.linear import PRECISIONS, run

D = LINCLS_DEFAULTS


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags without a value (None/False: the help text says what happens)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_linear.py", description=__doc__.split("\n\n")[0],
        epilog="The backbone is frozen and kept in eval mode (BN statistics frozen), only fc is trained; at the "
               "end every backbone tensor is compared with the checkpoint's (a mismatch fails the run). "
               "Multi-GPU: launch with torchrun; --batch-size is the total over all processes.",
        formatter_class=_HelpFormatter)
    p.add_argument("data", metavar="DATA_DIR", help="ImageFolder root holding train/ and val/")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="CKPT",
                     help="pretrained checkpoint: ours or the official MoCo v1/v2 .pth.tar, MoCo v3 R50, or a "
                          "torchvision ResNet-50 state_dict (e.g. the supervised weights)")
    src.add_argument("--random-init", action="store_true",
                     help="a randomly initialised ResNet-50 backbone (torchvision init, seeded by --seed)")
    p.add_argument("--residual-bn-init", type=float, default=None, metavar="G",
                   help="with --random-init: the last BN scale of every residual branch is G (train_moco.py's flag: "
                        "the network such a pretraining starts from; default 1, torchvision's init)")
    p.add_argument("--format", dest="weights_format", metavar="FMT", default=None,
                   help="force the --weights format (moco, moco_v3, torchvision) instead of detecting it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling arbitrary objects from --weights (only for files you trust)")
    p.add_argument("--variant", metavar="NAME", default=None,
                   help="name this run's variant in the results tables (default: the checkpoint's)")
    p.add_argument("--image-size", type=int, default=D["image_size"],
                   help="train crop / val center-crop size; val resizes to size*256/224 first")
    p.add_argument("--epochs", type=int, default=D["epochs"], help="number of training epochs")
    p.add_argument("-b", "--batch-size", type=int, default=D["batch_size"],
                   help="total batch size over all processes")
    p.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=D["lr"], help="initial learning rate")
    p.add_argument("--schedule", type=int, nargs="*", default=list(D["schedule"]), metavar="EPOCH",
                   help="epochs (0-based) at which the lr is multiplied by 0.1")
    p.add_argument("--feature-norm", action="store_true",
                   help="standardise the frozen features (BatchNorm1d without affine) before fc; not the MoCo "
                        "protocol, but one lr then fits backbones of very different feature scales (random init)")
    p.add_argument("--momentum", type=float, default=D["momentum"], help="SGD momentum")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=D["weight_decay"],
                   help="weight decay")
    p.add_argument("-j", "--workers", type=int, default=4, help="data-loading worker processes per process")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds fc init, shuffling, crops (and the backbone with --random-init); runs are "
                        "reproducible and resume exactly")
    p.add_argument("--output-dir", metavar="DIR", default=None,
                   help="checkpoints, log, tensorboard events, metrics.json (default output/linear/<weights>_seed<N>)")
    p.add_argument("--resume", metavar="CKPT|auto", default=None,
                   help="continue from a checkpoint.pth.tar (mid-epoch if Ctrl-C / SIGTERM stopped the run: it "
                        "saves after the current iteration); 'auto': OUTPUT_DIR's if there is one")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cuda if available; torchrun: "
                                                  "cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="backbone forward precision: bf16 autocast is fast on GPUs and on CPUs with "
                        "AVX-512-BF16/AMX, slow on others (fc and its update stay fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the backbone")
    p.add_argument("-p", "--print-freq", type=int, default=D["print_freq"],
                   help="iterations between progress-bar / tensorboard loss updates")
    return p


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    result = run(args)
    from mocoeval.results.tables import regenerate

    regenerate()  # the post-run step: never fails the run, the record is safe in the store
    return result


if __name__ == "__main__":
    main()
