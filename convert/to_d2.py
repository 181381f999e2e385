#!/usr/bin/env python
"""Convert a ResNet-50 checkpoint (MoCo v1/v2/v3, torchvision) into Detectron2 R50-C4 weights (.pkl).

The command lives in `mocoeval.convert.to_d2`; this file keeps `python convert/to_d2.py` working."""

from mocoeval.convert.to_d2 import main

if __name__ == "__main__":
    main()
