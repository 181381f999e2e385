#!/usr/bin/env python
"""Regenerate the ablation tables and plots from the run records.

Reads every run record (one JSON file per finished pretraining, linear-evaluation or VOC run) and writes,
atomically, into the output folder:
  ablation.md                 MoCo v2 Table 1 layout, ours vs the published numbers, the sources, the plots
  ablation.tex                the same two tables for LaTeX (booktabs, amssymb, xcolor)
  ablation.csv                one line per row (variant x protocol identity): case, mlp, aug_plus, cos,
                              epochs, extensions, linear_protocol, voc_protocol, linear_top1 (final epoch),
                              linear_best_top1, AP50_mean, AP50_std, AP_mean, AP_std, AP75_mean, AP75_std, n_trials
                              (with COCO records also a COCO table and its comparison with the published
                              numbers in the .md/.tex, and coco_protocol, box_/mask_AP* mean and std,
                              coco_n_trials in the CSV)
  ablation_vs_paper.csv       ours beside the paper's numbers, per case
  ablation_coco_vs_paper.csv  with COCO records: ours beside the published COCO (2x) numbers, per case
  ablation_voc_trials.png     per-variant spread of the per-trial VOC AP50 / AP / AP75
  ablation_linear_vs_voc.png  linear top-1 against VOC AP50, ours and the paper's

run_voc.py and run_linear.py call the same code (mocoeval.results.tables.regenerate) when they finish.
How records are joined into rows: see the docstring of mocoeval/results/rows.py.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from mocoeval import REPO_ROOT
from mocoeval.results import store as results_store
from mocoeval.results import tables
from mocoeval.results.paper import PAPER_NUMBERS_CSV
from mocoeval.runtime.errors import UserError, cli_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make_tables.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        metavar="DIR",
        help=results_store.STORE_HELP,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: next to the run records: the parent of a runs folder named 'runs', "
        "i.e. ./results/ or the parent of $MOCOEVAL_RESULTS_DIR; else the runs folder itself)",
    )
    parser.add_argument(
        "--paper",
        type=Path,
        default=None,
        metavar="CSV",
        help=f"published numbers CSV (default: {PAPER_NUMBERS_CSV.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the tables only (no matplotlib)")
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.runs is not None and not args.runs.is_dir():
        raise UserError(f"runs folder not found: {args.runs}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"output path exists and is not a folder: {args.out}")
    runs = args.runs or results_store.default_store_dir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            written = tables.build_outputs(runs, args.out, args.paper, plots=not args.no_plots)
        except OSError as e:
            raise UserError(f"cannot write the tables: {e}") from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    n_records = sum(1 for _ in runs.glob("*.json")) if runs.is_dir() else 0
    print(f"read {n_records} record file(s) from {runs}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
