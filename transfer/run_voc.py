#!/usr/bin/env python
"""Fine-tune and evaluate converted MoCo weights on VOC07+12 -> VOC07 test (Faster R-CNN R50-C4), N trials.

The command lives in `mocoeval.transfer.detection.run_voc`; this file keeps `python transfer/run_voc.py` working."""

from mocoeval.transfer.detection.run_voc import main

if __name__ == "__main__":
    main()
