#!/usr/bin/env python
"""Fine-tune and evaluate converted MoCo weights on COCO train2017 -> val2017 (Mask R-CNN R50-C4, 1x/2x), N trials.

    python transfer/run_coco.py --weights out.pkl --trials 5 [--schedule 1x|2x]

The detection command of run_voc (same flags, trial layout, resume, Slurm, summary) with COCO's benchmark.
"""

from __future__ import annotations

import sys

from mocoeval.transfer.detection import run_voc


def build_parser():
    return run_voc.build_parser("coco")


def main(argv=None) -> int:
    return run_voc.main(argv, benchmark="coco")


if __name__ == "__main__":
    sys.exit(main())
