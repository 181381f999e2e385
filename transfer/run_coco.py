#!/usr/bin/env python
"""Fine-tune and evaluate converted MoCo weights on COCO train2017 -> val2017 (Mask R-CNN R50-C4), N trials.

The command lives in `mocoeval.transfer.detection.run_coco`; this file keeps `python transfer/run_coco.py` working."""

from mocoeval.transfer.detection.run_coco import main

if __name__ == "__main__":
    main()
