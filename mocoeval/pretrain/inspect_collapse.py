#!/usr/bin/env python
"""Is a MoCo projection collapsed? Similarities of two aug+ views on one batch, as the training step sees them.

    python pretrain/inspect_collapse.py DATA --weights output/pretrain/d/checkpoint_0010.pth.tar
    python pretrain/inspect_collapse.py DATA --random-init 0 --arch resnet50 --image-size 64

Prints, for one batch of DATA/train (two aug+ views per image; encoders in training mode with split BN and the
key shuffle, as in pretraining) the mean cosine between each query and
  - its positive key, and the other images' keys: the margin between the two is what the contrastive task can use;
  - the keys of another batch computed by the same weights: lower than the same-batch figure when the batch
    statistics of BN mark a batch;
  - with --weights, the checkpoint's queued keys: the negatives the loss actually uses, computed by older key
    encoders. When they are less similar to the queries than fresh keys are, "computed by the latest encoder"
    tells the positive apart -- a shortcut that needs no instance features;
and the outputs' mean pairwise cosine (the cone they fill: 1 = a single point) and the key spread (per-dimension
std of the unit keys x sqrt(dim): ~1 spread over the sphere, 0 collapsed; train_moco.py logs the same figure for
its queue); the mean |scale| of the last BN of each stage's residual branches (1 at torchvision's init, 0 with
zero init: a stage whose branches stay near 0 is its projection shortcut alone); with --knn also the kNN top-1 of
the backbone on DATA/val (the random-init baseline of train_moco.py's monitor), with --knn-stage of an earlier
stage's pooled features, with --knn-bn data after re-estimating the BN statistics on DATA/train.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mocoeval.pretrain.config import ARCHS, STAGES, PretrainConfig, check_residual_bn_init
from mocoeval.runtime.errors import UserError, cli_main

if TYPE_CHECKING:
    import torch

# torch and the modules that import it are imported inside the functions, so that --help answers at once.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inspect_collapse.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA_DIR", help="ImageFolder root holding train/<class>/<image>")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="CKPT", help="MoCo pretraining checkpoint (ours or official)")
    src.add_argument("--random-init", type=int, metavar="SEED", help="a freshly initialised MoCo model instead")
    p.add_argument("-a", "--arch", choices=ARCHS, default=None, help="with --random-init (default resnet50)")
    p.add_argument("--no-mlp", action="store_true", help="with --random-init: the v1 linear projection")
    p.add_argument(
        "--residual-bn-init",
        type=float,
        default=None,
        metavar="G",
        help="with --random-init: the residual branches' last BN scale starts at G (train_moco.py's "
        "flag; default 1, torchvision's init)",
    )
    p.add_argument(
        "--zero-init-residual",
        action="store_const",
        const=0.0,
        dest="residual_bn_init",
        help="with --random-init: the same as --residual-bn-init 0",
    )
    p.add_argument("--image-size", type=int, default=None, help="view size (default: the checkpoint's, else 64)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="images in the batch (default 64)")
    p.add_argument("--bn-splits", type=int, default=0, help="BN splits, 0 = auto as in pretraining (default 0)")
    p.add_argument("--seed", type=int, default=0, help="which images and views (default 0)")
    p.add_argument(
        "--knn",
        action="store_true",
        help="also the kNN top-1 of the query backbone on DATA/val (eval mode; as train_moco.py --knn-data)",
    )
    p.add_argument(
        "--knn-stage",
        choices=STAGES,
        default="layer4",
        help="with --knn: pool the features after this stage (default layer4, the whole backbone)",
    )
    p.add_argument(
        "--knn-bn",
        choices=("stored", "data"),
        default="stored",
        help="with --knn: BN running statistics as stored (default; a random init's are mean 0, var 1, "
        "so its BN layers pass activations through unnormalised) or re-estimated on DATA/train "
        "first (center crops, as Detectron2's precise BN)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return p


def view_similarities(
    model,
    im_q: torch.Tensor,
    im_k: torch.Tensor,
    queue: torch.Tensor | None = None,
    im_k_other: torch.Tensor | None = None,
) -> dict:
    """The cosine statistics of one batch, training-mode encoders, keys through the shuffle; optionally against
    the queued keys and the keys of another batch `im_k_other` (same weights). The model is left
    as it was: the BN running statistics this training-mode pass moves are put back (a later kNN sees the
    checkpoint's, or the initial, statistics)."""
    import torch
    import torch.nn.functional as F

    from mocoeval.pretrain.builder import key_spread, shuffle_batch, unshuffle_batch

    with torch.no_grad():
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        was_training = model.training
        model.train()
        try:
            q = F.normalize(model.encoder_q(im_q), dim=1)

            def keys(images):
                shuffled, unshuffle = shuffle_batch(images)
                return F.normalize(unshuffle_batch(model.encoder_k(shuffled), unshuffle), dim=1)

            k = keys(im_k)
            k_other = keys(im_k_other) if im_k_other is not None else None
        finally:
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
            model.train(was_training)
        n = q.shape[0]
        off = ~torch.eye(n, dtype=torch.bool)
        qk = q @ k.t()
        stats = {"positive_cos": qk.diag().mean().item(), "negative_cos": qk[off].mean().item()}
        if k_other is not None:
            stats["other_batch_cos"] = (q @ k_other.t()).mean().item()
        if queue is not None:
            stats["queue_cos"] = (q @ F.normalize(queue.float(), dim=0)).mean().item()
        return {**stats, "output_pairwise_cos": (q @ q.t())[off].mean().item(), "key_spread": key_spread(k.t()).item()}


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from mocoeval.data.layout import check_imagefolder
    from mocoeval.pretrain.augment_batched import ViewBatch
    from mocoeval.pretrain.build import build_loader, build_model, knn_loaders, resolve_bn_splits
    from mocoeval.pretrain.checkpoint import load_moco_checkpoint, strip_prefix
    from mocoeval.pretrain.knn import knn_top1, reestimate_bn_statistics
    from mocoeval.pretrain.residual_scaling import residual_branch_scales
    from mocoeval.pretrain.step import COLLAPSED_SPREAD

    if args.weights and (args.arch or args.no_mlp or args.residual_bn_init is not None):
        raise UserError(
            "--arch, --no-mlp and --residual-bn-init describe a --random-init model; --weights brings its own"
        )
    if args.residual_bn_init is not None:
        check_residual_bn_init(args.residual_bn_init)
    config = {}
    if args.weights:
        ckpt = load_moco_checkpoint(args.weights)
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        sd = strip_prefix(ckpt["state_dict"])
        arch = ckpt.get("arch") or config.get("arch") or "resnet50"
        mlp = "encoder_q.fc.0.weight" in sd
        dim, K = sd["queue"].shape
    else:
        arch, mlp, dim, K = args.arch or "resnet50", not args.no_mlp, 128, 4096
    size = args.image_size or config.get("image_size") or 64
    if not args.knn and (args.knn_stage != "layer4" or args.knn_bn != "stored"):
        raise UserError("--knn-stage and --knn-bn choose how the kNN top-1 is measured: add --knn")
    if args.batch_size < 2:
        raise UserError(f"--batch-size must be at least 2, got {args.batch_size}")
    check_imagefolder(args.data, splits=("train", "val") if args.knn else ("train",))  # before any work
    splits = resolve_bn_splits(args.bn_splits, args.batch_size, 1)
    torch.manual_seed(args.random_init if args.random_init is not None else 0)
    model = build_model(
        PretrainConfig.defaults(
            arch=arch,
            moco_dim=dim,
            mlp=mlp,
            moco_k=K,
            moco_m=0.999,
            moco_t=0.2,
            residual_bn_init=1.0 if args.residual_bn_init is None else args.residual_bn_init,
        ),
        splits,
    )
    if args.weights:
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise UserError(f"{args.weights} does not fit a {arch} MoCo model: {str(e).splitlines()[0]}") from None
    loader = build_loader(args.data, size, True, args.seed, args.batch_size, 0, torch.device("cpu"))
    loader.sampler.set_epoch(0)
    view_batch = ViewBatch(torch.device("cpu"), aug_plus=True, colour_on_device=False)
    batches = (view_batch(views, params) for (views, params), _ in loader)
    try:
        im_q, im_k = next(batches)
    except StopIteration:
        raise UserError(f"{args.data}/train holds fewer than --batch-size {args.batch_size} images") from None
    _, im_k_other = next(batches, (None, None))  # a second batch when the data holds one
    torch.manual_seed(args.seed)  # the key shuffle
    stats = {
        "weights": args.weights or f"random-init:{args.random_init}",
        "arch": arch,
        "image_size": size,
        "batch_size": args.batch_size,
        "bn_splits": splits,
        **view_similarities(model, im_q, im_k, model.queue if args.weights else None, im_k_other),
    }
    stats["collapsed"] = stats["key_spread"] < COLLAPSED_SPREAD
    stats["residual_branch_scale"] = residual_branch_scales(model.encoder_q)
    if args.knn:
        knn = knn_loaders(args.data, size, args.batch_size, 0)
        stats["knn_stage"], stats["knn_bn"] = args.knn_stage, args.knn_bn
        if args.knn_bn == "data":
            reestimate_bn_statistics(model.encoder_q, knn["train"], torch.device("cpu"))
        stats["knn_top1"] = knn_top1(
            model.encoder_q, knn["train"], knn["val"], knn["num_classes"], torch.device("cpu"), stage=args.knn_stage
        )
    if args.json:
        print(json.dumps(stats))
    else:
        labels = (
            ("positive_cos", "cos(query, positive key)"),
            ("negative_cos", "cos(query, other images' keys)"),
            ("other_batch_cos", "cos(query, another batch's keys)"),
            ("queue_cos", "cos(query, queued keys)"),
            ("output_pairwise_cos", "outputs' pairwise cos"),
        )
        figures = [f"{label} {stats[key]:.4f}" for key, label in labels if key in stats]
        print(
            f"{stats['weights']} ({arch}, {size} px, batch {args.batch_size}, BN splits {splits}): "
            + ", ".join(figures)
            + f", key spread {stats['key_spread']:.3f}"
            + (" -> COLLAPSED" if stats["collapsed"] else "")
            + "; residual branch scale "
            + " / ".join(f"{v:.3f}" for v in stats["residual_branch_scale"].values())
            + " (layer1-4)"
            + (
                f"; kNN top-1 {stats['knn_top1']:.2f}% ({args.knn_stage}, BN statistics {args.knn_bn})"
                if args.knn
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
