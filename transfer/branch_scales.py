#!/usr/bin/env python
"""How loud each stage's residual branches are against their shortcuts, in any ResNet-50 weights file.

The command lives in `mocoeval.transfer.branch_scales`; this file keeps `python transfer/branch_scales.py` working."""

from mocoeval.transfer.branch_scales import main

if __name__ == "__main__":
    main()
