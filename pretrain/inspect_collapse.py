#!/usr/bin/env python
"""Is a MoCo projection collapsed? Similarities of two aug+ views on one batch, as the training step sees them.

The command lives in `mocoeval.pretrain.inspect_collapse`; this file keeps `python pretrain/inspect_collapse.py` working."""

from mocoeval.pretrain.inspect_collapse import main

if __name__ == "__main__":
    main()
