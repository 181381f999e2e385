#!/usr/bin/env python
"""MoCo v1/v2 pretraining: `python pretrain/train_moco.py DATA_DIR [flags]` (see --help).

DATA_DIR is an ImageFolder root with train/<class>/<image> (ImageNet's layout; labels are ignored).
Examples:
  python pretrain/train_moco.py /data/imagenet --config configs/pretrain/d.yaml            # MoCo v2, 1 GPU
  torchrun --nproc_per_node 8 pretrain/train_moco.py /data/imagenet --config configs/pretrain/d.yaml
  python pretrain/train_moco.py /data/imagenet --config configs/pretrain/d.yaml --resume auto   # continue
Writes to --output-dir: checkpoint_XXXX.pth.tar (official layout), final.pth.tar, metrics.json, log.txt,
tb/ (tensorboard); and one run record in results/runs/.
"""

from __future__ import annotations

from mocoeval.pretrain.config import parse_config
from mocoeval.runtime.errors import cli_main


@cli_main
def main(argv=None):
    cfg, resume_ckpt = parse_config(argv)
    from mocoeval.pretrain.engine import train  # torch: after parsing, so that --help answers at once

    return train(cfg, resume_ckpt)


if __name__ == "__main__":
    main()
