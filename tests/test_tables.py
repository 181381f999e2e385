"""Ablation tables and plots from fixture run records (results/make_tables.py, mocoeval.results.tables)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mocoeval.results import identity as protocol_identity
from mocoeval.results import paper as paper_numbers
from mocoeval.results import rows as table_rows
from mocoeval.results import statistics, tables
from mocoeval.results.store import (
    COCO_METRICS,
    REPO_ROOT,
    load_records,
    pretrain_variant,
    special_variant,
    write_run_record,
)
from mocoeval.runtime.errors import UserError
from mocoeval.runtime.fileio import atomic_write_json
from mocoeval.transfer.detection.benchmark import BENCHMARKS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The variants as records carry them (dicts: the tests spread and edit them).
V1 = pretrain_variant(dict(mlp=False, aug_plus=False, cos=False, epochs=200, moco_t=0.07)).to_record()
A = pretrain_variant(dict(mlp=True, aug_plus=False, cos=False, epochs=200, moco_t=0.2)).to_record()
D = pretrain_variant(
    dict(mlp=True, aug_plus=True, cos=True, epochs=200, batch_size=256, moco_k=65536, moco_t=0.2, moco_m=0.999)
).to_record()
K4096 = pretrain_variant(dict(mlp=True, aug_plus=True, cos=True, epochs=200, moco_k=4096), name="k4096").to_record()
TAU = pretrain_variant(dict(mlp=True, aug_plus=False, cos=False, epochs=200, moco_t=0.07), name="tau0.07").to_record()
SUP, RAND = special_variant("supervised").to_record(), special_variant("random-init").to_record()
# run_linear.py's argparse values under the official protocol (with the result-neutral keys a record carries).
LINEAR_CONFIG = dict(
    epochs=100,
    lr=30.0,
    schedule=[60, 80],
    batch_size=256,
    image_size=224,
    feature_norm=False,
    weight_decay=0.0,
    momentum=0.9,
    precision="fp32",
    data="/data/imagenet",
    output_dir="out",
    workers=4,
    print_freq=10,
    resume=None,
    device="cuda",
    seed=0,
    channels_last=False,
)


class Store:
    """Writes records through the real results_store API, with increasing dates (deterministic 'newest')."""

    def __init__(self, root: Path):
        self.root = root
        self.n = 0

    def add(self, stage, variant, sha, metrics=None, trials=None, extra=None, config=None, config_hash=None) -> Path:
        """Linear and VOC records run under the official protocol unless `config` / `config_hash` say otherwise."""
        if stage == "linear" and config is None:
            config = LINEAR_CONFIG
        if stage == "voc" and config_hash is None:
            config_hash = protocol_identity.official_config_hash(variant["name"])
        path = write_run_record(
            stage,
            variant=variant,
            metrics=metrics or {},
            source_sha256=sha,
            trials=trials,
            store_dir=self.root,
            extra=extra,
            config=config,
            config_hash=config_hash,
        )
        rec = json.loads(path.read_text())
        self.n += 1
        rec["date"] = f"2025-01-01T00:{self.n // 60:02d}:{self.n % 60:02d}+00:00"
        atomic_write_json(path, rec)
        return path

    def voc(self, variant, sha, *aps, seeds=None, opts=None, amp=False):
        """A VOC record; `opts` (Detectron2 KEY VALUE list) builds its config as run_voc.py's --opts would, `amp` as
        its --amp (on a GPU: the device is not part of the identity)."""
        seeds = seeds if seeds is not None else range(len(aps))
        trials = [
            {"trial": i, "seed": s, "AP50": ap[0], "AP": ap[1], "AP75": ap[2]}
            for i, (s, ap) in enumerate(zip(seeds, aps))
        ]
        config = config_hash = None
        if opts is not None or amp:
            from mocoeval.transfer.detection import config as voc_config

            cfg, _ = voc_config.build_config(
                REPO_ROOT / "configs" / "pascal_voc_R_50_C4_24k_moco.yaml",
                opts or [],
                device="cuda" if amp else "cpu",
                amp=amp,
            )
            config, config_hash = yaml.safe_load(cfg.dump()), protocol_identity.config_hash(cfg)
        return self.add("voc", variant, sha, trials=trials, config=config, config_hash=config_hash)


@pytest.fixture
def store(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("MOCOEVAL_RESULTS_DIR", str(runs))
    return Store(runs)


def fill_fixture(st: Store) -> None:
    """The fixture behind EXPECTED_TABLE, written in a scrambled order (the table order must not depend on it)."""
    st.add("linear", TAU, "t" * 64, {"top1": 62.9})
    # (d): two pretraining runs (sources d1, d2) pooled into one row.
    st.add("pretrain", D, "d1" * 32, {"final_loss": 6.123456})
    st.add("linear", D, "d1" * 32, {"top1": 60.0})  # replaced by the newer linear record of d1
    st.voc(D, "d1" * 32, (82.0, 57.0, 63.0), (99.0, 99.0, 99.0), seeds=[0, 1])  # seed 1 replaced below
    st.add("linear", K4096, "k" * 64, {"top1": 66.0})
    st.voc(D, "d1" * 32, (82.4, 57.2, 63.6), (82.6, 57.4, 64.0), seeds=[1, 2])  # a re-run adding seed 2
    st.add("linear", D, "d1" * 32, {"top1": 67.4})
    st.add("linear", D, "d2" * 32, {"top1": 67.8})
    st.voc(D, "d2" * 32, (82.2, 56.8, 63.4), (82.8, 57.6, 64.0), seeds=[0, 1])
    st.voc(A, "a" * 64, (81.8, 53.7, 60.0), (82.0, 53.9, 61.0))
    st.add("linear", V1, "v" * 64, {"top1": 60.6})
    st.voc(SUP, "s" * 64, (81.3, 53.5, 58.8), (81.5, 53.3, None))  # one trial without AP75
    st.add("linear", SUP, "s" * 64, {"top1": 76.1})
    st.voc(RAND, None, (60.2, 33.8, 33.1))


# Hand-computed: sup AP50 (81.3+81.5)/2 = 81.4, AP 53.4, AP75 58.8 (n=1); (a) AP50 81.9 -> gap +0.5 (bold),
# AP 53.8 -> +0.4 (not bold); (d) pools d1 seeds {0, 1 (newer), 2} and d2 seeds {0, 1}: AP50 82.0 82.4 82.6 82.2
# 82.8 -> 82.4 ± 0.283 (ddof 0); AP 57.2 ± 0.283; AP75 63.0 63.6 64.0 63.4 64.0 -> 63.6 ± 0.379; linear: d1's
# newest 67.4 and d2's 67.8 -> 67.6 ± 0.2 (2).
EXPECTED_TABLE = """\
| case | MLP | aug+ | cos | epochs | ImageNet acc. | VOC AP50 | VOC AP | VOC AP75 |
|:--|:-:|:-:|:-:|--:|--:|--:|--:|--:|
| random init |  |  |  |  | — | 60.2 (1) (-21.2) | 33.8 (1) (-19.6) | 33.1 (1) (-25.7) |
| supervised |  |  |  |  | 76.1 | 81.4 ± 0.1 (2) | 53.4 ± 0.1 (2) | 58.8 (1) |
| MoCo v1 |  |  |  | 200 | 60.6 | — | — | — |
| (a) | ✓ |  |  | 200 | — | 81.9 ± 0.1 (2) **(+0.5)** | 53.8 ± 0.1 (2) (+0.4) | 60.5 ± 0.5 (2) **(+1.7)** |
| (d) | ✓ | ✓ | ✓ | 200 | 67.6 ± 0.2 (2) | 82.4 ± 0.3 (5) **(+1.0)** | 57.2 ± 0.3 (5) **(+3.8)** | 63.6 ± 0.4 (5) **(+4.8)** |
| k4096 | ✓ | ✓ | ✓ | 200 | 66.0 | — | — | — |
| tau0.07 | ✓ |  |  | 200 | 62.9 | — | — | — |
"""


def build(store: Store, out: Path, plots=False):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean fixture must not warn
        return tables.build_outputs(store.root, out, plots=plots)


def test_markdown_table_exact(store, tmp_path):
    fill_fixture(store)
    rows = table_rows.collect_rows(load_records(store.root))
    assert tables.render_markdown_table(table_rows.ablation_frame(rows)) == EXPECTED_TABLE
    # The same table (plus notes) is what build_outputs writes into ablation.md.
    build(store, tmp_path / "out")
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert EXPECTED_TABLE in md
    assert "population std (ddof=0)" in md


def test_csv_columns_and_values(store, tmp_path):
    fill_fixture(store)
    build(store, tmp_path / "out")
    text = (tmp_path / "out" / "ablation.csv").read_text()
    lines = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == (
        "case,mlp,aug_plus,cos,epochs,extensions,linear_protocol,voc_protocol,linear_top1,"
        "linear_best_top1,AP50_mean,AP50_std,AP_mean,AP_std,AP75_mean,AP75_std,n_trials"
    )
    assert [ln["case"] for ln in lines] == ["random-init", "supervised", "moco_v1", "a", "d", "k4096", "tau0.07"]
    d = lines[4]
    assert (d["mlp"], d["aug_plus"], d["cos"], d["epochs"], d["n_trials"]) == ("True", "True", "True", "200", "5")
    assert float(d["linear_top1"]) == pytest.approx(67.6)
    assert float(d["AP50_mean"]) == pytest.approx(82.4)
    assert float(d["AP50_std"]) == pytest.approx(math.sqrt(0.08), abs=1e-5)  # ddof=0, not ddof=1 (0.316)
    assert float(d["AP75_std"]) == pytest.approx(math.sqrt(0.144), abs=1e-5)
    sup, rand = lines[1], lines[0]
    assert (sup["mlp"], sup["epochs"], sup["AP75_mean"], sup["AP75_std"], sup["n_trials"]) == ("", "", "58.8", "", "2")
    assert (rand["linear_top1"], rand["AP50_std"], rand["n_trials"]) == ("", "", "1")


def test_comparison_with_paper_numbers(store, tmp_path):
    fill_fixture(store)
    rows = table_rows.collect_rows(load_records(store.root))
    comp = tables.comparison_frame(table_rows.ablation_frame(rows), paper_numbers.load_paper_numbers())
    md = tables.render_comparison_markdown(comp)
    lines = md.splitlines()
    assert lines[0].startswith("| case | epochs (paper) | epochs (ours) | ImageNet acc. paper | ImageNet acc. ours |")
    # Every published case appears in table order; ours "—" where we have nothing.
    assert [ln.split(" | ")[0][2:] for ln in lines[2:]] == [
        "random init",
        "supervised",
        "MoCo v1",
        "(a)",
        "(b)",
        "(c)",
        "(d)",
        "(e)",
    ]
    assert "| random init |  |  | — | — | — | 60.2 | 60.2 | +0.0 | 33.8 | 33.8 | +0.0 | 33.1 | 33.1 | +0.0 |" in lines
    assert (
        "| supervised |  |  | 76.5 | 76.1 | -0.4 | 81.3 | 81.4 | +0.1 | 53.5 | 53.4 | -0.1 | 58.8 | 58.8 | +0.0 |"
        in lines
    )
    # Noise marks (rows with a published spread), by hand: s = ± * sqrt(5/4), bound = t(0.975, 4) * s *
    # sqrt(1/n + 1/5) with t(0.975, 4) = 2.7764: (a), n 2: AP50/AP 0.519, AP75 1.039; (d), n 5: AP50/AP 0.393,
    # AP75 0.785, linear (± 0.1, n 2) 0.260; MoCo v1 linear (± 0.2, n 1) 0.680.
    assert (
        "| (a) | 200 | 200 | 66.2 | — | — | 82.0 | 81.9 | -0.1 (within noise) | 56.4 | 53.8 | -2.6 (beyond noise) "
        "| 62.6 | 60.5 | -2.1 (beyond noise) |"
    ) in lines
    assert (
        "| (d) | 200 | 200 | 67.5 | 67.6 | +0.1 (within noise) | 82.4 | 82.4 | +0.0 (within noise) | 57.0 | 57.2 "
        "| +0.2 (within noise) | 63.6 | 63.6 | +0.0 (within noise) |"
    ) in lines
    assert "| MoCo v1 | 200 | 200 | 60.6 | 60.6 | +0.0 (within noise) | 81.5 | — | — |" in md
    assert "| (e) | 800 |  | 71.1 | — | — | 82.5 | — | — | 57.4 | — | — | 64.0 | — | — |" in lines
    noise = comp.set_index("case")[["AP50_within_noise", "AP_within_noise", "linear_top1_within_noise"]]
    assert noise.loc["a"].tolist() == [True, False, None] and noise.loc["supervised"].tolist() == [None] * 3


def test_paper_noise_bound_by_hand():
    """One cell worked through: (d) AP75 (± 0.4 over 5 trials) against our mean of 3 trials."""
    s = 0.4 * math.sqrt(5 / 4)  # the population std as the sample std
    expected = 2.7764451 * s * math.sqrt(1 / 3 + 1 / 5)  # t(0.975, df 4) from a table
    assert statistics.paper_noise_bound("d", "AP75", 3) == pytest.approx(expected, rel=1e-7)
    assert statistics.paper_gap_within_noise("d", "AP75", 63.6 + 0.99 * expected, 3, 63.6) is True
    assert statistics.paper_gap_within_noise("d", "AP75", 63.6 - 1.01 * expected, 3, 63.6) is False
    assert statistics.paper_gap_within_noise("supervised", "AP75", 70.0, 3, 58.8) is None  # no published spread


def test_no_supervised_row_means_no_gaps(store, tmp_path):
    store.voc(D, "d" * 64, (82.0, 57.0, 63.0))
    store.add("linear", D, "d" * 64, {"top1": 67.25})
    rows = table_rows.collect_rows(load_records(store.root))
    assert tables.render_markdown_table(table_rows.ablation_frame(rows)).splitlines()[2] == (
        "| (d) | ✓ | ✓ | ✓ | 200 | 67.2 | 82.0 (1) | 57.0 (1) | 63.0 (1) |"
    )
    # nor notes about gaps
    tables.build_outputs(store.root, tmp_path / "out", plots=False)
    md, tex = ((tmp_path / "out" / name).read_text() for name in (tables.OUT_MARKDOWN, tables.OUT_LATEX))
    assert "gap to the supervised" not in md and "gap to" not in tex


def test_row_order_is_fixed():
    keys = [
        table_rows.VariantKey(c, None, None, None, e)
        for c, e in [
            ("zeta", 1),
            ("e", 800),
            ("a", 200),
            ("supervised", None),
            ("d", 200),
            ("alpha", 5),
            ("moco_v1", 200),
            ("c", 200),
            ("random-init", None),
            ("d", 100),
            ("b", 200),
        ]
    ]
    ordered = [(k.case, k.epochs) for k in sorted(keys, key=table_rows.VariantKey.sort_key)]
    assert ordered == [
        ("random-init", None),
        ("supervised", None),
        ("moco_v1", 200),
        ("a", 200),
        ("b", 200),
        ("c", 200),
        ("d", 100),
        ("d", 200),
        ("e", 800),
        ("alpha", 5),
        ("zeta", 1),
    ]


def test_pretrain_variant_wins_for_a_source(store):
    store.add("pretrain", D, "x" * 64, {"final_loss": 7.0})
    bad = store.voc(A, "x" * 64, (80.0, 50.0, 55.0))  # claims (a) but its source was pretrained as (d)
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        rows = table_rows.collect_rows(load_records(store.root))
    assert [r.key.case for r in rows] == ["d"]
    assert len(rows[0].trials) == 1


def test_pooling_different_hyperparameters_warns_and_notes(store, tmp_path):
    store.add("linear", D, "p" * 64, {"top1": 67.0})
    store.add("linear", {**D, "moco_t": 0.07}, "q" * 64, {"top1": 65.0})
    with pytest.warns(UserWarning, match="moco_t"):
        tables.build_outputs(store.root, tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "Row (d) (200 ep) pools sources that differ in moco_t 0.07, 0.2." in md


# --warmup-epochs / --residual-bn-init / --residual-bn-ramp are extensions recorded only where used (absent: the recipe's value); a run
# with one gets its own row, labelled with it, which is never set against the paper's row of its case.
def test_extensions_get_their_own_rows_not_compared_with_the_paper(store, tmp_path):
    store.add("linear", D, "p" * 64, {"top1": 67.0})
    store.voc(D, "p" * 64, (82.0, 57.0, 63.0))
    store.add("linear", {**D, "residual_bn_init": 1.0}, "r" * 64, {"top1": 66.0})  # the recipe's value, written out
    store.add("linear", {**D, "residual_bn_init": 0.1}, "q" * 64, {"top1": 61.0})
    store.voc({**D, "residual_bn_init": 0.1}, "q" * 64, (8.0, 3.0, 2.0))
    store.voc({**RAND, "residual_bn_init": 0.1}, None, (20.0, 9.0, 7.0))
    store.voc(RAND, None, (22.0, 10.0, 8.0))
    store.add("linear", {**D, "warmup_epochs": 5}, "w" * 64, {"top1": 68.0})
    store.add("linear", {**D, "residual_bn_init": 0.1, "residual_bn_ramp": [6, 16]}, "g" * 64, {"top1": 63.0})
    store.add("linear", {**D, "residual_bn_ramp": None}, "n" * 64, {"top1": 68.0})  # no ramp, written out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is pooled across extensions, so nothing to warn about
        tables.build_outputs(store.root, tmp_path / "out")
    with open(tmp_path / "out" / "ablation.csv", newline="") as f:
        lines = [(r["case"], r["extensions"], r["linear_top1"], r["AP50_mean"]) for r in csv.DictReader(f)]
    assert lines == [
        ("random-init", "", "", "22"),
        ("random-init", "residual_bn_init 0.1", "", "20"),
        ("d", "", "67", "82"),
        ("d", "residual_bn_init 0.1", "61", "8"),
        ("d", "residual_bn_init 0.1, residual_bn_ramp 6-16", "63", ""),
        ("d", "warmup_epochs 5", "68", ""),
    ]
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| random init [residual_bn_init 0.1] |" in md
    assert "| (d) [warmup_epochs 5] | ✓ | ✓ | ✓ | 200 | 68.0 |" in md
    with open(tmp_path / "out" / "ablation_vs_paper.csv", newline="") as f:  # the recipe rows only
        assert [r["linear_top1_ours"] for r in csv.DictReader(f) if r["case"] == "d"] == ["67"]


def _rows(store):
    return table_rows.collect_rows(load_records(store.root))


# Issue 28 item 2: the README's short check (--trials 2 --opts SOLVER.MAX_ITER 200) after a full 5-trial run of
# the same weights used to be merged by seed into one row (seeds 0-1 short, 2-4 full). Each config hash is a row.
def test_voc_short_check_gets_its_own_row_and_leaves_the_full_one_unchanged(store, tmp_path):
    store.add("linear", D, "d" * 64, {"top1": 67.4})
    store.voc(D, "d" * 64, *[(82.0 + i / 10, 57.0, 63.0) for i in range(5)])
    store.voc(D, "d" * 64, (5.0, 1.0, 0.5), (6.0, 1.5, 0.7), opts=["SOLVER.MAX_ITER", "200"])  # newer, seeds 0-1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tables.build_outputs(store.root, tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| (d) | ✓ | ✓ | ✓ | 200 | 67.4 | 82.2 ± 0.1 (5) | 57.0 ± 0.0 (5) | 63.0 ± 0.0 (5) |" in md
    assert "| (d) [VOC: MAX_ITER 200] | ✓ | ✓ | ✓ | 200 | — | 5.5 ± 0.5 (2) | 1.2 ± 0.2 (2) | 0.6 ± 0.1 (2) |" in md
    with open(tmp_path / "out" / "ablation_vs_paper.csv", newline="") as f:  # only the full row meets the paper
        assert [r["AP50_ours"] for r in csv.DictReader(f) if r["case"] == "d"] == ["82.2"]
    with open(tmp_path / "out" / "ablation.csv", newline="") as f:
        assert [r["voc_protocol"] for r in csv.DictReader(f)] == ["", "MAX_ITER 200"]


def test_linear_short_probe_does_not_replace_the_full_one(store):
    store.add("linear", D, "d" * 64, {"top1": 60.0})
    store.add(
        "linear",
        D,
        "d" * 64,
        {"top1": 67.4, "best_top1": 67.6},  # same protocol: replaces the 60.0
        config={**LINEAR_CONFIG, "workers": 1, "output_dir": "elsewhere", "seed": 3, "lr": 30},
    )
    store.add(
        "linear", D, "d" * 64, {"top1": 40.0}, config={**LINEAR_CONFIG, "epochs": 10, "lr": 0.01, "feature_norm": True}
    )
    rows = _rows(store)
    assert [(r.label, r.linear_values) for r in rows] == [
        ("(d)", [67.4]),
        ("(d) [linear: 10 ep, lr 0.01, feature-norm]", [40.0]),
    ]
    assert [r.official for r in rows] == [True, False]


def test_source_with_one_identity_per_stage_is_one_row_and_sources_pool_by_identity(store):
    short = {**LINEAR_CONFIG, "epochs": 10}
    store.add("linear", D, "p" * 64, {"top1": 50.0}, config=short)
    store.voc(D, "p" * 64, (20.0, 10.0, 5.0), opts=["SOLVER.MAX_ITER", "200"])
    store.add("linear", D, "q" * 64, {"top1": 52.0}, config=short)  # another pretraining run, linear only
    store.voc(D, "r" * 64, (22.0, 11.0, 6.0), opts=["SOLVER.MAX_ITER", "200"])  # a third, VOC only
    store.add("linear", D, "s" * 64, {"top1": 67.0})  # official: a row of its own
    rows = _rows(store)
    assert [(r.label, sorted(r.linear_values), len(r.trials)) for r in rows] == [
        ("(d)", [67.0], 0),
        ("(d) [linear: 10 ep; VOC: MAX_ITER 200]", [50.0, 52.0], 2),
    ]


def test_an_amp_run_departs_from_the_protocol_and_its_label_says_amp(store):
    official = store.voc(D, "d" * 64, (82.0, 57.0, 63.0))
    amp = store.voc(D, "d" * 64, (81.8, 56.9, 62.8), amp=True)  # run_voc.py --amp
    identities = [protocol_identity.detection_identity(json.loads(p.read_text())) for p in (official, amp)]
    assert identities[0].official and identities[0].key != identities[1].key
    assert identities[1].departures == (("SOLVER.AMP.ENABLED", True),) and identities[1].describe() == "VOC: AMP"
    assert [(r.label, r.official) for r in _rows(store)] == [("(d)", True), ("(d) [VOC: AMP]", False)]


def test_labels_show_three_departures_the_notes_and_csv_all(store, tmp_path):
    store.add(
        "linear",
        D,
        "d" * 64,
        {"top1": 40.0, "best_top1": 41.5, "num_classes": 20},
        config={**LINEAR_CONFIG, "epochs": 10, "lr": 0.01, "feature_norm": True, "image_size": 64},
    )
    tables.build_outputs(store.root, tmp_path / "out", plots=False)
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "| (d) [linear: 10 ep, lr 0.01, feature-norm, +2 more] | ✓ | ✓ | ✓ | 200 | 40.0 |" in md
    assert "- Departures in full, linear: 10 ep, lr 0.01, feature-norm, 64 px, 20 classes (rows (d))." in md
    # Item 6: the table shows the final epoch's top-1 and says so; the best epoch's is in the CSV.
    assert "top-1 of the frozen features after the final epoch" in md
    with open(tmp_path / "out" / "ablation.csv", newline="") as f:
        line = next(csv.DictReader(f))
    assert (line["linear_top1"], line["linear_best_top1"]) == ("40", "41.5")
    assert line["linear_protocol"] == "10 ep, lr 0.01, feature-norm, 64 px, 20 classes"


def test_records_without_a_protocol_are_labelled_unknown(store):
    store.add("linear", D, "d" * 64, {"top1": 67.0}, config={})  # write_run_record stores no empty config
    store.add("voc", D, "d" * 64, trials=[{"seed": 0, "AP50": 80.0, "AP": 50.0, "AP75": 55.0}], config_hash="")
    assert [r.label for r in _rows(store)] == ["(d) [linear: protocol unknown; VOC: config unknown]"]


def test_corrupt_records_skipped_with_warning_naming_them(store, tmp_path):
    store.voc(SUP, "s" * 64, (81.3, 53.5, 58.8))
    broken = store.root / "20250101T000000_voc_broken.json"
    broken.write_text('{"stage": "voc", "variant": ')  # truncated JSON
    no_trials = store.add("voc", D, "n" * 64, {"AP50": {"mean": 82.0}})  # voc record without per-trial results
    bad_value = store.voc(A, "b" * 64, ("82.0", 57.0, 63.0))  # AP50 as a string
    bad_ramp = store.add("linear", {**D, "residual_bn_ramp": "6-16"}, "r" * 64, {"top1": 60.0})  # not a pair
    with pytest.warns(UserWarning) as caught:
        paths = tables.regenerate()  # default store from $MOCOEVAL_RESULTS_DIR, tables into its parent
    messages = "\n".join(str(w.message) for w in caught)
    for path in (broken, no_trials, bad_value, bad_ramp):
        assert str(path) in messages
    assert "residual_bn_ramp must be a number or a pair of numbers, got '6-16'" in messages
    assert {p.name for p in paths} >= {"ablation.md", "ablation.tex", "ablation.csv"}
    assert all(p.parent == tmp_path for p in paths)  # never the repository's results/
    csv_lines = (tmp_path / "ablation.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in csv_lines[1:]] == ["supervised"]


def test_regenerate_never_raises(store, tmp_path):
    store.voc(SUP, "s" * 64, (81.3, 53.5, 58.8))
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not regenerate"):
        assert tables.regenerate(store.root, blocker / "out") == []


def test_no_records_still_writes_paper_rows(tmp_path):
    runs = tmp_path / "store"
    runs.mkdir()
    paths = tables.build_outputs(runs)  # a store folder not named runs: outputs go inside it
    assert {p.parent for p in paths} == {runs}
    md = (runs / "ablation.md").read_text()
    assert "No run records found" in md
    assert "| (d) | 200 |  | 67.5 | — | — | 82.4 | — | — | 57.0 | — | — | 63.6 | — | — |" in md
    assert (runs / "ablation.csv").read_text().strip() == ",".join(table_rows.CSV_COLUMNS)
    assert "no run records yet" in (runs / "ablation.tex").read_text()
    for name in (tables.OUT_TRIALS_PNG, tables.OUT_LINEAR_VS_VOC_PNG):
        assert (runs / name).read_bytes()[:8] == PNG_MAGIC


def test_plots_written_and_nonempty(store, tmp_path):
    fill_fixture(store)
    paths = build(store, tmp_path / "out", plots=True)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert sorted(p.name for p in pngs) == sorted([tables.OUT_TRIALS_PNG, tables.OUT_LINEAR_VS_VOC_PNG])
    from matplotlib.image import imread

    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC
        img = imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    assert "![ablation_voc_trials](ablation_voc_trials.png)" in (tmp_path / "out" / "ablation.md").read_text()


def test_trial_plot_points_boxes_axes_and_legend():
    """Points for every trial, a box only from BOX_MIN_TRIALS trials, AP axes from >= 0, the paper's diamond for
    the recipe row (protocol or not) but not for a row with extensions, and a legend naming what is drawn."""
    from mocoeval.results import plots

    def trial(row, case, extensions=""):
        return dict(row=row, label="", case=case, epochs=None, official=False, extensions=extensions, source="s")

    lines = [
        {**trial(0, "random-init"), "seed": s, "AP50": v, "AP": v / 2, "AP75": v / 3} for s, v in enumerate((0.1, 0.4))
    ]
    lines += [
        {**trial(1, "random-init", "residual_bn_init 0.1"), "seed": s, "AP50": v, "AP": v, "AP75": v}
        for s, v in enumerate((0.0, 0.2, 0.3, 0.5, 0.9))
    ]
    frame = pd.DataFrame(lines)
    fig = plots.voc_trials_figure(frame, ["random", "random [ext]"], paper_numbers.load_paper_numbers())
    legend = fig.legends[0]
    for ax in fig.axes:
        assert ax.get_ylim()[0] >= 0.0
        points = [c for c in ax.collections if c.get_label().startswith("ours")]
        assert sum(len(c.get_offsets()) for c in points) == 7
        # a box (from 5 trials) is drawn for row 1 only: its median line sits at x 1 +- the box's half-width
        medians = [ln for ln in ax.lines if ln.get_color() == "black"]
        assert len(medians) == 1 and sum(medians[0].get_xdata()) / 2 == pytest.approx(1.0)
        drawn = {a.get_label() for a in [*ax.collections, *ax.lines] if not a.get_label().startswith("_")}
        assert drawn <= {t.get_text() for t in legend.get_texts()}
    # random init's published VOC numbers are far above these tiny values: drawn as an arrow at the edge
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["paper 60.2"]
    assert {t.get_text() for t in legend.get_texts()} == {
        "ours: one trial (colour: pretraining run)",
        f"quartiles (rows with >= {plots.BOX_MIN_TRIALS} trials)",
        "paper, off the axis",
    }


def test_latex_table(store, tmp_path):
    fill_fixture(store)
    store.add("linear", pretrain_variant(dict(epochs=10), name="my_run&co"), "m" * 64, {"top1": 1.0})
    build(store, tmp_path / "out")
    tex = (tmp_path / "out" / "ablation.tex").read_text()
    assert (
        "(d) & \\checkmark & \\checkmark & \\checkmark & 200 & 67.6 $\\pm$ 0.2 (2) & "
        "82.4 $\\pm$ 0.3 (5) \\textcolor{green!50!black}{(+1.0)} & "
    ) in tex
    assert "60.2 (1) ($-$21.2)" in tex
    assert "53.8 $\\pm$ 0.1 (2) (+0.4) &" in tex  # below +0.5: not coloured
    assert "my\\_run\\&co &  &  &  & 10 & 1.0 & -- & -- & -- \\\\" in tex
    assert "\\usepackage{xcolor}" in tex and tex.count("\\begin{tabular}") == 2


# Published numbers (protocol.md, "Published numbers"): case -> (linear top-1, AP50, AP, AP75).
PROTOCOL_TABLE1 = {
    "random-init": (None, 60.2, 33.8, 33.1),
    "supervised": (76.5, 81.3, 53.5, 58.8),
    "moco_v1": (60.6, 81.5, 55.9, 62.6),
    "a": (66.2, 82.0, 56.4, 62.6),
    "b": (63.4, 82.2, 56.8, 63.2),
    "c": (67.3, 82.5, 57.2, 63.9),
    "d": (67.5, 82.4, 57.0, 63.6),
    "e": (71.1, 82.5, 57.4, 64.0),
}


def test_paper_numbers_csv_matches_protocol():
    paper = paper_numbers.load_paper_numbers()
    assert (paper["source"] != "").all()
    by_case = paper_numbers.paper_by_case(paper)
    assert set(by_case) == set(PROTOCOL_TABLE1)
    for case, expected in PROTOCOL_TABLE1.items():
        line = by_case[case]
        got = tuple(None if math.isnan(line[c]) else line[c] for c in ("linear_top1", "AP50", "AP", "AP75"))
        assert got == expected, case
    assert "MoCo v1" in by_case["random-init"]["source"] and "Table 1" in by_case["d"]["source"]
    assert (by_case["d"]["mlp"], by_case["d"]["aug_plus"], by_case["d"]["cos"], by_case["d"]["epochs"]) == (
        True,
        True,
        True,
        200,
    )
    assert by_case["e"]["epochs"] == 800
    paper = paper[paper["coco_schedule"] == ""]  # the COCO lines reuse labels (supervised IN-1M, MoCo IG-1B)
    labels = dict(zip(paper["label"], zip(paper["AP50"], paper["AP"], paper["AP75"])))
    assert labels["MoCo IG-1B"] == (82.2, 57.2, 63.7)
    assert labels["end-to-end"] == (80.4, 54.6, 60.3) and labels["memory bank"] == (80.6, 54.9, 60.6)
    v1_sup = paper[(paper["label"] == "supervised IN-1M") & paper["source"].str.startswith("MoCo v1")]
    assert tuple(v1_sup[["AP50", "AP", "AP75"]].iloc[0]) == (81.3, 53.5, 58.8)
    linear = dict(zip(paper["label"], paper["linear_top1"]))
    assert [linear[f"w/o MLP tau {t}"] for t in ("0.07", "0.1", "0.2", "0.3", "0.4", "0.5")] == [
        60.6,
        60.7,
        59.0,
        58.2,
        57.2,
        56.4,
    ]
    assert [linear[f"w/ MLP tau {t}"] for t in ("0.07", "0.1", "0.2", "0.3", "0.4", "0.5")] == [
        62.9,
        64.9,
        66.2,
        65.7,
        65.0,
        64.3,
    ]
    assert [linear[f"momentum {m}"] for m in ("0.9", "0.99", "0.999", "0.9999")] == [55.2, 57.8, 59.0, 58.9]
    assert (
        linear["SimCLR 200 ep batch 256"],
        linear["SimCLR 200 ep batch 8192"],
        linear["SimCLR 1000 ep batch 4096"],
        linear["MoCo v2 800 ep"],
    ) == (61.9, 66.6, 69.3, 71.1)
    assert (
        linear["moco_v1_200ep_pretrain.pth.tar"],
        linear["moco_v2_200ep_pretrain.pth.tar"],
        linear["moco_v2_800ep_pretrain.pth.tar"],
    ) == (60.6, 67.7, 71.1)


def test_bad_paper_numbers_file_is_a_user_error(tmp_path):
    bad = tmp_path / "paper.csv"
    bad.write_text("source,label\nx,y\n")
    with pytest.raises(UserError, match=re.escape(str(bad))):
        paper_numbers.load_paper_numbers(bad)
    with pytest.raises(UserError, match="not found"):
        paper_numbers.load_paper_numbers(tmp_path / "missing.csv")


def _cli():
    from mocoeval.results import make_tables

    return make_tables


def test_cli(store, tmp_path, capsys):
    make_tables = _cli()
    store.voc(SUP, "s" * 64, (81.3, 53.5, 58.8))
    (store.root / "broken.json").write_text("[]")
    assert make_tables.main(["--runs", str(store.root), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'out' / 'ablation.md'}" in captured.out
    assert f"warning: skipping unreadable run record {store.root / 'broken.json'}" in captured.err
    with pytest.raises(SystemExit) as exit_info:
        make_tables.main(["--runs", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: runs folder not found: {tmp_path / 'nope'}"


EVIDENCE_DIR = REPO_ROOT / "results" / "claim-in-miniature"


def test_committed_evidence_is_what_its_records_generate(tmp_path):
    """results/claim-in-miniature holds the records of the README's "claim in miniature" runs and the tables
    make_tables.py wrote from them; regenerating must give the committed text files byte for byte (no hand edits,
    and a change to the table code shows up here)."""
    records = sorted((EVIDENCE_DIR / "runs").glob("*.json"))
    assert {json.loads(p.read_text())["stage"] for p in records} == {"pretrain", "linear", "voc"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every record must be well-formed: none skipped
        written = tables.build_outputs(EVIDENCE_DIR / "runs", tmp_path)
    texts = [p.name for p in written if p.suffix in (".md", ".tex", ".csv")]
    assert sorted(texts) == sorted([tables.OUT_MARKDOWN, tables.OUT_LATEX, tables.OUT_CSV, tables.OUT_PAPER_CSV])
    for name in texts:
        assert (tmp_path / name).read_text() == (EVIDENCE_DIR / name).read_text(), name
    assert (EVIDENCE_DIR / tables.OUT_TRIALS_PNG).read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------------------------------------------ COCO
@pytest.fixture
def coco_configs(tmp_path, monkeypatch):
    """The official COCO configs (another engineer adds the real ones): a configs folder with a stand-in
    coco_R_50_C4_2x{,_moco}.yaml, so that records can run under the official protocol."""
    configs = tmp_path / "configs"
    configs.mkdir()
    for path in (REPO_ROOT / "configs").glob("*.yaml"):  # the VOC ones and their base
        (configs / path.name).write_text(path.read_text())
    for name in ("coco_R_50_C4_2x.yaml", "coco_R_50_C4_2x_moco.yaml"):
        (configs / name).write_text(
            '_BASE_: "Base-RCNN-C4-BN.yaml"\nMODEL:\n  MASK_ON: True\n'
            + ("  PIXEL_STD: [58.395, 57.120, 57.375]\n" if "moco" in name else "")
        )
    monkeypatch.setattr(protocol_identity, "CONFIG_DIR", configs)
    protocol_identity._official_detection.cache_clear()
    yield configs
    protocol_identity._official_detection.cache_clear()


def _coco(store, variant, sha, *aps, seeds=None, config_hash=None):
    """A COCO record: per trial (box AP, mask AP); the other four metrics derived from them."""
    seeds = seeds if seeds is not None else range(len(aps))
    trials = [
        {
            "trial": i,
            "seed": s,
            "box_AP": b,
            "box_AP50": b + 20,
            "box_AP75": b + 2,
            "mask_AP": m,
            "mask_AP50": m + 20,
            "mask_AP75": m + 1,
        }
        for i, (s, (b, m)) in enumerate(zip(seeds, aps))
    ]
    h = config_hash or protocol_identity.official_config_hash(variant["name"], "coco")
    return store.add("coco", variant, sha, {}, trials=trials, config_hash=h)


def test_coco_records_get_their_own_table_and_columns(store, coco_configs, tmp_path):
    store.add("linear", D, "d" * 64, {"top1": 67.0})
    store.voc(D, "d" * 64, (82.0, 57.0, 63.0))
    _coco(store, D, "d" * 64, (40.0, 35.0), (41.0, 36.0))  # seeds 0, 1
    _coco(store, D, "d" * 64, (42.0, 37.0), (43.0, 38.0), seeds=[1, 2])  # a re-run: seed 1 replaced, 2 added
    _coco(store, SUP, "s" * 64, (40.0, 34.0))
    rows = table_rows.collect_rows(load_records(store.root))
    assert [(r.key.case, r.official, len(r.trials), len(r.coco_trials)) for r in rows] == [
        ("supervised", True, 0, 1),
        ("d", True, 1, 3),
    ]
    frame = table_rows.ablation_frame(rows)
    d = frame.iloc[1]
    assert (d["box_AP_mean"], d["box_AP_n"], d["mask_AP_mean"], d["coco_n_trials"]) == pytest.approx(
        (125 / 3, 3, 110 / 3, 3)
    )
    assert d["box_AP_std"] == pytest.approx(math.sqrt(14 / 9))  # population std of 40, 42, 43

    tables.build_outputs(store.root, tmp_path / "out", plots=False)
    md = (tmp_path / "out" / tables.OUT_MARKDOWN).read_text()
    assert "## Our results on COCO" in md
    assert "| (d) | 200 | 41.7 ± 1.2 (3) **(+1.7)** |" in md  # box AP of 40, 42, 43 vs supervised 40.0
    header = (tmp_path / "out" / tables.OUT_CSV).read_text().splitlines()[0].split(",")
    assert header == table_rows.CSV_COLUMNS + table_rows.COCO_CSV_COLUMNS
    assert "tab:mocoeval-coco" in (tmp_path / "out" / tables.OUT_LATEX).read_text()
    # the supervised row has COCO results only: gaps, and their note, in the COCO table only
    assert "with the gap to the supervised row in brackets." in md and "In brackets: the gap" not in md


def test_without_coco_records_there_is_no_coco_table(store, tmp_path):
    store.voc(D, "d" * 64, (82.0, 57.0, 63.0))
    tables.build_outputs(store.root, tmp_path / "out", plots=False)
    assert "COCO" not in (tmp_path / "out" / tables.OUT_MARKDOWN).read_text()
    assert "coco" not in (tmp_path / "out" / tables.OUT_CSV).read_text()


def test_coco_under_another_config_is_its_own_row(store, coco_configs):
    _coco(store, D, "d" * 64, (40.0, 35.0))
    _coco(store, D, "d" * 64, (5.0, 4.0), config_hash="f" * 64)  # e.g. a 1x or short schedule, config not stored
    rows = table_rows.collect_rows(load_records(store.root))
    assert [(r.label, len(r.coco_trials)) for r in rows] == [("(d)", 1), ("(d) [COCO: config ffffffffffff]", 1)]


def test_coco_is_never_official_without_its_configs(store):
    _coco(store, D, "d" * 64, (40.0, 35.0), config_hash="a" * 64)
    [row] = table_rows.collect_rows(load_records(store.root))
    assert not row.official and row.tag() == "COCO: config aaaaaaaaaaaa"


def test_malformed_coco_trials_are_skipped_with_a_warning(store):
    store.add("coco", D, "d" * 64, {}, trials=[{"trial": 0, "seed": 0, "box_AP": "n/a"}], config_hash="a" * 64)
    with pytest.warns(UserWarning, match="box_AP is not a finite number"):
        assert table_rows.collect_rows(load_records(store.root)) == []


def test_linear_vs_voc_labels_of_close_points_do_not_overlap():
    """The paper's (c) and (d) are 0.2 top-1 apart: one label goes above its point, the other below; a label of
    ours in the right half of the axes runs leftwards, so it stays inside."""
    from mocoeval.results import plots, rows

    assert plots.label_offsets([66.2, 67.3, 67.5, 71.1], gap=1.5) == [(5, -10), (5, 6), (5, -10), (5, -10)]
    up, down = (0, 4), (0, -24)  # ours: close in x and y alternate; close in x only do not
    assert plots.label_offsets([22.0, 29.5, 34.5], 8.0, up, down, ys=[0, 0, 0], y_gap=7.0) == [up, down, up]
    assert plots.label_offsets([47.8, 48.3], 4.3, up, down, ys=[10.1, 19.2], y_gap=7.0) == [up, up]
    frame = rows.ablation_frame(rows.collect_rows(load_records(EVIDENCE_DIR / "runs")))
    ax = plots.linear_vs_voc_figure(frame, paper_numbers.load_paper_numbers()).axes[0]
    labels = {t.get_text(): t for t in ax.texts}
    assert labels["c"].xyann[1] != labels["d"].xyann[1]
    ours = [t for t in ax.texts if t.get_color() == "tab:blue"]
    assert ours and all(t.get_horizontalalignment() == "left" for t in ours)  # all left of the axes' middle
    fig = plots.linear_vs_voc_figure(frame.assign(linear_top1=frame["linear_top1"] + 25), None)
    rightmost = max((t for t in fig.axes[0].texts if t.get_color() == "tab:blue"), key=lambda t: t.xy[0])
    assert rightmost.get_horizontalalignment() == "right" and rightmost.xyann[0] < 0


# Published COCO numbers (R50-C4 Mask R-CNN): case -> box AP / AP50 / AP75, mask AP / AP50 / AP75 (None: not
# published by that source), per schedule. MoCo v1 Table 5; (d), (e): InsLoc's MoCo v2 baseline (box / mask AP only).
COCO_PUBLISHED = {
    "2x": {
        "supervised": (40.0, 59.9, 43.1, 34.7, 56.5, 36.9),
        "moco_v1": (40.7, 60.5, 44.1, 35.4, 57.3, 37.6),
        "d": (40.7, None, None, 35.6, None, None),
        "e": (41.2, None, None, 35.8, None, None),
    },
    "1x": {
        "random-init": (26.4, 44.0, 27.8, 29.3, 46.9, 30.8),
        "supervised": (38.2, 58.2, 41.2, 33.3, 54.7, 35.2),
        "d": (38.9, None, None, 34.1, None, None),
        "e": (39.3, None, None, 34.3, None, None),
    },
}


def test_paper_numbers_csv_coco_lines():
    paper = paper_numbers.load_paper_numbers()
    assert list(paper.columns) == paper_numbers.PAPER_COLUMNS
    for schedule, expected in COCO_PUBLISHED.items():
        by_case = paper_numbers.paper_by_case(paper, schedule)
        assert set(by_case) == set(expected), schedule
        for case, numbers in expected.items():
            line = by_case[case]
            assert tuple(None if math.isnan(line[m]) else line[m] for m in COCO_METRICS) == numbers, (schedule, case)
            assert math.isnan(line["AP50"]) and math.isnan(line["linear_top1"])  # a COCO line holds COCO numbers only
            source = line["source"]
            assert source.startswith(
                "InsLoc (Yang et al. CVPR 2021)" if case in ("d", "e") else "MoCo v1 (He et al. CVPR 2020)"
            )
        for case in ("d", "e"):
            line = by_case[case]
            assert (line["mlp"], line["aug_plus"], line["cos"], line["epochs"]) == (
                True,
                True,
                True,
                200 if case == "d" else 800,
            )
    ig = paper[(paper["label"] == "MoCo IG-1B") & (paper["coco_schedule"] == "2x")].iloc[0]
    assert (ig["case"], ig["box_AP"], ig["mask_AP75"]) == ("", 41.1, 38.1)
    table5 = paper[paper["source"].str.contains("Table 5")]
    assert table5["note"].str.startswith("cross-checked against").all()  # each Table 5 line says how it was checked
    # the COCO lines of a case leave the VOC / linear lookup as it was (test_paper_numbers_csv_matches_protocol)
    assert paper_numbers.paper_by_case(paper)["supervised"]["AP50"] == 81.3
    # the compared schedule is the one whose config identity.py takes as the official COCO protocol
    moco_config = BENCHMARKS["coco"].configs[paper_numbers.COCO_PAPER_SCHEDULE]["torchvision"]
    assert moco_config.name == protocol_identity.COCO_MOCO_CONFIG
    assert paper_numbers.COCO_PAPER_SCHEDULE == BENCHMARKS["coco"].default_schedule
    assert set(paper_numbers.COCO_SCHEDULES) == set(BENCHMARKS["coco"].schedules)


@pytest.mark.parametrize(
    "line, column, value, message",
    [
        (-1, "box_AP", "n/a", "column box_AP line {line} is not a number: 'n/a'"),
        (-1, "coco_schedule", "3x", "column coco_schedule must be 2x/1x/empty, line {line} has '3x'"),
        (-1, "AP50", "60.0", "line {line}: a COCO line (coco_schedule set) has no linear or VOC numbers"),
        (1, "mask_AP", "30.0", "line {line}: a line with COCO numbers needs its coco_schedule"),
    ],
)
def test_bad_coco_paper_numbers_are_user_errors(tmp_path, line, column, value, message):
    raw = pd.read_csv(paper_numbers.PAPER_NUMBERS_CSV, dtype=str, keep_default_na=False)
    raw.loc[raw.index[line], column] = value
    bad = tmp_path / "paper.csv"
    raw.to_csv(bad, index=False)
    csv_line = raw.index[line] + 2  # the header is line 1
    with pytest.raises(UserError, match=re.escape(message.format(line=csv_line))):
        paper_numbers.load_paper_numbers(bad)


def _coco_comparison(md: str) -> list[str]:
    """The table lines of ablation.md's COCO comparison."""
    section = md.split("## Ours vs the published numbers on COCO\n\n")[1].split("\n\n")[0]
    return section.splitlines()[2:]


def test_official_coco_rows_are_compared_with_the_published_2x_numbers(store, coco_configs, tmp_path):
    # derived by _coco: box AP50 60.3, AP75 42.3; mask AP50 54.5, AP75 35.5
    _coco(store, SUP, "s" * 64, (40.3, 34.5))
    _coco(store, D, "d" * 64, (5.0, 4.0), config_hash="f" * 64)  # a short COCO run: never the paper's (d)
    store.voc(D, "d" * 64, (82.0, 57.0, 63.0))
    build(store, tmp_path / "out")
    out = tmp_path / "out"
    md = (out / tables.OUT_MARKDOWN).read_text()
    # Δ by hand: 40.3 − 40.0, 60.3 − 59.9, 42.3 − 43.1, 34.5 − 34.7, 54.5 − 56.5, 35.5 − 36.9; no noise marks
    assert _coco_comparison(md) == [
        "| supervised |  |  | 40.0 | 40.3 | +0.3 | 59.9 | 60.3 | +0.4 | 43.1 | 42.3 | -0.8 | 34.7 | 34.5 | -0.2 "
        "| 56.5 | 54.5 | -2.0 | 36.9 | 35.5 | -1.4 |",
        "| MoCo v1 | 200 |  | 40.7 | — | — | 60.5 | — | — | 44.1 | — | — | 35.4 | — | — | 57.3 | — | — | 37.6 | — | — |",
        "| (d) | 200 |  | 40.7 | — | — | — | — | — | — | — | — | 35.6 | — | — | — | — | — | — | — | — |",
        "| (e) | 800 |  | 41.2 | — | — | — | — | — | — | — | — | 35.8 | — | — | — | — | — | — | — | — |",
    ]
    coco_section = md.split("## Ours vs the published numbers on COCO")[1].split("## Sources")[0]
    assert "noise)" not in coco_section and "(d) and (e) from InsLoc (Yang et al. CVPR 2021)" in coco_section
    assert "The 1× lines of `results/paper_numbers.csv` (`coco_schedule` 1x) are compared with nothing" in coco_section
    with open(out / tables.OUT_COCO_PAPER_CSV, newline="") as f:
        lines = list(csv.DictReader(f))
    assert [ln["case"] for ln in lines] == ["supervised", "moco_v1", "d", "e"]
    assert not any(c.endswith("within_noise") for c in lines[0])
    assert (lines[0]["box_AP_paper"], lines[0]["box_AP_ours"], lines[0]["mask_AP50_diff"]) == ("40", "40.3", "-2")
    assert lines[0]["paper_source"] == "MoCo v1 (He et al. CVPR 2020), Table 5, R50-C4"
    assert (lines[2]["box_AP_paper"], lines[2]["box_AP_ours"], lines[2]["box_AP50_paper"]) == ("40.7", "", "")
    tex = (out / tables.OUT_LATEX).read_text()
    assert "\\label{tab:mocoeval-coco-vs-paper}" in tex
    assert "supervised &  &  & 40.0 & 40.3 & +0.3 & 59.9 & 60.3 & +0.4 & 43.1 & 42.3 & $-$0.8 &" in tex
    # the VOC / linear comparison is the one a store without COCO gets: its cases, columns, numbers
    with open(out / tables.OUT_PAPER_CSV, newline="") as f:
        voc = list(csv.DictReader(f))
    assert [ln["case"] for ln in voc] == list(PROTOCOL_TABLE1)
    assert list(voc[0]) == list(tables.comparison_frame(table_rows.ablation_frame([]), None).columns)
    by_case = {ln["case"]: ln for ln in voc}
    assert (by_case["supervised"]["AP50_paper"], by_case["supervised"]["AP50_ours"]) == ("81.3", "")
    assert by_case["d"]["AP50_ours"] == ""  # (d)'s row departs in COCO: not the paper's, in VOC either


def test_without_coco_records_there_is_no_coco_comparison(store, tmp_path):
    fill_fixture(store)
    written = build(store, tmp_path / "out")
    assert tables.OUT_COCO_PAPER_CSV not in {p.name for p in written}
    assert not (tmp_path / "out" / tables.OUT_COCO_PAPER_CSV).exists()
    assert "COCO" not in (tmp_path / "out" / tables.OUT_MARKDOWN).read_text()
    assert "coco" not in (tmp_path / "out" / tables.OUT_LATEX).read_text()
