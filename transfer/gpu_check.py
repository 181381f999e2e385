#!/usr/bin/env python
"""Every speed figure of the pipeline on this machine's GPU (pretraining, VOC fine-tuning, linear), one report.

The command lives in `mocoeval.transfer.gpu_check`; this file keeps `python transfer/gpu_check.py` working."""

import sys

from mocoeval.transfer.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
