"""Decisive comparisons: is row A better than row B, and is our number the paper's, beyond the trial noise?

Two table rows (`rows.collect_rows`; the same pooled trials the tables show) are compared metric by metric:
n per side, the means, the difference A − B with its 95% confidence interval, a t-test and its p-value, and a
verdict. The default test is Welch's (unequal variances) on the per-trial values; with `paired=True` (both rows
fine-tuned from one network each with the same seeds) the paired t-test on the per-seed differences. VOC
metrics compare trials; the linear top-1 compares networks (one probe per network), so it needs several
networks per row. When the difference is not detectable, `trials_needed` says how many trials per side would
detect the observed difference at 5% with 80% power, given the observed spread (noncentral t).

The tables mark each gap to the paper "within noise" or not (`paper_gap_within_noise`): with the paper's
reported spread (`PAPER_SPREAD`) as the per-trial noise of both sides, a gap is within noise when it lies
inside the 95% interval of a two-sample t-test with the paper's and our number of trials.

scipy is imported on first use (the command's --help stays fast).

Examples (results/compare.py):
  python results/compare.py --list                    # the rows, one label per line, as A and B take them
  python results/compare.py d random-init             # Welch's t-test on each VOC metric (+ linear top-1)
  python results/compare.py "(d)" "(c)" --paired --metric AP50 AP --json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mocoeval.results import rows as table_rows
from mocoeval.results import store as results_store
from mocoeval.results.statistics import ALPHA, MAX_TRIALS, POWER, VERDICT_NONE, Comparison, compare_values
from mocoeval.results.store import COCO_METRICS, LINEAR_METRIC, VOC_METRICS
from mocoeval.runtime.errors import UserError, cli_main

SHA_PREFIX_MIN = 4  # shorter hex texts ("d", "e") are case keys or label prefixes, not sha256 prefixes
LINEAR = LINEAR_METRIC
METRICS = (*VOC_METRICS, *COCO_METRICS, LINEAR)
METRIC_TITLES = {
    "AP50": "VOC AP50",
    "AP": "VOC AP",
    "AP75": "VOC AP75",
    LINEAR: "linear top-1",
    **{m: "COCO " + m.replace("_", " ") for m in COCO_METRICS},
}
TRIALS_ATTR = {**{m: "trials" for m in VOC_METRICS}, **{m: "coco_trials" for m in COCO_METRICS}}  # Source/Row


# -------------------------------------------------------------------------------------- row selection
def listed_labels(rows: Sequence[table_rows.Row]) -> list[str]:
    """The text that selects each row, as --list prints it: the row's label as the tables print it plus its
    epochs, as in the Sources table; where two rows would share it, with all departures (the table shows 3
    per stage); if still shared, with its first source's sha256 prefix."""
    names = [r.label + table_rows.epochs_suffix(r.key) for r in rows]
    for i, r in enumerate(rows):
        if names.count(names[i]) > 1:
            names[i] = table_rows.case_label(r.key.case, r.tag(None)) + table_rows.epochs_suffix(r.key)
    for i, r in enumerate(rows):
        if names.count(names[i]) > 1:
            names[i] += f" #{next((s.sha256[:12] for s in r.sources if s.sha256), i)}"
    return names


def _aliases(row: table_rows.Row) -> list[str]:
    """Other exact names of a row: the label without the epochs, and both with the case key ('d' for '(d)')."""
    tag = row.tag()
    keyform = row.key.case + (f" [{tag}]" if tag else "")
    return [row.label, keyform + table_rows.epochs_suffix(row.key), keyform]


def select_row(rows: Sequence[table_rows.Row], text: str, listed: Sequence[str] | None = None) -> int:
    """Index of the row `text` selects: an exact listed label, else an exact alias, else a unique prefix of a
    label or of a source sha256 (SHA_PREFIX_MIN+ hex digits). No match or several: UserError listing the
    candidates."""
    listed = list(listed) if listed is not None else listed_labels(rows)
    tiers = [
        [i for i, name in enumerate(listed) if name == text],
        [i for i, r in enumerate(rows) if text in _aliases(r)],
        [
            i
            for i, r in enumerate(rows)
            if any(n.startswith(text) for n in [listed[i], *_aliases(r)])
            or (
                re.fullmatch(rf"[0-9a-fA-F]{{{SHA_PREFIX_MIN},}}", text)
                and any(s.sha256 and s.sha256.startswith(text.lower()) for s in r.sources)
            )
        ],
    ]
    for found in tiers:
        found = list(dict.fromkeys(found))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(
                f"{text!r} matches {len(found)} rows: "
                + "; ".join(repr(listed[i]) for i in found)
                + " (pass one of these)"
            )
    raise UserError(f"no row matches {text!r}; the rows are: " + "; ".join(map(repr, listed)))


# ------------------------------------------------------------------------------------ comparing rows
def _trial_sources(row: table_rows.Row, attr: str = "trials") -> list:
    """The row's sources with trials in `attr` ('trials': VOC, 'coco_trials': COCO)."""
    return [s for s in row.sources if getattr(s, attr)]


def pairing_problem(a: table_rows.Row, b: table_rows.Row, attr: str = "trials") -> str | None:
    """Why the two rows cannot be paired by seed (None: they can): each must have VOC (COCO, attr
    'coco_trials') trials from one network, every trial seeded, and the same seeds on both sides."""
    bench = "COCO" if attr == "coco_trials" else "VOC"
    for side, row in (("A", a), ("B", b)):
        sources = _trial_sources(row, attr)
        if len(sources) != 1:
            return f"{side} has {bench} trials from {len(sources)} networks (pairing needs one network per row)"
        if any(t["seed"] is None for t in getattr(sources[0], attr).values()):
            return f"{side} has {bench} trials without a seed"
    seeds_a, seeds_b = (set(getattr(_trial_sources(r, attr)[0], attr)) for r in (a, b))
    if seeds_a != seeds_b:
        fmt = lambda seeds: ", ".join(sorted((k[1] for k in seeds), key=lambda s: (len(s), s)))  # noqa: E731
        return f"the rows were fine-tuned with different seeds (A: {fmt(seeds_a)}; B: {fmt(seeds_b)})"
    return None


def _values(row: table_rows.Row, metric: str) -> list[float]:
    if metric == LINEAR:
        return list(row.linear_values)
    return [t[metric] for t in getattr(row, TRIALS_ATTR[metric]) if t[metric] is not None]


def _paired_values(a: table_rows.Row, b: table_rows.Row, metric: str) -> tuple[list[float], list[float]]:
    attr = TRIALS_ATTR[metric]
    ta, tb = (getattr(_trial_sources(r, attr)[0], attr) for r in (a, b))
    keys = [
        k
        for k in sorted(ta, key=lambda k: (len(k[1]), k[1]))
        if ta[k][metric] is not None and tb[k][metric] is not None
    ]
    return [ta[k][metric] for k in keys], [tb[k][metric] for k in keys]


def default_metrics(a: table_rows.Row, b: table_rows.Row) -> list[str]:
    """The VOC and COCO metrics both rows have, and the linear top-1 when both rows have several networks."""
    out = [m for m in (*VOC_METRICS, *COCO_METRICS) if _values(a, m) and _values(b, m)]
    if len(a.linear_values) > 1 and len(b.linear_values) > 1:
        out.append(LINEAR)
    return out


def compare_rows(
    a: table_rows.Row,
    b: table_rows.Row,
    metrics: Sequence[str] | None = None,
    *,
    paired: bool = False,
    names: tuple[str, str] = ("A", "B"),
) -> list[Comparison]:
    """One Comparison per metric (default_metrics when None). paired applies to the VOC and COCO metrics (the linear
    top-1 compares different networks: always Welch); UserError when the rows cannot be paired."""
    metrics = list(metrics) if metrics else default_metrics(a, b)
    for attr in dict.fromkeys(TRIALS_ATTR[m] for m in metrics if m != LINEAR) if paired else ():
        problem = pairing_problem(a, b, attr)
        if problem:
            raise UserError(f"--paired: {problem}; drop --paired for Welch's test")
    if not metrics:
        raise UserError(
            "nothing to compare: the two rows share no VOC or COCO metric and do not both have several "
            "networks with a linear top-1"
        )
    out = []
    for m in metrics:
        pair = paired and m != LINEAR
        va, vb = _paired_values(a, b, m) if pair else (_values(a, m), _values(b, m))
        out.append(
            compare_values(
                va,
                vb,
                paired=pair,
                metric=m,
                a_name=names[0],
                b_name=names[1],
                unit="network" if m == LINEAR else "trial",
            )
        )
    return out


# ------------------------------------------------------------------------------------------- output
def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def format_comparison(c: Comparison) -> str:
    """One line per metric; a second one with the trials needed when the verdict is 'not detectable'."""
    head = f"{METRIC_TITLES.get(c.metric, c.metric)}: A {_num(c.mean_a)} (n {c.n_a}) vs B {_num(c.mean_b)} (n {c.n_b})"
    if c.delta is not None:
        head += f"; A − B = {c.delta:+.2f}"
    if c.ci95 is not None:
        head += f", 95% CI [{c.ci95[0]:+.2f}, {c.ci95[1]:+.2f}]"
    if c.p_value is not None:
        head += f"; {c.test} p = {c.p_value:.3g}"
    lines = [f"{head} -> {c.verdict}"]
    if c.verdict == VERDICT_NONE:
        unit = "pairs" if c.test == "paired t-test" else ("networks" if c.metric == LINEAR else "trials") + " per side"
        needed = (
            f"{c.trials_needed}"
            if c.trials_needed is not None
            else "none would do (no observed difference)"
            if c.delta == 0
            else f"more than {MAX_TRIALS}"
        )
        lines.append(
            f"    {unit} needed to detect {c.delta:+.2f} at {ALPHA:.0%} with {POWER:.0%} power, "
            f"given the observed spread: {needed}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "a",
        nargs="?",
        metavar="A",
        help="a row: its label as --list prints it, a unique "
        "prefix of it, the case key (e.g. random-init, d) with its brackets, or a source sha256 "
        f"prefix ({SHA_PREFIX_MIN}+ hex digits)",
    )
    parser.add_argument("b", nargs="?", metavar="B", help="the row to compare A with (same forms)")
    parser.add_argument(
        "--metric",
        nargs="+",
        choices=METRICS,
        default=None,
        help="metrics to compare (default: the VOC and COCO metrics both rows have, and linear_top1 "
        "when both rows have several networks)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="paired t-test on the VOC (COCO) trials, matched by seed (both rows fine-tuned from one "
        "network each, with the same seeds)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=None,
        metavar="DIR",
        help=results_store.STORE_HELP,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per metric")
    parser.add_argument("--list", action="store_true", help="print the selectable row labels, one per line")
    args = parser.parse_args(argv)
    if not args.list and (args.a is None or args.b is None):
        parser.error("give two rows, A and B (or --list)")
    return args


def run(args: argparse.Namespace, out=None) -> int:
    """The command's logic on parsed arguments; prints to `out` (stdout)."""
    out = out or sys.stdout
    runs = args.runs or results_store.default_store_dir()
    if not runs.is_dir():
        raise UserError(f"runs folder not found: {runs}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = table_rows.collect_rows(results_store.load_records(runs))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if not rows:
        raise UserError(f"no table rows in {runs}")
    listed = listed_labels(rows)
    if args.list:
        print("\n".join(listed), file=out)
        return 0
    ia, ib = select_row(rows, args.a, listed), select_row(rows, args.b, listed)
    if ia == ib:
        raise UserError(f"A and B select the same row: {listed[ia]!r}")
    results = compare_rows(rows[ia], rows[ib], args.metric, paired=args.paired, names=(listed[ia], listed[ib]))
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2, ensure_ascii=False), file=out)
        return 0
    print(f"A: {listed[ia]}\nB: {listed[ib]}", file=out)
    for r in results:
        print(format_comparison(r), file=out)
    return 0


@cli_main
def main(argv=None) -> int:
    return run(parse_args(argv))
