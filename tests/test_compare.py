"""Decisive comparisons between table rows (mocoeval.compare, results/compare.py): values checked against scipy
directly, against published power tables, and by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from test_tables import RAND, A, D, Store  # the fixture writer of the table tests (real results_store API)

from mocoeval.results import compare, statistics
from mocoeval.results import paper as paper_numbers
from mocoeval.results import rows as table_rows
from mocoeval.results.store import REPO_ROOT, load_records

CLAIM_RUNS = REPO_ROOT / "results" / "claim-in-miniature" / "runs"
X, Y = [1.0, 2.0, 4.0], [2.0, 3.5, 5.0, 6.5]


@pytest.fixture
def store(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(runs))
    return Store(runs)


# ------------------------------------------------------------------------------------------- the tests
def test_welch_matches_scipy():
    c = statistics.compare_values(X, Y, metric="AP50")
    ref = stats.ttest_ind(X, Y, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (c.test, c.n_a, c.n_b) == ("Welch t-test", 3, 4)
    assert c.delta == pytest.approx(7 / 3 - 4.25)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert c.df == pytest.approx(ref.df, rel=1e-12)
    assert c.ci95 == pytest.approx([ci.low, ci.high], rel=1e-12)
    assert (c.sd_a, c.sd_b) == pytest.approx([stats.tstd(X), stats.tstd(Y)])  # sample std (ddof 1)
    assert c.verdict == statistics.VERDICT_NONE  # p 0.204


def test_paired_matches_scipy_and_sees_what_welch_does_not():
    a = [82.0, 82.9, 81.6, 82.5]  # per-seed results; B is A minus a small, steady gain
    b = [x - g for x, g in zip(a, [0.3, 0.4, 0.2, 0.35])]
    c = statistics.compare_values(a, b, paired=True)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert (c.test, c.df) == ("paired t-test", 3)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-12)  # 0.0053
    assert c.ci95 == pytest.approx([ci.low, ci.high], rel=1e-12)
    assert c.verdict == "A > B"
    welch = statistics.compare_values(a, b)
    assert welch.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)  # 0.436
    assert welch.verdict == statistics.VERDICT_NONE


def test_direction_of_the_verdict():
    assert statistics.compare_values(Y, [0.0, 0.5, 0.2]).verdict == "A > B"
    assert statistics.compare_values([0.0, 0.5, 0.2], Y).verdict == "A < B"


def test_equal_means():
    c = statistics.compare_values([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert (c.delta, c.p_value, c.verdict) == (0.0, 1.0, statistics.VERDICT_NONE)
    assert c.ci95[0] == pytest.approx(-c.ci95[1])
    assert c.trials_needed is None  # no difference: no number of trials detects it
    assert "none would do (no observed difference)" in compare.format_comparison(c)


def test_one_trial_on_a_side_is_n_too_small():
    c = statistics.compare_values([25.0], [19.0, 20.0, 21.0])
    assert (c.p_value, c.ci95, c.test, c.mean_a, c.delta) == (None, None, None, 25.0, 5.0)
    assert c.verdict == "n too small: A has 1 trial; a t-test needs at least 2 trials per side"
    c = statistics.compare_values([1.0, 2.0], [3.0], paired=False, unit="network")
    assert c.verdict == "n too small: B has 1 network; a t-test needs at least 2 networks per side"


@pytest.mark.filterwarnings("ignore:Precision loss")  # scipy, on the reference computation
def test_identical_values_leave_the_test_undefined():
    for a, b in (([2.0, 2.0, 2.0], [2.0, 2.0]), ([2.0, 2.0], [3.0, 3.0])):
        c = statistics.compare_values(a, b)
        assert (c.p_value, c.ci95, c.trials_needed) == (None, None, None)
        assert c.verdict.startswith("undefined: every value is identical on both sides")
    c = statistics.compare_values([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], paired=True)  # every difference is 1
    assert c.p_value is None and c.verdict.startswith("undefined: every paired difference is the same")
    # one side without spread is fine for Welch: it is then a one-sample test of the other side
    c = statistics.compare_values([2.0, 2.0], [1.0, 1.5, 0.5])
    assert c.p_value == pytest.approx(stats.ttest_ind([2.0, 2.0], [1.0, 1.5, 0.5], equal_var=False).pvalue)


def test_trials_needed_matches_published_power_tables():
    # Two-sided 5%, 80% power, equal spreads (Welch's df is then 2n − 2): n per group 64 / 26 / 17 for Cohen's
    # d 0.5 / 0.8 / 1.0 (G*Power, Cohen 1988); paired d_z 0.5: 34 pairs.
    assert [statistics.trials_needed(d, 1.0, 1.0) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    assert statistics.trials_needed(-0.4, 0.8, 0.8) == 64  # only |delta| / sd matters
    assert statistics.trials_needed(0.5, 1.0) == 34
    assert statistics.trials_needed(0.0, 1.0, 1.0) is None
    assert statistics.trials_needed(1e-6, 1.0, 1.0) is None  # beyond MAX_TRIALS


def test_not_detectable_prints_the_trials_needed():
    c = statistics.compare_values([82.0, 82.4, 82.2], [82.1, 82.3, 82.0], metric="AP50")
    assert c.verdict == statistics.VERDICT_NONE and c.trials_needed > 3
    text = compare.format_comparison(c)
    assert text.splitlines()[1] == (
        f"    trials per side needed to detect {c.delta:+.2f} at 5% with 80% power, "
        f"given the observed spread: {c.trials_needed}"
    )


def test_paper_spread_is_converted_to_the_sample_std():
    trials = [67.7, 67.6, 67.4, 67.6, 67.3]  # the MoCo README's v2 linear trials, reported as 67.5 ± 0.1
    population_std = float(np.std(trials))  # ddof 0: 0.147, the convention of the reported ±
    assert statistics.sample_std(population_std, 5) == pytest.approx(stats.tstd(trials), rel=1e-12)  # ddof 1
    assert paper_numbers.PAPER_SPREAD[("d", "linear_top1")] == (0.1, 5)
    assert (
        paper_numbers.PAPER_SPREAD[("c", "AP75")] == (0.4, 5)
        and ("supervised", "AP50") not in paper_numbers.PAPER_SPREAD
    )


# --------------------------------------------------------------------------------- rows and the command
def _claim_rows():
    return table_rows.collect_rows(load_records(CLAIM_RUNS))


RANDOM_LABEL = (
    "random init [linear: 10 ep, lr 0.01, feature-norm, +4 more; VOC: MAX_ITER 1500, IMS_PER_BATCH 4, "
    "BASE_LR 0.005, +10 more]"
)
D_LABEL = (
    "(d) [residual_bn_init 0.1, residual_bn_ramp 6-16; linear: 10 ep, lr 0.01, feature-norm, +4 more; VOC: "
    "MAX_ITER 1500, IMS_PER_BATCH 4, BASE_LR 0.005, +10 more] 24 ep"
)


def test_list_prints_the_labels_the_tables_print(capsys):
    assert compare.main(["--runs", str(CLAIM_RUNS), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [RANDOM_LABEL, RANDOM_LABEL.replace("[", "[residual_bn_init 0.1; "), D_LABEL]
    md = (CLAIM_RUNS.parent / "ablation.md").read_text()
    assert all(f"| {label} |" in md for label in listed)  # the Sources table's row column, verbatim


@pytest.mark.parametrize(
    "text",
    [D_LABEL, D_LABEL[:-6], "d [residual_bn_init 0.1, residual_bn_ramp 6-16", "(d)", "d", "eac1378e", "D698F52C"],
)
def test_selecting_a_row(text):
    rows = _claim_rows()
    assert compare.select_row(rows, text) == 2


def test_ambiguous_or_unknown_selection_is_a_one_line_error_listing_candidates():
    rows = _claim_rows()
    with pytest.raises(compare.UserError) as e:
        compare.select_row(rows, "random init")
    assert str(e.value) == (
        f"'random init' matches 2 rows: {RANDOM_LABEL!r}; "
        f"{RANDOM_LABEL.replace('[', '[residual_bn_init 0.1; ')!r} (pass one of these)"
    )
    with pytest.raises(compare.UserError, match=r"^no row matches 'zzz'; the rows are: 'random init \["):
        compare.select_row(rows, "zzz")


def test_claim_in_miniature_comparison(capsys):
    """The README's claim: (d) with the branch ramp beats torchvision's random init on VOC AP50 and AP
    (4 trials each), computed from the committed records."""
    assert (
        compare.main(["--runs", str(CLAIM_RUNS), "d", "random init [linear", "--metric", "AP50", "AP", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    hand = {
        "AP50": ([24.50, 23.93, 26.21, 26.64], [22.30, 18.53, 19.25, 16.84]),
        "AP": ([11.34, 10.92, 12.10, 12.17], [10.03, 8.03, 7.67, 7.32]),
    }  # README, 2 decimals
    assert [c["metric"] for c in out] == ["AP50", "AP"]
    for c in out:
        a, b = hand[c["metric"]]
        assert {"metric", "a", "b", "n_a", "n_b", "mean_a", "mean_b", "delta", "ci95", "p_value", "test"} <= set(c)
        assert (c["a"], c["b"], c["n_a"], c["n_b"], c["test"]) == (D_LABEL, RANDOM_LABEL, 4, 4, "Welch t-test")
        assert (c["mean_a"], c["mean_b"]) == pytest.approx([sum(a) / 4, sum(b) / 4], abs=0.005)
        assert c["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=0.02)
        assert c["ci95"][0] > 0 and c["p_value"] < 0.01
        assert c["verdict"] == "A > B"


def test_script_as_subprocess():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, str(REPO_ROOT / "results" / "compare.py"), "--runs", str(CLAIM_RUNS)]
    done = subprocess.run(cmd + ["(d)", RANDOM_LABEL], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == [f"A: {D_LABEL}", f"B: {RANDOM_LABEL}"]
    assert lines[2].startswith(
        "VOC AP50: A 25.32 (n 4) vs B 19.23 (n 4); A − B = +6.09, 95% CI [+2.66, +9.52]; "
        "Welch t-test p = 0.00635 -> A > B"
    )
    assert lines[5].startswith("linear top-1: A 57.67 (n 3) vs B 48.33 (n 3)")  # 3 networks a side
    done = subprocess.run(cmd + ["random", "(d)"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: 'random' matches 2 rows: ")
    assert len(done.stderr.strip().splitlines()) == 1
    # --help answers without importing scipy
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from mocoeval.results import compare\n"
            "try: compare.main(['--help'])\nexcept SystemExit: print('scipy' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.stdout.startswith("usage: compare.py") and done.stdout.strip().endswith("False")


def _paired_store(store, seeds_b=(0, 1, 2, 3)):
    d = [82.0, 82.9, 81.6, 82.5]
    a = [x - g for x, g in zip(d, [0.3, 0.4, 0.2, 0.35])]
    store.voc(D, "d" * 64, *[(x, 57.0 + i / 10, 63.0) for i, x in enumerate(d)], seeds=[0, 1, 2, 3])
    store.voc(A, "a" * 64, *[(x, 56.5, 62.0 + i / 10) for i, x in enumerate(a)], seeds=list(seeds_b))
    return d, a


def test_paired_cli_matches_scipy(store, capsys):
    d, a = _paired_store(store)
    assert compare.main(["d", "a", "--paired", "--json"]) == 0  # the store of $MOCOEVAL_RESULTS_DIR
    out = {c["metric"]: c for c in json.loads(capsys.readouterr().out)}
    assert list(out) == ["AP50", "AP", "AP75"]  # one network a side: no linear comparison
    assert out["AP50"]["test"] == "paired t-test" and out["AP50"]["verdict"] == "A > B"
    assert out["AP50"]["p_value"] == pytest.approx(stats.ttest_rel(d, a).pvalue, rel=1e-9)
    assert out["AP"]["p_value"] == pytest.approx(stats.ttest_rel([57.0, 57.1, 57.2, 57.3], [56.5] * 4).pvalue)
    assert compare.main(["d", "a", "--json"]) == 0
    welch = json.loads(capsys.readouterr().out)[0]
    assert welch["test"] == "Welch t-test" and welch["verdict"] == statistics.VERDICT_NONE


def test_paired_needs_the_same_seeds(store, capsys):
    _paired_store(store, seeds_b=(0, 1, 2, 7))
    with pytest.raises(SystemExit) as e:
        compare.main(["d", "a", "--paired"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "error: --paired: the rows were fine-tuned with different seeds (A: 0, 1, 2, "
        "3; B: 0, 1, 2, 7); drop --paired for Welch's test\n"
    )


def test_linear_needs_several_networks(store, capsys):
    store.add("linear", D, "d" * 64, {"top1": 67.4})
    store.add("linear", D, "e" * 64, {"top1": 67.8})
    store.add("linear", RAND, "r" * 64, {"top1": 5.0})
    rows = table_rows.collect_rows(load_records(store.root))
    assert compare.default_metrics(rows[1], rows[0]) == []  # random init has one network
    with pytest.raises(compare.UserError, match="^nothing to compare"):
        compare.compare_rows(rows[1], rows[0])
    (c,) = compare.compare_rows(rows[1], rows[0], ["linear_top1"])
    assert c.verdict == "n too small: B has 1 network; a t-test needs at least 2 networks per side"
    store.add("linear", RAND, "s" * 64, {"top1": 6.0})
    rows = table_rows.collect_rows(load_records(store.root))
    assert compare.default_metrics(rows[1], rows[0]) == ["linear_top1"]
    (c,) = compare.compare_rows(rows[1], rows[0])
    assert c.p_value == pytest.approx(stats.ttest_ind([67.4, 67.8], [5.0, 6.0], equal_var=False).pvalue)


def test_bad_input_is_one_line(store, capsys, tmp_path):
    store.add("linear", D, "d" * 64, {"top1": 67.4})
    for argv, message in (
        (["d", "d"], "error: A and B select the same row: '(d) 200 ep'"),
        (["--runs", str(tmp_path / "nope"), "a", "b"], f"error: runs folder not found: {tmp_path / 'nope'}"),
    ):
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        assert e.value.code == 2 and capsys.readouterr().err == message + "\n"


def test_coco_metrics_compare_when_both_rows_have_them(store):
    def coco(variant, sha, box, seeds):
        trials = [
            {
                "trial": i,
                "seed": s,
                "box_AP": b,
                "box_AP50": b + 20,
                "box_AP75": b + 2,
                "mask_AP": b - 4,
                "mask_AP50": b + 16,
                "mask_AP75": b - 3,
            }
            for i, (s, b) in enumerate(zip(seeds, box))
        ]
        store.add("coco", variant, sha, {}, trials=trials, config_hash="c" * 64)

    coco(D, "d" * 64, [40.0, 40.5, 41.0], [0, 1, 2])
    coco(RAND, "r" * 64, [30.0, 31.0, 30.5], [0, 1, 2])
    rows = table_rows.collect_rows(load_records(store.root))
    assert [r.key.case for r in rows] == ["random-init", "d"]
    assert compare.default_metrics(rows[1], rows[0]) == list(compare.COCO_METRICS)
    c = compare.compare_rows(rows[1], rows[0], ["box_AP"], paired=True)[0]
    assert c.test == "paired t-test" and c.delta == pytest.approx(10.0)
    assert c.p_value == pytest.approx(stats.ttest_rel([40.0, 40.5, 41.0], [30.0, 31.0, 30.5]).pvalue)
    assert compare.format_comparison(c).startswith("COCO box AP: A 40.50 (n 3) vs B 30.50 (n 3)")
