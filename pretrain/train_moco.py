#!/usr/bin/env python
"""MoCo v1/v2 pretraining: `python pretrain/train_moco.py DATA_DIR [flags]` (see --help).

The command lives in `mocoeval.pretrain.train_moco`; this file keeps `python pretrain/train_moco.py` working."""

from mocoeval.pretrain.train_moco import main

if __name__ == "__main__":
    main()
