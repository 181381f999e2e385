"""Ablation tables from the results store: records -> one row per variant -> Markdown, LaTeX, CSV.

How records become table rows (the rules the tests pin down):

1. **Records.** `results_store.load_records` reads every `*.json` in the store; an unreadable file, or a
   record whose variant/metrics/trials are malformed, is skipped with a warning naming the file.
   Records are ordered oldest -> newest by their `date`, then file mtime, then file name.
2. **Sources.** Records of the same weights join by `source_sha256` (the sha256 of the pretraining
   checkpoint, or of whatever checkpoint was evaluated). Records without a sha256 (random init) join a
   pseudo-source per variant. A source's variant is its newest *pretrain* record's variant (the
   pretraining config is authoritative), else its newest record's; a record that disagrees is reported
   with a warning and counted under the source's variant.
3. **Per source, stage and protocol identity** (`protocol_identity`: linear = every run_linear.py setting
   that changes the number, VOC = the config hash). linear: the newest record's final-epoch `top1` per
   identity (a re-run under the same identity replaces the older one; another identity never does). voc: the
   per-trial results of the source's voc records of one identity are merged by seed, and the newest record
   wins for a seed (a `run_voc.py` re-run that adds seeds adds trials; one that repeats a seed replaces
   it). Trials without a seed are all kept. Trials of different identities are never pooled.
4. **Splitting a source.** A source with at most one identity per stage is one unit (its linear and VOC side
   by side). In a stage with several identities the official one (else none) stays with the other stage's
   result; every other identity becomes a unit of its own, with the other stage empty.
5. **Rows.** A row is the variant key (case name, mlp, aug_plus, cos, epochs, and the extensions beyond the
   recipe, `results_store.RECIPE_EXTENSIONS`, e.g. a residual-BN init of 0.1) x the linear identity x the VOC
   identity. A unit missing a stage joins a row that agrees on the variant and its present stage(s) (the
   official one if there are several; else its own row). Extensions and departures from the protocol are
   in the row's label in brackets (at most `LABEL_DEPARTURES` per stage, the full list in the CSV and the
   notes), and such a row is never compared with the paper's numbers.
   Several sources in one row (e.g. two pretraining runs of (d) with different seeds) are pooled:
   the VOC cells pool the trials of all sources, the ImageNet cell is the mean over the sources' linear
   results (with n). Other hyperparameters (batch, K, T, m, arch, image size) are not part of the key: when
   the sources of a row differ in them, a warning is emitted and the Markdown table gets a note —
   give such runs their own variant name to get their own row.
6. **Numbers.** The ImageNet cell is the final epoch's top-1 (the CSV also has the best epoch's,
   `linear_best_top1`, which main_lincls tracks as best_acc1: picking the best on the validation set flatters). std is the population std (ddof=0), the convention of the official "±" numbers. The gap
   to the supervised row is the difference of the displayed (1-decimal) means, so the table is
   self-consistent; it is highlighted when >= +0.5, as in the MoCo papers.
7. **Order.** random-init, supervised, moco_v1, a, b, c, d, e, then other names alphabetically; within a
   case by epochs, then the switches (unknown first), extensions, then the official protocol before others.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from mocoeval.results import store as results_store
from mocoeval.results.paper import CASE_LABELS, load_paper_numbers, paper_by_case
from mocoeval.results.statistics import paper_gap_within_noise, paper_noise_note
from mocoeval.results.store import VOC_METRICS as METRICS
from mocoeval.results.identity import Identity, linear_identity, voc_identity
from mocoeval.runtime.fileio import atomic_write_text

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["case", "mlp", "aug_plus", "cos", "epochs", "extensions", "linear_protocol", "voc_protocol",
               "linear_top1", "linear_best_top1", "AP50_mean", "AP50_std", "AP_mean", "AP_std", "AP75_mean",
               "AP75_std", "n_trials"]
LABEL_DEPARTURES = 3  # per stage in a row label; the CSV and the notes have them all
CASE_ORDER = ("random-init", "supervised", "moco_v1", "a", "b", "c", "d", "e")
HIGHLIGHT_GAP = 0.5  # the MoCo papers highlight gains over supervised of at least 0.5 point
MISSING = "—"
# Hyperparameters outside the row key; sources pooled into one row should agree on them.
POOLED_HYPERPARAMS = ("batch_size", "moco_k", "moco_t", "moco_m", "arch", "image_size")

# Output file names (inside the output folder).
OUT_MARKDOWN = "ablation.md"
OUT_LATEX = "ablation.tex"
OUT_CSV = "ablation.csv"
OUT_PAPER_CSV = "ablation_vs_paper.csv"
OUT_TRIALS_PNG = "ablation_voc_trials.png"
OUT_LINEAR_VS_VOC_PNG = "ablation_linear_vs_voc.png"


# ----------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class VariantKey:
    """What makes a table row: the case name, the three MoCo v2 switches, the pretraining epochs, and the
    extensions beyond the recipe ((name, value) pairs in RECIPE_EXTENSIONS order; empty for the recipe)."""

    case: str
    mlp: bool | None
    aug_plus: bool | None
    cos: bool | None
    epochs: int | None
    extensions: tuple = ()

    @classmethod
    def from_variant(cls, variant: Mapping[str, Any]) -> "VariantKey":
        name = variant.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"variant has no name: {variant!r}")
        switches = []
        for flag in ("mlp", "aug_plus", "cos"):
            value = variant.get(flag)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"variant {flag} must be true/false/null, got {value!r}")
            switches.append(value)
        epochs = variant.get("epochs")
        if epochs is not None:
            if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs != int(epochs):
                raise ValueError(f"variant epochs must be an integer, got {epochs!r}")
            epochs = int(epochs)
        for ext, recipe_value in results_store.RECIPE_EXTENSIONS.items():
            value = variant.get(ext, recipe_value)
            if not (_is_number(value) or (recipe_value is None and value is None)  # e.g. no ramp
                    or (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value)))):
                raise ValueError(f"variant {ext} must be a number or a pair of numbers, got {variant[ext]!r}")
        return cls(name, *switches, epochs, results_store.recipe_departures(variant))

    def sort_key(self) -> tuple:
        rank = CASE_ORDER.index(self.case) if self.case in CASE_ORDER else len(CASE_ORDER)
        unknown_first = lambda v: (v is not None, v if v is not None else 0)  # noqa: E731
        return (rank, self.case, unknown_first(self.epochs), unknown_first(self.mlp), unknown_first(self.aug_plus),
                unknown_first(self.cos), self.extensions)

    def describe(self) -> str:
        flags = ", ".join([f"{k}={getattr(self, k)}" for k in ("mlp", "aug_plus", "cos", "epochs")]
                          + [f"{k}={v}" for k, v in self.extensions])
        return f"{self.case} ({flags})"

    def extensions_text(self) -> str:
        """The extensions as the CSV's `extensions` cell and the row label show them, e.g. 'residual_bn_init 0.1'."""
        return results_store.describe_departures(self.extensions)


@dataclass
class Source:
    """One set of weights (one source checkpoint) and what every stage measured on it."""

    source_id: str
    sha256: str | None
    key: VariantKey
    variant: dict
    pretrain: dict | None = None  # newest pretrain record
    linear: dict | None = None  # newest linear record of linear_id
    trials: dict = field(default_factory=dict)  # merge key -> {seed, AP50, AP, AP75, record}, of voc_id
    record_paths: list = field(default_factory=list)
    linear_id: Identity | None = None
    voc_id: Identity | None = None


@dataclass
class Row:
    key: VariantKey
    sources: list
    linear_id: Identity | None = None
    voc_id: Identity | None = None

    @property
    def official(self) -> bool:
        """Run under the official protocol in every stage it has (and the recipe): comparable with the paper."""
        return not self.key.extensions and all(i is None or i.official for i in (self.linear_id, self.voc_id))

    def tag(self, limit: int | None = LABEL_DEPARTURES) -> str:
        """What the label's brackets say: extensions, then each stage's departures from the protocol."""
        return "; ".join(filter(None, [self.key.extensions_text()] + [
            i.describe(limit) for i in (self.linear_id, self.voc_id) if i is not None]))

    @property
    def label(self) -> str:
        return case_label(self.key.case, self.tag())

    def sort_key(self) -> tuple:
        ident = lambda i: (0, "") if i is None or i.official else (1, i.describe())  # noqa: E731
        return (self.key.sort_key(), ident(self.linear_id), ident(self.voc_id))

    @property
    def trials(self) -> list[dict]:
        return [t for s in self.sources for t in s.trials.values()]

    @property
    def linear_values(self) -> list[float]:
        return [s.linear["metrics"]["top1"] for s in self.sources if s.linear is not None]

    @property
    def linear_best_values(self) -> list[float]:
        return [s.linear["metrics"].get("best_top1") for s in self.sources if s.linear is not None]

    def differing_hyperparams(self) -> dict[str, list]:
        out = {}
        for name in POOLED_HYPERPARAMS:
            values = {repr(v): v for v in (s.variant.get(name) for s in self.sources)}
            if len(values) > 1:
                out[name] = sorted(values.values(), key=repr)
        return out


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _record_order(rec: Mapping) -> tuple:
    """Oldest first: record date, then file mtime (records written within one second), then file name."""
    try:
        date = _dt.datetime.fromisoformat(str(rec.get("date"))).timestamp()
    except (TypeError, ValueError):
        date = float("-inf")
    path = rec.get("_path") or ""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = 0
    return (date, mtime, path)


def _check_record(rec: Mapping) -> VariantKey:
    """Validate the parts of a record the tables use; raise ValueError saying what is wrong."""
    if not isinstance(rec.get("variant"), Mapping):
        raise ValueError("variant is not an object")
    key = VariantKey.from_variant(rec["variant"])
    metrics = rec.get("metrics")
    if not isinstance(metrics, Mapping):
        raise ValueError("metrics is not an object")
    sha = rec.get("source_sha256")
    if sha is not None and (not isinstance(sha, str) or not sha):
        raise ValueError(f"source_sha256 must be a string or null, got {sha!r}")
    if rec["stage"] == "linear" and not _is_number(metrics.get("top1")):
        raise ValueError(f"linear record without a numeric metrics.top1 (got {metrics.get('top1')!r})")
    if rec["stage"] == "voc":
        trials = rec.get("trials")
        if not isinstance(trials, list) or not trials:
            raise ValueError("voc record without per-trial results (trials)")
        for t in trials:
            if not isinstance(t, Mapping):
                raise ValueError(f"trial is not an object: {t!r}")
            for m in METRICS:
                v = t.get(m)
                if v is not None and not _is_number(v):
                    raise ValueError(f"trial {t.get('trial')!r}: {m} is not a finite number ({v!r})")
            if t.get("seed") is not None and not isinstance(t.get("seed"), (int, str)):
                raise ValueError(f"trial {t.get('trial')!r}: seed must be an integer, got {t.get('seed')!r}")
    return key


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def collect_rows(records: Iterable[Mapping]) -> list[Row]:
    """Join records into sources and sources into ordered rows (rules in the module docstring)."""
    checked = []
    for rec in records:
        try:
            checked.append((rec, _check_record(rec)))
        except (ValueError, TypeError) as e:
            _warn(f"skipping malformed run record {rec.get('_path', '<in memory>')}: {e}")
    checked.sort(key=lambda rk: _record_order(rk[0]))

    # Group by source; a source's variant comes from its newest pretrain record, else its newest record.
    by_source: dict[str, list] = {}
    for rec, key in checked:
        sha = rec.get("source_sha256")
        sid = sha if sha else f"no-source:{key!r}"
        by_source.setdefault(sid, []).append((rec, key))
    units = []
    for sid, recs in by_source.items():
        pretrain = [rk for rk in recs if rk[0]["stage"] == "pretrain"]
        ref_rec, ref_key = (pretrain or recs)[-1]
        src = Source(sid, ref_rec.get("source_sha256"), ref_key, dict(ref_rec["variant"]))
        linear: dict = {}  # identity key -> (Identity, newest record)
        voc: dict = {}  # identity key -> (Identity, {merge key: trial})
        for rec, key in recs:  # oldest -> newest: later records overwrite
            src.record_paths.append(rec.get("_path"))
            if key != ref_key:
                _warn(f"run record {rec.get('_path')} names variant {key.describe()} but its source "
                      f"{(src.sha256 or '')[:12]} is {ref_key.describe()}; counted as the latter")
            stage = rec["stage"]
            if stage == "pretrain":
                src.pretrain = rec
            elif stage == "linear":
                ident = linear_identity(rec)
                linear[ident.key] = (ident, rec)
            else:
                ident = voc_identity(rec)
                trials = voc.setdefault(ident.key, (ident, {}))[1]
                for i, t in enumerate(rec["trials"]):
                    seed = t.get("seed")
                    merge_key = ("seed", str(seed)) if seed is not None else ("unseeded", rec.get("_path"), i)
                    trials[merge_key] = {"seed": seed, **{m: t.get(m) for m in METRICS}, "record": rec.get("_path")}
        units += _split_source(src, linear, voc)

    # Units with every stage first, so that a unit missing a stage finds the rows it may join.
    rows: list[Row] = []
    for unit in sorted(units, key=lambda u: (u.linear_id is None) + (u.voc_id is None)):
        _row_for(rows, unit).sources.append(unit)
    ordered = sorted(rows, key=Row.sort_key)
    for row in ordered:
        row.sources.sort(key=lambda s: s.source_id)
        differing = row.differing_hyperparams()
        if differing:
            _warn(f"row {row.key.describe()} {row.tag(None)} pools sources with different hyperparameters "
                  f"{differing}; give such runs their own variant name to get separate rows")
    return ordered


def _split_source(src: Source, linear: dict, voc: dict) -> list[Source]:
    """The source's units (rule 4): its main unit, then one per further identity of a stage."""
    def primary(by_id: dict):
        if len(by_id) == 1:
            return next(iter(by_id))
        return next((k for k, (ident, _) in by_id.items() if ident.official), None)

    def unit(lin_key, voc_key) -> Source:
        out = dataclasses.replace(src, record_paths=list(src.record_paths), trials={})
        if lin_key is not None:
            out.linear_id, out.linear = linear[lin_key]
        if voc_key is not None:
            out.voc_id, out.trials = voc[voc_key]
        return out

    main_lin, main_voc = primary(linear), primary(voc)
    return ([unit(main_lin, main_voc)] + [unit(k, None) for k in linear if k != main_lin]
            + [unit(None, k) for k in voc if k != main_voc])


def _row_for(rows: list[Row], unit: Source) -> Row:
    """The row a unit joins (rule 5), made if there is none."""
    exact = [r for r in rows if r.key == unit.key and r.linear_id == unit.linear_id and r.voc_id == unit.voc_id]
    if exact:
        return exact[0]
    candidates = [r for r in rows if r.key == unit.key
                  and all(getattr(unit, f"{st}_id") is None or getattr(r, f"{st}_id") == getattr(unit, f"{st}_id")
                          for st in ("linear", "voc"))]
    official = [r for r in candidates if r.official]
    if official or len(candidates) == 1:
        return (official or candidates)[0]
    rows.append(Row(unit.key, [], unit.linear_id, unit.voc_id))
    return rows[-1]


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    """mean, population std (ddof=0), n; the std is NaN for fewer than 2 values (no spread to report)."""
    s = pd.Series([v for v in values if v is not None], dtype="float64")
    if s.empty:
        return math.nan, math.nan, 0
    return float(s.mean()), float(s.std(ddof=0)) if s.size > 1 else math.nan, int(s.size)


def ablation_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """One line per row: the CSV columns plus per-cell counts (`*_n`, `linear_std`) the renderers use."""
    lines = []
    for row in rows:
        k = row.key
        line = {"case": k.case, "mlp": k.mlp, "aug_plus": k.aug_plus, "cos": k.cos, "epochs": k.epochs,
                "extensions": k.extensions_text(), "tag": row.tag(), "official": row.official,
                **{f"{st}_protocol": "" if i is None else i.departures_text() for st, i in
                   (("linear", row.linear_id), ("voc", row.voc_id))}}
        line["linear_top1"], line["linear_std"], line["linear_n"] = _stats(row.linear_values)
        line["linear_best_top1"] = _stats(row.linear_best_values)[0]
        trials = row.trials
        for m in METRICS:
            line[f"{m}_mean"], line[f"{m}_std"], line[f"{m}_n"] = _stats([t[m] for t in trials])
        line["n_trials"] = len(trials)
        lines.append(line)
    columns = CSV_COLUMNS + ["tag", "official", "linear_std", "linear_n"] + [f"{m}_n" for m in METRICS]
    frame = pd.DataFrame(lines, columns=columns)
    for col in ("mlp", "aug_plus", "cos"):
        frame[col] = frame[col].astype("object")
    frame["epochs"] = frame["epochs"].astype("Int64")
    frame["official"] = frame["official"].astype(bool)
    for col in ["n_trials", "linear_n"] + [f"{m}_n" for m in METRICS]:
        frame[col] = frame[col].astype("int64")
    return frame


def trials_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """Long format, one line per VOC trial: row index/label/case/epochs/official, source, seed, the three APs."""
    lines = []
    for i, row in enumerate(rows):
        for src in row.sources:
            for t in src.trials.values():
                lines.append({"row": i, "label": row.label, "case": row.key.case, "epochs": row.key.epochs,
                              "official": row.official, "source": src.sha256 or "",
                              "seed": t["seed"], **{m: t[m] for m in METRICS}})
    return pd.DataFrame(lines, columns=["row", "label", "case", "epochs", "official", "source", "seed", *METRICS])


# ----------------------------------------------------------------------------------------- formatting
def case_label(case: str, tag: str = "") -> str:
    """A row's name in tables and plots: the case's label, then any extensions and departures in brackets."""
    return CASE_LABELS.get(case, case) + (f" [{tag}]" if tag else "")


def epochs_suffix(key: VariantKey, sep: str = " ") -> str:
    """' 200 ep' after a row's label where the epochs column is not beside it (plots, Sources, compare.py)."""
    return "" if key.epochs is None else f"{sep}{key.epochs} ep"


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _round1(x: float) -> float:
    """The value as displayed with one decimal (gaps are differences of displayed numbers)."""
    return float(f"{x:.1f}")


def _gap(value: float, reference: float) -> float:
    return round(_round1(value) - _round1(reference), 1) + 0.0  # + 0.0 turns -0.0 into 0.0


def _signed(x: float) -> str:
    return f"{x:+.1f}"


@dataclass(frozen=True)
class _Style:
    """What differs between the Markdown and the LaTeX table."""

    pm: str
    check: str
    missing: str
    highlight: Any  # text -> highlighted text
    minus: str
    escape: Any


_MARKDOWN = _Style(pm="±", check="✓", missing=MISSING, highlight=lambda s: f"**{s}**", minus="-",
                   escape=lambda s: s.replace("|", "\\|"))
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX = _Style(pm="$\\pm$", check="\\checkmark", missing="--",
                highlight=lambda s: "\\textcolor{green!50!black}{" + s + "}",
                minus="$-$", escape=lambda s: "".join(_LATEX_ESCAPES.get(c, c) for c in s))


def _fmt_signed(x: float, style: _Style) -> str:
    return _signed(x).replace("-", style.minus)


def _stat_cell(mean, std, n, style: _Style, show_n_when_single: bool) -> str:
    if n == 0 or _missing(mean):
        return style.missing
    text = f"{mean:.1f}"
    if n > 1:
        text += f" {style.pm} {std:.1f} ({n})"
    elif show_n_when_single:
        text += " (1)"
    return text


def _voc_cell(line: Mapping, metric: str, reference: Mapping | None, style: _Style) -> str:
    mean, std, n = line[f"{metric}_mean"], line[f"{metric}_std"], line[f"{metric}_n"]
    text = _stat_cell(mean, std, n, style, show_n_when_single=True)
    if text == style.missing or reference is None or reference is line or _missing(reference[f"{metric}_mean"]):
        return text
    gap = _gap(mean, reference[f"{metric}_mean"])
    bracket = f"({_fmt_signed(gap, style)})"
    if gap >= HIGHLIGHT_GAP:
        bracket = style.highlight(bracket)
    return f"{text} {bracket}"


def _flag(value, style: _Style) -> str:
    return style.check if value is True else ""


def _table_cells(frame: pd.DataFrame, style: _Style) -> list[list[str]]:
    lines = frame.to_dict("records")
    supervised = next((ln for ln in lines if ln["case"] == "supervised"), None)
    out = []
    for ln in lines:
        epochs = "" if _missing(ln["epochs"]) else str(int(ln["epochs"]))
        linear = _stat_cell(ln["linear_top1"], ln["linear_std"], ln["linear_n"], style, show_n_when_single=False)
        out.append([style.escape(case_label(ln["case"], ln["tag"])), _flag(ln["mlp"], style),
                    _flag(ln["aug_plus"], style), _flag(ln["cos"], style), epochs, linear,
                    *(_voc_cell(ln, m, supervised, style) for m in METRICS)])
    return out


TABLE_HEADER = ["case", "MLP", "aug+", "cos", "epochs", "ImageNet acc.", "VOC AP50", "VOC AP", "VOC AP75"]
_MD_ALIGN = [":--", ":-:", ":-:", ":-:", "--:", "--:", "--:", "--:", "--:"]


def _md_table(header: Sequence[str], align: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def render_markdown_table(frame: pd.DataFrame) -> str:
    """The MoCo v2 Table 1 layout in Markdown (no notes); empty string for no rows."""
    if frame.empty:
        return ""
    return _md_table(TABLE_HEADER, _MD_ALIGN, _table_cells(frame, _MARKDOWN))


def _comparison_lines(frame: pd.DataFrame, paper: pd.DataFrame | None) -> list[dict]:
    """For each published case (in table order): the paper row and each of our rows of that case."""
    published = paper_by_case(paper)
    ours = frame.to_dict("records")
    cases = sorted(published, key=lambda c: VariantKey(c, None, None, None, None).sort_key())
    out = []
    for case in cases:
        # the paper ran the recipe under the official protocol: rows departing from either are not its rows
        matching = [ln for ln in ours if ln["case"] == case and ln["official"]] or [None]
        out += [{"case": case, "paper": published[case], "ours": ln} for ln in matching]
    return out


# (paper column, our mean column, our count column, title)
COMPARISON_METRICS = (("linear_top1", "linear_top1", "linear_n", "ImageNet acc."),
                      ("AP50", "AP50_mean", "AP50_n", "AP50"), ("AP", "AP_mean", "AP_n", "AP"),
                      ("AP75", "AP75_mean", "AP75_n", "AP75"))


def comparison_frame(frame: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Ours beside the published numbers: per case paper value, ours (mean), difference ours - paper, and
    whether that difference is within the paper's noise (empty where the paper reports no spread)."""

    lines = []
    for item in _comparison_lines(frame, paper):
        p, o = item["paper"], item["ours"]
        line = {"case": item["case"], "paper_source": p["source"], "paper_epochs": p["epochs"],
                "epochs": None if o is None else o["epochs"]}
        for name, ours_col, n_col, _ in COMPARISON_METRICS:
            pv = p[name]
            ov = None if o is None or o[n_col] == 0 else o[ours_col]
            line[f"{name}_paper"] = None if _missing(pv) else float(pv)
            line[f"{name}_ours"] = None if _missing(ov) else float(ov)
            line[f"{name}_diff"] = (None if _missing(pv) or _missing(ov) else _gap(ov, pv))
            line[f"{name}_within_noise"] = (None if line[f"{name}_diff"] is None else paper_gap_within_noise(
                item["case"], name, float(ov), int(o[n_col]), float(pv)))
        lines.append(line)
    columns = ["case", "paper_source", "paper_epochs", "epochs"] + [
        f"{n}_{w}" for n, _, _, _ in COMPARISON_METRICS for w in ("paper", "ours", "diff", "within_noise")]
    out = pd.DataFrame(lines, columns=columns)
    for n, _, _, _ in COMPARISON_METRICS:
        out[f"{n}_within_noise"] = out[f"{n}_within_noise"].astype("object")  # True / False / empty
    for col in ("paper_epochs", "epochs"):
        out[col] = out[col].astype("Int64")
    return out


def _comparison_cells(comp: pd.DataFrame, style: _Style) -> list[list[str]]:
    def num(x):
        return style.missing if _missing(x) else f"{x:.1f}"

    def epochs(x):
        return "" if _missing(x) else str(int(x))

    cells = []
    for ln in comp.to_dict("records"):
        line = [style.escape(CASE_LABELS.get(ln["case"], ln["case"])), epochs(ln["paper_epochs"]),
                epochs(ln["epochs"])]
        for name, _, _, _ in COMPARISON_METRICS:
            diff, within = ln[f"{name}_diff"], ln[f"{name}_within_noise"]
            mark = "" if _missing(within) else " (within noise)" if within else " (beyond noise)"
            line += [num(ln[f"{name}_paper"]), num(ln[f"{name}_ours"]),
                     style.missing if _missing(diff) else _fmt_signed(diff, style) + mark]
        cells.append(line)
    return cells


COMPARISON_HEADER = ["case", "epochs (paper)", "epochs (ours)"] + [
    f"{title} {w}" for _, _, _, title in COMPARISON_METRICS for w in ("paper", "ours", "Δ")]


def render_comparison_markdown(comp: pd.DataFrame) -> str:
    align = [":--", "--:", "--:"] + ["--:"] * (3 * len(COMPARISON_METRICS))
    return _md_table(COMPARISON_HEADER, align, _comparison_cells(comp, _MARKDOWN))


def _sources_markdown(rows: Sequence[Row]) -> str:
    def val(x, fmt="{}"):
        return MISSING if x is None else fmt.format(x)

    cells = []
    for row in rows:
        for src in row.sources:
            v = src.variant
            seeds = sorted((t["seed"] for t in src.trials.values() if t["seed"] is not None), key=str)
            unseeded = sum(t["seed"] is None for t in src.trials.values())
            trials = ", ".join(map(str, seeds)) + (f" (+{unseeded} without seed)" if unseeded else "")
            loss = (src.pretrain or {}).get("metrics", {}).get("final_loss")
            top1 = src.linear["metrics"]["top1"] if src.linear else None
            cells.append([_MARKDOWN.escape(row.label + epochs_suffix(row.key)),
                          f"`{src.sha256[:12]}`" if src.sha256 else MISSING,
                          val(v.get("batch_size")), val(v.get("moco_k")), val(v.get("moco_t")), val(v.get("moco_m")),
                          val(loss if _is_number(loss) else None, "{:.4f}"), val(top1, "{:.2f}"),
                          f"{len(src.trials)}" + (f": {trials}" if trials else "")])
    header = ["row", "source sha256", "batch", "K", "T", "m", "pretrain loss", "linear top-1", "VOC trials: seeds"]
    return _md_table(header, [":--", ":--"] + ["--:"] * 7, cells)


def render_markdown(rows: Sequence[Row], frame: pd.DataFrame, paper: pd.DataFrame | None, *,
                    n_records: int, runs_dir: str | os.PathLike | None = None,
                    images: Sequence[str] = ()) -> str:
    """The whole ablation.md: the table, its notes, ours vs the paper, the sources, the plots."""
    parts = ["# MoCo v2 transfer ablation\n",
             "Generated by `python results/make_tables.py` from the run records (do not edit by hand).\n"]
    parts.append("## Our results (MoCo v2 Table 1 layout)\n")
    if frame.empty:
        where = f" in `{runs_dir}`" if runs_dir is not None else ""
        parts.append(f"No run records found{where} yet: pretrain, run `transfer/run_linear.py` and "
                     "`transfer/run_voc.py`, and this table fills in. The published numbers are below.\n")
    else:
        parts.append(render_markdown_table(frame))
        notes = [
            "VOC: Faster R-CNN R50-C4 fine-tuned on VOC07+12, evaluated on VOC07 test. Each VOC cell is "
            "mean ± std (n trials); std is the population std (ddof=0), the convention of the official ± "
            "numbers; a single trial shows no std.",
            "In brackets: the gap to the supervised row (difference of the displayed means), **bold** when "
            f"≥ +{HIGHLIGHT_GAP}, as in the paper.",
            "ImageNet acc.: linear-classification top-1 of the frozen features after the final epoch (not the "
            "best epoch's, which main_lincls also tracks as best_acc1: it is in the CSV as linear_best_top1); "
            "mean ± std (n checkpoints) when several checkpoints share a row.",
            f"{MISSING}: no result yet. Rows: one per variant (case, switches, epochs) and protocol identity; "
            "extensions beyond the recipe and departures from the official linear / VOC protocol are in brackets, "
            f"and such rows are not compared with the paper. {n_records} run record(s).",
        ]
        full = {}  # each stage's full list of departures -> the rows run under it
        for row in rows:
            for ident in (row.linear_id, row.voc_id):
                if ident is not None and not ident.official:
                    full.setdefault(ident.describe(), []).append(case_label(row.key.case, row.key.extensions_text()))
        for text, labels in full.items():
            notes.append(f"Departures in full, {text} (rows {', '.join(dict.fromkeys(labels))}).")
        for row in rows:
            differing = row.differing_hyperparams()
            if differing:
                desc = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in differing.items())
                notes.append(f"Row {row.label} ({row.key.epochs} ep) pools sources that differ in {desc}.")
        parts.append("\n".join(f"- {n}" for n in notes) + "\n")
    parts.append("## Ours vs the published numbers\n")
    parts.append(render_comparison_markdown(comparison_frame(frame, paper)))
    parts.append("- Paper: MoCo v2 (Chen et al. 2020) Table 1; random init: MoCo v1 (He et al. 2020) R50-C4 VOC "
                 "table. Δ = ours − paper (displayed values). All published numbers, with sources: "
                 "`results/paper_numbers.csv`.")

    parts.append(f"- {paper_noise_note()}\n")
    if rows:
        parts.append("## Sources\n")
        parts.append(_sources_markdown(rows))
    if images:
        parts.append("## Plots\n")
        parts.append("\n".join(f"![{Path(i).stem}]({Path(i).name})" for i in images) + "\n")
    return "\n".join(parts)


def _latex_tabular(header: Sequence[str], align: str, cells: Sequence[Sequence[str]], empty_note: str) -> str:
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    if cells:
        lines += [" & ".join(c) + " \\\\" for c in cells]
    else:
        lines.append(f"\\multicolumn{{{len(align)}}}{{c}}{{{empty_note}}} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def render_latex(frame: pd.DataFrame, paper: pd.DataFrame | None) -> str:
    """ablation.tex: the ablation table and ours-vs-paper, as two table environments to \\input."""
    header = ["case", "MLP", "aug+", "cos", "epochs", "ImageNet acc.", "VOC AP$_{50}$", "VOC AP",
              "VOC AP$_{75}$"]
    comp_header = ["case", "ep. (paper)", "ep. (ours)"] + [
        f"{t.replace('AP50', 'AP$_{50}$').replace('AP75', 'AP$_{75}$')} {w}"
        for _, _, _, t in COMPARISON_METRICS for w in ("paper", "ours", "$\\Delta$")]
    return "\n".join([
        "% Generated by results/make_tables.py from the run records; do not edit by hand.",
        "% Needs \\usepackage{booktabs}, \\usepackage{amssymb} (\\checkmark), \\usepackage{xcolor} (gap highlight).",
        "% VOC cells: mean $\\pm$ std (n trials), std = population std (ddof=0); in brackets the gap to the",
        f"% supervised row, coloured when >= +{HIGHLIGHT_GAP}.",
        "\\begin{table}[t]", "\\centering", "\\small",
        _latex_tabular(header, "lccccrrrr", _table_cells(frame, _LATEX), "no run records yet"),
        "\\caption{MoCo v2 ablation: ImageNet linear top-1 and VOC07 detection (Faster R-CNN R50-C4, "
        "mean $\\pm$ std over n trials, population std). In brackets: gap to supervised.}",
        "\\label{tab:mocoeval-ablation}", "\\end{table}", "",
        "\\begin{table}[t]", "\\centering", "\\scriptsize",
        _latex_tabular(comp_header, "lrr" + "rrr" * len(COMPARISON_METRICS),
                       _comparison_cells(comparison_frame(frame, paper), _LATEX), "no published numbers"),
        "\\caption{Ours beside the published numbers (MoCo v2 Table 1; random init from MoCo v1). "
        "$\\Delta$ = ours $-$ paper; within / beyond noise: inside / outside the 95\\% interval of a t-test "
        "with the paper's reported spread (ablation.md says how).}",
        "\\label{tab:mocoeval-vs-paper}", "\\end{table}", "",
    ])


def render_csv(frame: pd.DataFrame) -> str:
    """ablation.csv: exactly CSV_COLUMNS, one line per row; empty cells for missing values (and for the std of
    a single trial); booleans as True/False, empty when not applicable (random-init, supervised)."""
    buf = io.StringIO()
    frame[CSV_COLUMNS].to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


def render_comparison_csv(comp: pd.DataFrame) -> str:
    buf = io.StringIO()
    comp.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- outputs
def default_out_dir(runs_dir: Path) -> Path:
    """Tables go next to the store: the parent of a folder named `runs` (results/runs -> results/), else the
    store folder itself (so a test's MOCOEVAL_RESULTS_DIR never makes tables land in the repository)."""
    return runs_dir.parent if runs_dir.name == "runs" else runs_dir


def build_outputs(runs_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                  paper_csv: str | os.PathLike | None = None, *, plots: bool = True) -> list[Path]:
    """Read the store, write every table and plot atomically, return the written paths.

    Corrupt records are skipped with warnings; a bad paper-numbers file raises UserError.
    """
    runs_dir = Path(runs_dir) if runs_dir else results_store.default_store_dir()
    out_dir = Path(out_dir) if out_dir else default_out_dir(runs_dir)
    paper = load_paper_numbers(paper_csv)
    records = results_store.load_records(runs_dir) if runs_dir.is_dir() else []
    rows = collect_rows(records)
    frame = ablation_frame(rows)
    comp = comparison_frame(frame, paper)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = []
    images = []
    if plots:
        from mocoeval.results import plots as plots_mod  # matplotlib is imported only when plotting

        # plot labels: one departure per stage, one line per part (the table has the longer labels)
        labels = ["\n".join([case_label(r.key.case, r.key.extensions_text())]
                             + [i.describe(1) for i in (r.linear_id, r.voc_id) if i is not None and not i.official])
                  + epochs_suffix(r.key, "\n") for r in rows]
        images.append(plots_mod.plot_voc_trials(trials_frame(rows), labels, paper, out_dir / OUT_TRIALS_PNG))
        images.append(plots_mod.plot_linear_vs_voc(frame, paper, out_dir / OUT_LINEAR_VS_VOC_PNG))
    written.append(atomic_write_text(out_dir / OUT_MARKDOWN, render_markdown(
        rows, frame, paper, n_records=len(records), runs_dir=runs_dir, images=[i.name for i in images])))
    written.append(atomic_write_text(out_dir / OUT_LATEX, render_latex(frame, paper)))
    written.append(atomic_write_text(out_dir / OUT_CSV, render_csv(frame)))
    written.append(atomic_write_text(out_dir / OUT_PAPER_CSV, render_comparison_csv(comp)))
    return written + images


def regenerate(runs_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Rebuild the tables and plots after a run; never raises (the run's own results matter more).

    Corrupt records are skipped with a warning naming the file; any other failure is logged as a warning
    and the paths written so far (possibly none) are returned.
    """
    try:
        written = build_outputs(runs_dir, out_dir)
    except Exception as e:  # noqa: BLE001 - a table problem must not fail a finished training run
        msg = f"could not regenerate the ablation tables: {type(e).__name__}: {e}"
        logger.warning(msg)
        warnings.warn(msg, stacklevel=2)
        return []
    if written:  # on the console too: the commands' own loggers are closed by now
        print(f"results tables regenerated in {written[0].parent}")
    return written
