#!/usr/bin/env python
"""Pretraining throughput in image pairs per second: the model step alone and the full loop with the loader.

The command lives in `mocoeval.pretrain.bench`; this file keeps `python pretrain/bench.py` working."""

from mocoeval.pretrain.bench import main

if __name__ == "__main__":
    main()
