#!/usr/bin/env python
"""Convert a self-supervised ResNet-50 checkpoint (MoCo, VISSL, mmselfsup, solo-learn, lightly, SwAV, DINO, Barlow
Twins, torchvision/timm/SimCLR; --list-formats) into Detectron2 R50-C4 weights (.pkl).

    python convert/to_d2.py moco_v2_200ep_pretrain.pth.tar moco_v2_200ep.pkl --verify

The output is what transfer/run_voc.py takes as --weights. It records the source checkpoint's path,
sha256, format and variant, so detection results join with the pretraining and linear-eval records, and the input
normalisation the weights expect (--input-norm). Every conversion prints what it recognised, where the backbone was,
that all 265 ResNet-50 tensors mapped and what it left out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from mocoeval.convert.detectron2_weights import check_output_pkl, read_caffe2_weights, save_d2_pickle, torchvision_to_d2
from mocoeval.convert.formats import FORMATS, LAYOUTS, load_resnet50, parse_random_init, random_init_resnet50
from mocoeval.convert.resnet50 import INPUT_NORMS, first_few
from mocoeval.pretrain.config import check_residual_bn_init
from mocoeval.results.variants import describe_departures, recipe_departures
from mocoeval.runtime.errors import UserError, cli_main
from mocoeval.runtime.fileio import plain_write_mode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert/to_d2.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="formats (auto-detected unless --format):\n"
        + "\n".join(f"  {name:12s} {desc}" for name, desc in FORMATS.items())
        + "\nA layout none of these knows: --prefix P (strip P, then torchvision names). Exit status: 0\n"
        "converted (and verified), 1 --verify failed (nothing written), 2 bad input.\n\n"
        "examples:\n  python convert/to_d2.py moco_v2_200ep_pretrain.pth.tar moco_v2_200ep.pkl --verify\n"
        "  python convert/to_d2.py random-init:0 random_init_seed0.pkl          # the random-init baseline\n"
        "  python convert/to_d2.py random-init:0 random_g0.1.pkl --residual-bn-init 0.1   # its G = 0.1 twin",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="input checkpoint (.pth / .pth.tar), or random-init:SEED for a randomly "
        "initialised ResNet-50 (the tables' random-init row; the same backbone as "
        "run_linear.py --random-init --seed SEED)",
    )
    p.add_argument("output", nargs="?", help="output Detectron2 weights; must end with .pkl; its folder must exist")
    p.add_argument("--format", choices=sorted(FORMATS), help="force the input format instead of detecting it")
    p.add_argument(
        "--list-formats",
        action="store_true",
        help="list the formats, where each keeps its backbone and the framework file the layout was read from",
    )
    p.add_argument(
        "--select",
        metavar="NAME",
        help="convert this candidate backbone instead of the one the framework evaluates (e.g. student, "
        "encoder_k, momentum_backbone; the report lists them), or for an unknown layout with several "
        "backbones the prefix of one",
    )
    p.add_argument(
        "--prefix",
        metavar="P",
        help="a layout no format knows: the backbone is under P (e.g. backbone.body.) with torchvision names",
    )
    p.add_argument(
        "--input-norm",
        choices=sorted(INPUT_NORMS),
        help="the input normalisation the weights were trained with, recorded in the .pkl (default: the "
        "format's, ImageNet mean/std RGB for almost all; 'none' = inputs scaled to 0..1 only, as some "
        "SimCLR conversions)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="build the source torchvision ResNet-50 and the Detectron2 R50-C4 model from the converted "
        "weights and compare res4/layer3 and res5/layer4 outputs (fp32, fails above 1e-4); "
        "the output is written only if this passes",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling (may run code stored in the file) for legacy checkpoints that hold "
        "more than tensors and plain containers; only for files from a trusted source",
    )
    p.add_argument(
        "--variant",
        metavar="NAME",
        help="variant name for the results tables, overriding the detected one (e.g. supervised for "
        "supervised torchvision weights: a torchvision-named file is otherwise named after itself)",
    )
    p.add_argument(
        "--residual-bn-init",
        type=float,
        default=None,
        metavar="G",
        help="with random-init:SEED: the last BN scale of every residual branch is G (train_moco.py's "
        "flag: the network such a pretraining starts from; default 1, torchvision's init)",
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        default=None,
        help="Detectron2 config the --verify model is built from (default: configs/pascal_voc_R_50_C4_24k_moco.yaml)",
    )
    return p


def _check_output_path(out: Path, checkpoint: Path) -> None:
    """Fail on a bad output path before spending time on loading."""
    check_output_pkl(out)
    if checkpoint.exists() and out.exists() and out.resolve() == checkpoint.resolve():
        raise UserError(f"output {out} is the input checkpoint itself")


def _describe_variant(v: dict) -> str:
    flags = [f for f in ("mlp", "aug_plus", "cos") if v.get(f)]
    detail = ", ".join(
        filter(
            None,
            [
                " ".join(flags) if v.get("mlp") is not None else None,
                f"{v['epochs']} epochs" if v.get("epochs") else None,
                describe_departures(recipe_departures(v)),
            ],
        )
    )
    return v.get("name", "?") + (f" ({detail})" if detail else "")


def list_formats() -> str:
    lines = []
    for lay in LAYOUTS.values():
        where = ", ".join(c.name for c in lay.candidates) or "passed through"
        lines.append(f"{lay.name:13s} {lay.description}\n{'':13s} backbone: {where}; read from {lay.source}")
    return "\n".join(lines)


def _passthrough(checkpoint: Path, out: Path, blobs: dict, verify: bool, config) -> int:
    """Caffe2 weights are already Detectron2's (it renames them itself): copy the file, say what input it needs."""
    import shutil

    from mocoeval.runtime.fileio import atomic_write

    lay = LAYOUTS["caffe2"]
    print(f"format: {lay.name}: {lay.description} (layout read from {lay.source})")
    print(
        f"backbone: {len(blobs)} Caffe2 blobs, complete ResNet-50; input {INPUT_NORMS['caffe2']['channels']}, "
        f"mean {INPUT_NORMS['caffe2']['pixel_mean']}, std {INPUT_NORMS['caffe2']['pixel_std']} (run_voc.py picks "
        f"the matching config)"
    )
    if verify:
        from mocoeval.transfer.detection.modeling import VOC_CONFIG_FOR_LAYOUT
        from mocoeval.transfer.detection.verify import classify_load_result, load_into_detector

        load = classify_load_result(load_into_detector(checkpoint, config or VOC_CONFIG_FOR_LAYOUT["caffe2"])[2])
        if load["missing_other"] or load["incorrect_shapes"]:
            print(f"verify: FAIL missing {first_few(load['missing_other'], 3)}; shapes {load['incorrect_shapes'][:2]}")
            print(f"error: verification failed, {out} not written", file=sys.stderr)
            return 1
        print(
            f"verify: OK loaded into R50-C4 by Detectron2's Caffe2 renaming, missing only the new heads "
            f"({len(load['missing_new_heads'])} tensors)"
        )
    with open(checkpoint, "rb") as src:
        atomic_write(out, lambda f: shutil.copyfileobj(src, f))
    print(f"wrote {out} (copied unchanged)")
    return 0


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_formats:
        print(list_formats())
        return 0
    if not args.checkpoint or not args.output:
        raise UserError("give CHECKPOINT and OUTPUT (or --list-formats)")
    start = time.perf_counter()
    checkpoint, out = Path(args.checkpoint), Path(args.output)
    _check_output_path(out, checkpoint)
    if args.config and not Path(args.config).is_file():
        raise UserError(f"--config file not found: {args.config}")

    random_seed = parse_random_init(args.checkpoint)
    if args.residual_bn_init is not None:
        if random_seed is None:
            raise UserError("--residual-bn-init describes a random-init:SEED network; a checkpoint has its own scales")
        check_residual_bn_init(args.residual_bn_init)
    if random_seed is not None:
        state_dict, info = random_init_resnet50(
            random_seed, 1.0 if args.residual_bn_init is None else args.residual_bn_init
        )
        if args.variant:
            info["variant"]["name"] = args.variant
        info["report"] = [f"format: {info['format']}: {info['format_description']}"]
        info["input"] = dict(INPUT_NORMS["imagenet"])
    else:
        blobs = read_caffe2_weights(checkpoint)
        if blobs is not None:
            return _passthrough(checkpoint, out, blobs, args.verify, args.config)
        state_dict, info = load_resnet50(
            checkpoint,
            fmt=args.format,
            trust_pickle=args.trust_pickle,
            variant=args.variant,
            select=args.select,
            prefix=args.prefix,
        )
    if args.input_norm:
        info["input"] = dict(INPUT_NORMS[args.input_norm])
    for line in info["report"]:
        print(line)
    for line in info.get("warnings", ()):
        print(f"warning: {line}", file=sys.stderr)
    norm = info["input"]
    print(
        f"input: {norm['channels']}, pixel mean {list(norm['pixel_mean'])}, std {list(norm['pixel_std'])} "
        f"(0..255 scale; recorded in the .pkl)"
    )
    print(f"variant: {_describe_variant(info['variant'])}")

    d2_model = torchvision_to_d2(state_dict)
    source = {
        "path": info["path"],
        "sha256": info["source_sha256"],
        "format": info["format"],
        "variant": info["variant"],
    }
    if not args.verify:
        save_d2_pickle(out, d2_model, source, info["input"])
        print(
            f"wrote {out} ({len(d2_model)} tensors, {out.stat().st_size / 2**20:.1f} MiB) "
            f"in {time.perf_counter() - start:.1f} s"
        )
        return 0

    from mocoeval.transfer.detection.verify import verify_conversion  # imports Detectron2: only when verifying

    # Verify a temporary file next to the output (Detectron2 needs a .pkl name), publish it only if it passes.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".unverified.pkl", dir=out.parent)
    os.fchmod(fd, plain_write_mode(out))  # the published file gets the mode a plain write gives, not 0600
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_d2_pickle(tmp, d2_model, source, info["input"])
        converted_s = time.perf_counter() - start
        result = verify_conversion(state_dict, tmp, args.config)
        print(result["line"])
        if result["load"]["unexpected"]:
            print(
                f"unexpected keys when loading (ignored by Detectron2): {len(result['load']['unexpected'])}, "
                f"e.g. {', '.join(result['load']['unexpected'][:3])}"
            )
        if not result["ok"]:
            print(f"error: verification failed, {out} not written", file=sys.stderr)
            return 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(
        f"wrote {out} ({len(d2_model)} tensors, {out.stat().st_size / 2**20:.1f} MiB); conversion "
        f"{converted_s:.1f} s, with verification {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
