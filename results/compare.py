#!/usr/bin/env python
"""Is row A better than row B beyond the trial noise? A t-test per metric on the rows of the ablation table.

    python results/compare.py --list                      # the rows, one label per line, as A / B take them
    python results/compare.py d random-init               # Welch's t-test on every VOC metric (+ linear)
    python results/compare.py "(d)" "(c)" --paired --metric AP50 AP --json

The statistics and their rules: the docstring of mocoeval/compare.py.
"""
import sys

from mocoeval.compare import main

if __name__ == "__main__":
    sys.exit(main())
