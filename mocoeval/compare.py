"""Decisive comparisons: is row A better than row B, and is our number the paper's, beyond the trial noise?

Two table rows (`tables.collect_rows`; the same pooled trials the tables show) are compared metric by metric:
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
import dataclasses
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import results_store, tables
from .errors import UserError, cli_main

ALPHA = 0.05  # two-sided test level; the confidence interval is 1 − ALPHA
POWER = 0.80  # for trials_needed
SHA_PREFIX_MIN = 4  # shorter hex texts ("d", "e") are case keys or label prefixes, not sha256 prefixes
MAX_TRIALS = 100_000  # trials_needed gives up beyond this (a difference that small is noise for any real budget)
LINEAR = "linear_top1"
METRICS = (*tables.METRICS, LINEAR)
METRIC_TITLES = {"AP50": "VOC AP50", "AP": "VOC AP", "AP75": "VOC AP75", LINEAR: "linear top-1"}
VERDICT_NONE = "no difference detectable with these trials"

# The paper's reported spread, (± as reported, number of trials), per (case, metric). The ± is the population
# std (ddof 0; protocol.md: it matches the official trials), converted to the sample std before any t-test.
# VOC: the facebookresearch/moco detection README, std ≈ 0.2 / 0.2 / 0.4 (AP50 / AP / AP75) over 5 trials, for
# the MoCo rows. Linear: the facebookresearch/moco README, 5 trials each: v1 ± 0.2, v2 200 ep ± 0.1 (its mean
# 67.5 is Table 1's (d)). No spread is published for the other cells: they get no mark.
PAPER_TRIALS = 5
VOC_PAPER_STD = {"AP50": 0.2, "AP": 0.2, "AP75": 0.4}
PAPER_SPREAD = {
    **{(case, m): (std, PAPER_TRIALS) for case in ("moco_v1", "a", "b", "c", "d", "e")
       for m, std in VOC_PAPER_STD.items()},
    ("moco_v1", LINEAR): (0.2, PAPER_TRIALS), ("d", LINEAR): (0.1, PAPER_TRIALS)}


def _t_dist():
    from scipy import stats  # ~1 s to import: only when a test is computed

    return stats.t


def sample_std(population_std: float, n: int) -> float:
    """The sample std (ddof 1) from a reported population std (ddof 0) of n values."""
    return population_std * math.sqrt(n / (n - 1))


# -------------------------------------------------------------------------------------------- tests
@dataclass
class Comparison:
    """One metric of A vs B. p_value, ci95, df and test are None when no t-test was possible (see verdict)."""

    metric: str
    a: str
    b: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    sd_a: float | None  # sample std (ddof 1)
    sd_b: float | None
    delta: float | None  # mean_a − mean_b
    ci95: list | None  # [low, high] of delta
    p_value: float | None
    test: str | None
    df: float | None
    verdict: str
    trials_needed: int | None = None  # per side (pairs for a paired test), for 80% power at 5%; None: not defined

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, sd


def _verdict(delta: float, p: float) -> str:
    if p < ALPHA:
        return "A > B" if delta > 0 else "A < B"
    return VERDICT_NONE


def compare_values(a: Sequence[float], b: Sequence[float], *, paired: bool = False, metric: str = "",
                   a_name: str = "A", b_name: str = "B", unit: str = "trial") -> Comparison:
    """Welch's t-test of a against b (paired: the paired t-test of a[i] against b[i]) at level ALPHA.

    Fewer than 2 values on a side (pairs when paired) gives the verdict "n too small: ..." and no test; no
    spread at all (every value identical on both sides, or every paired difference identical) gives
    "undefined: ..." and no p-value, since the t statistic is then 0/0 or ±inf.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if paired and len(a) != len(b):
        raise ValueError(f"a paired test needs as many values on each side, got {len(a)} and {len(b)}")
    (mean_a, sd_a), (mean_b, sd_b) = _mean_sd(a), _mean_sd(b)
    delta = None if mean_a is None or mean_b is None else mean_a - mean_b
    out = Comparison(metric, a_name, b_name, len(a), len(b), mean_a, mean_b, sd_a, sd_b, delta, None, None,
                     None, None, "")
    small = [(side, n) for side, n in (("A", len(a)), ("B", len(b))) if n < 2]
    if small:
        unit_ = "pair" if paired else unit
        out.verdict = "n too small: " + ", ".join(f"{s} has {n} {unit_}{'' if n == 1 else 's'}" for s, n in small) \
            + f"; a t-test needs at least 2 {unit_}s" + ("" if paired else " per side")
        return out
    if paired:
        diffs = [x - y for x, y in zip(a, b)]
        _, sd_d = _mean_sd(diffs)
        se, df, test = sd_d / math.sqrt(len(diffs)), len(diffs) - 1, "paired t-test"
    else:
        va, vb = sd_a ** 2 / len(a), sd_b ** 2 / len(b)
        se, test = math.sqrt(va + vb), "Welch t-test"
        # Welch–Satterthwaite degrees of freedom
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else None
    out.test = test
    if se == 0:
        out.verdict = ("undefined: every paired difference is the same (no spread to test against)" if paired
                       else "undefined: every value is identical on both sides (no spread to test against)")
        return out
    t = _t_dist()
    half = t.ppf(1 - ALPHA / 2, df) * se
    out.df, out.ci95 = float(df), [float(delta - half), float(delta + half)]
    out.p_value = float(2 * t.sf(abs(delta) / se, df))
    out.verdict = _verdict(delta, out.p_value)
    out.trials_needed = trials_needed(delta, sd_d if paired else sd_a, None if paired else sd_b)
    return out


def _power(delta: float, sd_a: float, sd_b: float | None, n: int) -> float:
    """Power of the two-sided level-ALPHA t-test with n per side (sd_b None: paired, sd_a = sd of differences)."""
    from scipy import stats

    if sd_b is None:
        se, df = sd_a / math.sqrt(n), n - 1
    else:
        va, vb = sd_a ** 2, sd_b ** 2
        se, df = math.sqrt((va + vb) / n), (va + vb) ** 2 * (n - 1) / (va ** 2 + vb ** 2)
    crit, nc = stats.t.ppf(1 - ALPHA / 2, df), abs(delta) / se
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def trials_needed(delta: float, sd_a: float, sd_b: float | None = None) -> int | None:
    """Smallest n per side (sd_b None: number of pairs, sd_a the sd of the differences) at which the t-test
    detects a true difference `delta` at level ALPHA with probability POWER, if the spreads are sd_a and sd_b
    (noncentral t). None when there is no difference or no spread, or beyond MAX_TRIALS."""
    if delta == 0 or (sd_a == 0 and not sd_b):
        return None
    lo, hi = 1, 2  # power(lo) < POWER <= power(hi): double, then bisect
    while _power(delta, sd_a, sd_b, hi) < POWER:
        lo, hi = hi, hi * 2
        if lo >= MAX_TRIALS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _power(delta, sd_a, sd_b, mid) < POWER else (lo, mid)
    return hi if hi <= MAX_TRIALS else None


# ---------------------------------------------------------------------------------------- the paper
def paper_noise_bound(case: str, metric: str, n_ours: int) -> float | None:
    """Half-width of the 95% interval of (ours − paper) under the paper's spread, or None without a spread.

    Both sides are taken to have the paper's per-trial spread s (its population std over n_p trials, as
    sample std); the gap of two means of n_ours and n_p trials then has standard error s·sqrt(1/n_ours + 1/n_p),
    with n_p − 1 degrees of freedom (s is estimated from the paper's n_p trials).
    """
    spread = PAPER_SPREAD.get((case, metric))
    if spread is None or n_ours < 1:
        return None
    pop_std, n_p = spread
    se = sample_std(pop_std, n_p) * math.sqrt(1 / n_ours + 1 / n_p)
    return float(_t_dist().ppf(1 - ALPHA / 2, n_p - 1) * se)


def paper_gap_within_noise(case: str, metric: str, ours: float, n_ours: int, paper: float) -> bool | None:
    """True when our mean of n_ours trials is within the paper's noise of its number (see paper_noise_bound);
    None when the paper reports no spread for this cell."""
    bound = paper_noise_bound(case, metric, n_ours)
    return None if bound is None else abs(ours - paper) <= bound


def paper_noise_note() -> str:
    """The tables' note on the within / beyond noise marks (built from PAPER_SPREAD, so it cannot drift)."""
    voc = " / ".join(f"{VOC_PAPER_STD[m]}" for m in tables.METRICS)
    linear = ", ".join(f"{tables.CASE_LABELS[c]} ± {s} ({n} trials)"
                       for (c, m), (s, n) in PAPER_SPREAD.items() if m == LINEAR)
    return (f"Within / beyond noise: whether Δ lies inside the {1 - ALPHA:.0%} interval of a two-sample t-test "
            "that gives both sides the paper's reported spread: VOC ± "
            f"{voc} ({' / '.join(tables.METRICS)}, {PAPER_TRIALS} trials; MoCo detection README) for the MoCo "
            f"rows, linear {linear} (MoCo README). The paper's ± is the population std of its n_p trials, "
            "converted to the sample std s = ± · √(n_p/(n_p − 1)) before the test. The gap of our mean of n "
            "trials (networks for the linear cell) and the paper's of n_p has standard error s · √(1/n + 1/n_p), with n_p − 1 degrees of freedom; tested on our "
            "unrounded mean. Unmarked: no published spread. Two of our rows on their own trials: "
            "`python results/compare.py A B`.")


# -------------------------------------------------------------------------------------- row selection
def listed_labels(rows: Sequence[tables.Row]) -> list[str]:
    """The text that selects each row, as --list prints it: the row's label as the tables print it plus its
    epochs, as in the Sources table; where two rows would share it, with all departures (the table shows 3
    per stage); if still shared, with its first source's sha256 prefix."""
    names = [r.label + tables.epochs_suffix(r.key) for r in rows]
    for i, r in enumerate(rows):
        if names.count(names[i]) > 1:
            names[i] = tables.case_label(r.key.case, r.tag(None)) + tables.epochs_suffix(r.key)
    for i, r in enumerate(rows):
        if names.count(names[i]) > 1:
            names[i] += f" #{next((s.sha256[:12] for s in r.sources if s.sha256), i)}"
    return names


def _aliases(row: tables.Row) -> list[str]:
    """Other exact names of a row: the label without the epochs, and both with the case key ('d' for '(d)')."""
    tag = row.tag()
    keyform = row.key.case + (f" [{tag}]" if tag else "")
    return [row.label, keyform + tables.epochs_suffix(row.key), keyform]


def select_row(rows: Sequence[tables.Row], text: str, listed: Sequence[str] | None = None) -> int:
    """Index of the row `text` selects: an exact listed label, else an exact alias, else a unique prefix of a
    label or of a source sha256 (SHA_PREFIX_MIN+ hex digits). No match or several: UserError listing the
    candidates."""
    listed = list(listed) if listed is not None else listed_labels(rows)
    tiers = [
        [i for i, name in enumerate(listed) if name == text],
        [i for i, r in enumerate(rows) if text in _aliases(r)],
        [i for i, r in enumerate(rows) if any(n.startswith(text) for n in [listed[i], *_aliases(r)])
         or (re.fullmatch(r"[0-9a-fA-F]{%d,}" % SHA_PREFIX_MIN, text)
             and any(s.sha256 and s.sha256.startswith(text.lower()) for s in r.sources))],
    ]
    for found in tiers:
        found = list(dict.fromkeys(found))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{text!r} matches {len(found)} rows: " + "; ".join(repr(listed[i]) for i in found)
                            + " (pass one of these)")
    raise UserError(f"no row matches {text!r}; the rows are: " + "; ".join(map(repr, listed)))


# ------------------------------------------------------------------------------------ comparing rows
def _voc_sources(row: tables.Row) -> list:
    return [s for s in row.sources if s.trials]


def pairing_problem(a: tables.Row, b: tables.Row) -> str | None:
    """Why the two rows cannot be paired by seed (None: they can): each must have VOC trials from one network,
    every trial seeded, and the same seeds on both sides."""
    for side, row in (("A", a), ("B", b)):
        sources = _voc_sources(row)
        if len(sources) != 1:
            return f"{side} has VOC trials from {len(sources)} networks (pairing needs one network per row)"
        if any(t["seed"] is None for t in sources[0].trials.values()):
            return f"{side} has VOC trials without a seed"
    seeds_a, seeds_b = (set(_voc_sources(r)[0].trials) for r in (a, b))
    if seeds_a != seeds_b:
        fmt = lambda seeds: ", ".join(sorted((k[1] for k in seeds), key=lambda s: (len(s), s)))  # noqa: E731
        return f"the rows were fine-tuned with different seeds (A: {fmt(seeds_a)}; B: {fmt(seeds_b)})"
    return None


def _values(row: tables.Row, metric: str) -> list[float]:
    if metric == LINEAR:
        return list(row.linear_values)
    return [t[metric] for t in row.trials if t[metric] is not None]


def _paired_values(a: tables.Row, b: tables.Row, metric: str) -> tuple[list[float], list[float]]:
    ta, tb = _voc_sources(a)[0].trials, _voc_sources(b)[0].trials
    keys = [k for k in sorted(ta, key=lambda k: (len(k[1]), k[1]))
            if ta[k][metric] is not None and tb[k][metric] is not None]
    return [ta[k][metric] for k in keys], [tb[k][metric] for k in keys]


def default_metrics(a: tables.Row, b: tables.Row) -> list[str]:
    """The VOC metrics both rows have, and the linear top-1 when both rows have several networks."""
    out = [m for m in tables.METRICS if _values(a, m) and _values(b, m)]
    if len(a.linear_values) > 1 and len(b.linear_values) > 1:
        out.append(LINEAR)
    return out


def compare_rows(a: tables.Row, b: tables.Row, metrics: Sequence[str] | None = None, *, paired: bool = False,
                 names: tuple[str, str] = ("A", "B")) -> list[Comparison]:
    """One Comparison per metric (default_metrics when None). paired applies to the VOC metrics (the linear
    top-1 compares different networks: always Welch); UserError when the rows cannot be paired."""
    if paired:
        problem = pairing_problem(a, b)
        if problem:
            raise UserError(f"--paired: {problem}; drop --paired for Welch's test")
    metrics = list(metrics) if metrics else default_metrics(a, b)
    if not metrics:
        raise UserError("nothing to compare: the two rows share no VOC metric and do not both have several "
                        "networks with a linear top-1")
    out = []
    for m in metrics:
        pair = paired and m != LINEAR
        va, vb = _paired_values(a, b, m) if pair else (_values(a, m), _values(b, m))
        out.append(compare_values(va, vb, paired=pair, metric=m, a_name=names[0], b_name=names[1],
                                  unit="network" if m == LINEAR else "trial"))
    return out


# ------------------------------------------------------------------------------------------- output
def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def format_comparison(c: Comparison) -> str:
    """One line per metric; a second one with the trials needed when the verdict is 'not detectable'."""
    head = (f"{METRIC_TITLES.get(c.metric, c.metric)}: A {_num(c.mean_a)} (n {c.n_a}) vs B {_num(c.mean_b)} "
            f"(n {c.n_b})")
    if c.delta is not None:
        head += f"; A − B = {c.delta:+.2f}"
    if c.ci95 is not None:
        head += f", 95% CI [{c.ci95[0]:+.2f}, {c.ci95[1]:+.2f}]"
    if c.p_value is not None:
        head += f"; {c.test} p = {c.p_value:.3g}"
    lines = [f"{head} -> {c.verdict}"]
    if c.verdict == VERDICT_NONE:
        unit = "pairs" if c.test == "paired t-test" else ("networks" if c.metric == LINEAR else "trials") + \
            " per side"
        needed = (f"{c.trials_needed}" if c.trials_needed is not None else
                  "none would do (no observed difference)" if c.delta == 0 else f"more than {MAX_TRIALS}")
        lines.append(f"    {unit} needed to detect {c.delta:+.2f} at {ALPHA:.0%} with {POWER:.0%} power, "
                     f"given the observed spread: {needed}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", nargs="?", metavar="A", help="a row: its label as --list prints it, a unique "
                        "prefix of it, the case key (e.g. random-init, d) with its brackets, or a source sha256 "
                        f"prefix ({SHA_PREFIX_MIN}+ hex digits)")
    parser.add_argument("b", nargs="?", metavar="B", help="the row to compare A with (same forms)")
    parser.add_argument("--metric", nargs="+", choices=METRICS, default=None,
                        help="metrics to compare (default: the VOC metrics both rows have, and linear_top1 "
                             "when both rows have several networks)")
    parser.add_argument("--paired", action="store_true",
                        help="paired t-test on the VOC trials, matched by seed (both rows fine-tuned from one "
                             "network each, with the same seeds)")
    parser.add_argument("--runs", type=Path, default=None, metavar="DIR",
                        help="folder of run records (default: $MOCOEVAL_RESULTS_DIR, else results/runs)")
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
        rows = tables.collect_rows(results_store.load_records(runs))
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
