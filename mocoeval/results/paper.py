"""The published numbers we compare against: results/paper_numbers.csv (MoCo v2 Table 1, MoCo v1, with sources),
the paper's names for its rows, and the spread the papers report for them (for the "within noise" marks).

One CSV line is one published row of one benchmark, with its source (and, in `note`, how it was checked):
- ImageNet linear / VOC lines: `coco_schedule` empty, numbers in linear_top1 and AP50 / AP / AP75.
- COCO lines (R50-C4 Mask R-CNN, val2017): `coco_schedule` 1x or 2x (run_coco.py's --schedule), numbers in the
  six COCO metric columns (box_AP ... mask_AP75, the store's names), the other numbers empty. A line never mixes
  the two, so the same case (supervised, moco_v1, d, e) can have a VOC line and COCO lines per schedule without
  one standing in for another: `paper_by_case` picks the VOC / linear lines, or the COCO lines of one schedule.
Only the 2x COCO lines are compared with ours (our official COCO protocol is the 2x config, identity.py): a 1x run
departs from it, so the 1x lines are compared with nothing and are there to be read. COCO sources: the MoCo v1
paper's Table 5 (supervised, MoCo v1, IG-1B at 2x; random init and supervised at 1x: its 1x MoCo rows and 2x random
init are left out, no source here confirmed them) and, for MoCo v2, InsLoc's reproduction (box / mask AP only).
No spread is published for COCO: PAPER_SPREAD has no COCO metric and the COCO comparison has no noise column.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mocoeval import REPO_ROOT
from mocoeval.results.store import COCO_METRICS, LINEAR_METRIC, VOC_METRICS
from mocoeval.runtime.errors import UserError

CASE_LABELS = {
    "random-init": "random init",
    "supervised": "supervised",
    "moco_v1": "MoCo v1",
    **{c: f"({c})" for c in "abcde"},
}
PAPER_NUMBERS_CSV = REPO_ROOT / "results" / "paper_numbers.csv"
PAPER_COLUMNS = [
    "source",
    "label",
    "case",
    "mlp",
    "aug_plus",
    "cos",
    "epochs",
    "moco_t",
    "moco_m",
    "batch_size",
    "linear_top1",
    "AP50",
    "AP",
    "AP75",
    "coco_schedule",
    *COCO_METRICS,
    "note",
]
# run_coco.py's schedules, and its default, the official protocol (identity.py's official COCO config is the 2x
# one); written here, not imported, as results sits below transfer (tests/test_tables.py pins them equal)
COCO_SCHEDULES = ("2x", "1x")
COCO_PAPER_SCHEDULE = "2x"

# The paper's reported spread, (± as reported, number of trials), per (case, metric). The ± is the population
# std (ddof 0; protocol.md: it matches the official trials), converted to the sample std before any t-test.
# VOC: the facebookresearch/moco detection README, std ≈ 0.2 / 0.2 / 0.4 (AP50 / AP / AP75) over 5 trials, for
# the MoCo rows. Linear: the facebookresearch/moco README, 5 trials each: v1 ± 0.2, v2 200 ep ± 0.1 (its mean
# 67.5 is Table 1's (d)). No spread is published for the other cells: they get no mark.
PAPER_TRIALS = 5
VOC_PAPER_STD = dict(zip(VOC_METRICS, (0.2, 0.2, 0.4)))
PAPER_SPREAD = {
    **{
        (case, m): (std, PAPER_TRIALS)
        for case in ("moco_v1", "a", "b", "c", "d", "e")
        for m, std in VOC_PAPER_STD.items()
    },
    ("moco_v1", LINEAR_METRIC): (0.2, PAPER_TRIALS),
    ("d", LINEAR_METRIC): (0.1, PAPER_TRIALS),
}


def load_paper_numbers(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The published numbers (results/paper_numbers.csv), typed; UserError naming the file if malformed."""
    path = Path(path) if path else PAPER_NUMBERS_CSV
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"paper numbers file not found: {path}") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise UserError(f"cannot read paper numbers {path}: {e}".splitlines()[0]) from None
    missing = [c for c in PAPER_COLUMNS if c not in raw.columns]
    if missing:
        raise UserError(f"paper numbers {path} lack the columns {missing}")
    out = pd.DataFrame({c: raw[c].astype("object") for c in ("source", "label", "case", "coco_schedule", "note")})
    bad = ~raw["coco_schedule"].isin(["", *COCO_SCHEDULES])
    if bad.any():
        raise UserError(
            f"paper numbers {path}: column coco_schedule must be {'/'.join(COCO_SCHEDULES)}/empty, "
            f"line {int(bad.idxmax()) + 2} has {raw['coco_schedule'][bad].iloc[0]!r}"
        )
    for col in ("mlp", "aug_plus", "cos"):
        bad = ~raw[col].isin(["", "True", "False"])
        if bad.any():
            raise UserError(
                f"paper numbers {path}: column {col} must be True/False/empty, "
                f"line {int(bad.idxmax()) + 2} has {raw[col][bad].iloc[0]!r}"
            )
        out[col] = raw[col].map({"": None, "True": True, "False": False}).astype("object")
    for col in ("epochs", "moco_t", "moco_m", "batch_size", "linear_top1", *VOC_METRICS, *COCO_METRICS):
        values = pd.to_numeric(raw[col].replace("", None), errors="coerce")
        bad = values.isna() & (raw[col] != "")
        if bad.any():
            raise UserError(
                f"paper numbers {path}: column {col} line {int(bad.idxmax()) + 2} is not a number: "
                f"{raw[col][bad].iloc[0]!r}"
            )
        out[col] = values.astype("Int64") if col in ("epochs", "batch_size") else values.astype("float64")
    # one benchmark per line (module docstring): the schedule says which numbers the line may hold
    coco_line = raw["coco_schedule"] != ""
    for wrong, cols, text in (
        (coco_line, [LINEAR_METRIC, *VOC_METRICS], "a COCO line (coco_schedule set) has no linear or VOC numbers"),
        (~coco_line, list(COCO_METRICS), "a line with COCO numbers needs its coco_schedule"),
    ):
        bad = wrong & (raw[cols] != "").any(axis=1)
        if bad.any():
            raise UserError(f"paper numbers {path}: line {int(bad.idxmax()) + 2}: {text}")
    return out[PAPER_COLUMNS]


def paper_by_case(paper: pd.DataFrame | None, coco_schedule: str = "") -> dict[str, dict]:
    """The published row for each case: the first line of the CSV naming that case among the linear / VOC lines
    (`coco_schedule` empty) or among the COCO lines of that schedule."""
    out: dict[str, dict] = {}
    if paper is None:
        return out
    for line in paper.to_dict("records"):
        if line["case"] and line["coco_schedule"] == coco_schedule and line["case"] not in out:
            out[line["case"]] = line
    return out
