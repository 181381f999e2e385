#!/usr/bin/env python
"""Regenerate the ablation tables and plots from the run records.

The command lives in `mocoeval.results.make_tables`; this file keeps `python results/make_tables.py` working."""

from mocoeval.results.make_tables import main

if __name__ == "__main__":
    main()
