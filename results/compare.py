#!/usr/bin/env python
"""Is row A of the ablation table better than row B, beyond the trial noise? A t-test per metric.

`--help` has the examples; the statistics and their rules are in the docstring of mocoeval/compare.py.
"""

import sys

from mocoeval.results.compare import main

if __name__ == "__main__":
    sys.exit(main())
