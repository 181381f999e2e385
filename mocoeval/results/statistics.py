"""The statistics behind compare.py and the tables' "within noise" marks: Welch / paired t-tests with a 95%
interval of the difference, the trials a difference needs (80% power at 5%), and the gap to the paper's number
under the paper's own reported spread. Pure functions of numbers; scipy is imported only when a test runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from mocoeval.results.paper import CASE_LABELS, PAPER_SPREAD, PAPER_TRIALS, VOC_PAPER_STD
from mocoeval.results.store import LINEAR_METRIC, VOC_METRICS

ALPHA = 0.05  # two-sided test level; the confidence interval is 1 − ALPHA
POWER = 0.80  # for trials_needed
MAX_TRIALS = 100_000  # trials_needed gives up beyond this (a difference that small is noise for any real budget)
VERDICT_NONE = "no difference detectable with these trials"


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


def compare_values(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool = False,
    metric: str = "",
    a_name: str = "A",
    b_name: str = "B",
    unit: str = "trial",
) -> Comparison:
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
    out = Comparison(
        metric, a_name, b_name, len(a), len(b), mean_a, mean_b, sd_a, sd_b, delta, None, None, None, None, ""
    )
    small = [(side, n) for side, n in (("A", len(a)), ("B", len(b))) if n < 2]
    if small:
        unit_ = "pair" if paired else unit
        out.verdict = (
            "n too small: "
            + ", ".join(f"{s} has {n} {unit_}{'' if n == 1 else 's'}" for s, n in small)
            + f"; a t-test needs at least 2 {unit_}s"
            + ("" if paired else " per side")
        )
        return out
    if paired:
        diffs = [x - y for x, y in zip(a, b)]
        _, sd_d = _mean_sd(diffs)
        se, df, test = sd_d / math.sqrt(len(diffs)), len(diffs) - 1, "paired t-test"
    else:
        va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
        se, test = math.sqrt(va + vb), "Welch t-test"
        # Welch–Satterthwaite degrees of freedom
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else None
    out.test = test
    if se == 0:
        out.verdict = (
            "undefined: every paired difference is the same (no spread to test against)"
            if paired
            else "undefined: every value is identical on both sides (no spread to test against)"
        )
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
        va, vb = sd_a**2, sd_b**2
        se, df = math.sqrt((va + vb) / n), (va + vb) ** 2 * (n - 1) / (va**2 + vb**2)
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
    voc = " / ".join(f"{VOC_PAPER_STD[m]}" for m in VOC_METRICS)
    linear = ", ".join(
        f"{CASE_LABELS[c]} ± {s} ({n} trials)" for (c, m), (s, n) in PAPER_SPREAD.items() if m == LINEAR_METRIC
    )
    return (
        f"Within / beyond noise: whether Δ lies inside the {1 - ALPHA:.0%} interval of a two-sample t-test "
        "that gives both sides the paper's reported spread: VOC ± "
        f"{voc} ({' / '.join(VOC_METRICS)}, {PAPER_TRIALS} trials; MoCo detection README) for the MoCo "
        f"rows, linear {linear} (MoCo README). The paper's ± is the population std of its n_p trials, "
        "converted to the sample std s = ± · √(n_p/(n_p − 1)) before the test. The gap of our mean of n "
        "trials (networks for the linear cell) and the paper's of n_p has standard error s · √(1/n + 1/n_p), with n_p − 1 degrees of freedom; tested on our "
        "unrounded mean. Unmarked: no published spread. Two of our rows on their own trials: "
        "`python results/compare.py A B`."
    )
