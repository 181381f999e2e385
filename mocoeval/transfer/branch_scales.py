#!/usr/bin/env python
"""How loud each stage's residual branches are against their shortcuts, in any ResNet-50 weights file.

    python transfer/branch_scales.py moco.pth.tar out.pkl output/voc_out/trial_1/model_final.pth

Per stage (res2..res5 = torchvision's layer1..layer4; in R50-C4 res5 is the RoI head) the mean |scale| of the
last BN of its residual branches: 1 at torchvision's init, G after train_moco.py --residual-bn-init G. Reading
a checkpoint before and after fine-tuning shows whether the detector kept the pretraining's scales.
Reads a pretraining or torchvision checkpoint (what convert/to_d2.py reads), a converted .pkl, or a
Detectron2 checkpoint written by transfer/run_voc.py (model_final.pth). Loads tensors only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mocoeval.convert.detectron2_weights import check_d2_pickle, torchvision_to_d2
from mocoeval.convert.formats import load_resnet50
from mocoeval.runtime.checkpoint_io import torch_load_safely
from mocoeval.runtime.errors import UserError, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfer/branch_scales.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".pth / .pth.tar / .pkl weights")
    p.add_argument("--json", action="store_true", help="one JSON object per file instead of a table")
    return p


def branch_scales_of(path: Path) -> dict[str, float]:
    """The per-stage scales of one file, whichever of the three kinds it is (UserError if none)."""
    from mocoeval.pretrain.residual_scaling import d2_residual_branch_scales  # torch: not for --help

    if path.is_dir():
        raise UserError(f"{path} is a directory, expected a weights file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".pkl":
        return d2_residual_branch_scales(check_d2_pickle(path)["model"])
    obj = torch_load_safely(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a Detectron2 checkpoint
        scales = d2_residual_branch_scales(obj["model"])
        if scales:
            return scales
    state_dict, _ = load_resnet50(path)
    return d2_residual_branch_scales(torchvision_to_d2(state_dict))


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rows = [(f, branch_scales_of(Path(f))) for f in args.files]
    if args.json:
        for f, scales in rows:
            print(json.dumps({"file": f, "residual_branch_scale": scales}))
        return 0
    width = max(len("file"), *(len(f) for f, _ in rows))
    stages = ("res2", "res3", "res4", "res5")
    print(f"{'file':{width}s}  " + "  ".join(f"{s:>6s}" for s in stages))
    for f, scales in rows:
        print(f"{f:{width}s}  " + "  ".join(f"{scales[s]:6.3f}" if s in scales else f"{'-':>6s}" for s in stages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
