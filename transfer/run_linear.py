#!/usr/bin/env python
"""Linear classification on a frozen ResNet-50 (the MoCo papers' "ImageNet linear accuracy").

The command lives in `mocoeval.transfer.run_linear`; this file keeps `python transfer/run_linear.py` working."""

from mocoeval.transfer.run_linear import main

if __name__ == "__main__":
    main()
