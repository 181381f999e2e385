"""Table rows from the run records: records -> sources -> one row per variant and protocol identity.

What every report reads (the tables, the plots, compare.py); rendering is in `results.tables`.

How records become table rows (the rules the tests pin down):

1. **Records.** `results_store.load_records` reads every `*.json` in the store; an unreadable file, or a
   record whose variant/metrics/trials are malformed, is skipped with a warning naming the file.
   Records are ordered oldest -> newest by their `date`, then file mtime, then file name.
2. **Sources.** Records of the same weights join by `source_sha256` (the sha256 of the pretraining
   checkpoint, or of whatever checkpoint was evaluated). Records without a sha256 (random init) join a
   pseudo-source per variant. A source's variant is its newest *pretrain* record's variant (the
   pretraining config is authoritative), else its newest record's; a record that disagrees is reported
   with a warning and counted under the source's variant.
3. **Per source, stage and protocol identity** (`results.identity`: linear = every run_linear.py setting
   that changes the number, VOC and COCO = the config hash). linear: the newest record's final-epoch `top1` per
   identity (a re-run under the same identity replaces the older one; another identity never does). voc: the
   per-trial results of the source's voc records of one identity are merged by seed, and the newest record
   wins for a seed (a `run_voc.py` re-run that adds seeds adds trials; one that repeats a seed replaces
   it). Trials without a seed are all kept. Trials of different identities are never pooled. coco: as voc.
4. **Splitting a source.** A source with at most one identity per stage is one unit (its linear, VOC and COCO
   side by side). In a stage with several identities the official one (else none) stays with the other stages'
   results; every other identity becomes a unit of its own, with the other stages empty.
5. **Rows.** A row is the variant key (case name, mlp, aug_plus, cos, epochs, and the extensions beyond the
   recipe, `variants.RECIPE_EXTENSIONS`, e.g. a residual-BN init of 0.1) x the linear identity x the VOC
   identity x the COCO identity. A unit missing a stage joins a row that agrees on the variant and its present stage(s) (the
   official one if there are several; else its own row). Extensions and departures from the protocol are
   in the row's label in brackets (at most `LABEL_DEPARTURES` per stage, the full list in the CSV and the
   notes), and such a row is never compared with the paper's numbers.
   Several sources in one row (e.g. two pretraining runs of (d) with different seeds) are pooled:
   the VOC (and COCO) cells pool the trials of all sources, the ImageNet cell is the mean over the sources' linear
   results (with n). Other hyperparameters (batch, K, T, m, arch, image size) are not part of the key: when
   the sources of a row differ in them, a warning is emitted and the Markdown table gets a note —
   give such runs their own variant name to get their own row.
6. **Numbers.** The ImageNet cell is the final epoch's top-1 (the CSV also has the best epoch's,
   `linear_best_top1`, which main_lincls tracks as best_acc1: picking the best on the validation set flatters). std is the population std (ddof=0), the
   convention of the official "±" numbers. The gap to the supervised row is the difference of the displayed (1-decimal) means, so the table is
   self-consistent; it is highlighted when >= +0.5, as in the MoCo papers.
7. **Order.** random-init, supervised, moco_v1, a, b, c, d, e, then other names alphabetically; within a
   case by epochs, then the switches (unknown first), extensions, then the official protocol before others.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mocoeval.results import variants
from mocoeval.results.identity import Identity, detection_identity, linear_identity
from mocoeval.results.paper import CASE_LABELS
from mocoeval.results.store import COCO_METRICS, TRIAL_METRICS
from mocoeval.results.store import VOC_METRICS as METRICS
from mocoeval.results.variants import Variant

CSV_COLUMNS = [
    "case",
    "mlp",
    "aug_plus",
    "cos",
    "epochs",
    "extensions",
    "linear_protocol",
    "voc_protocol",
    "linear_top1",
    "linear_best_top1",
    "AP50_mean",
    "AP50_std",
    "AP_mean",
    "AP_std",
    "AP75_mean",
    "AP75_std",
    "n_trials",
]
# The COCO columns, written only when there are COCO results (so VOC-only tables keep their columns).
COCO_CSV_COLUMNS = ["coco_protocol"] + [f"{m}_{s}" for m in COCO_METRICS for s in ("mean", "std")] + ["coco_n_trials"]
STAGE_IDS = ("linear", "voc", "coco")  # the stages with a protocol identity (`Row.<stage>_id`)
# Where a Source keeps a stage's result: the newest linear record, the merged VOC / COCO trials.
_RESULT_ATTR = {"linear": "linear", "voc": "trials", "coco": "coco_trials"}
LABEL_DEPARTURES = 3  # per stage in a row label; the CSV and the notes have them all
CASE_ORDER = ("random-init", "supervised", "moco_v1", "a", "b", "c", "d", "e")
# The pretraining hyperparameters are outside the row key; sources pooled into one row should agree on them.
POOLED_HYPERPARAMS = variants.HYPERPARAMS


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
    def from_variant(cls, variant: Mapping[str, Any]) -> VariantKey:
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
        for ext, recipe_value in variants.RECIPE_EXTENSIONS.items():
            value = variant.get(ext, recipe_value)
            if not (
                is_number(value)
                or (recipe_value is None and value is None)  # e.g. no ramp
                or (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_number, value)))
            ):
                raise ValueError(f"variant {ext} must be a number or a pair of numbers, got {variant[ext]!r}")
        return cls(name, *switches, epochs, variants.recipe_departures(variant))

    def sort_key(self) -> tuple:
        rank = CASE_ORDER.index(self.case) if self.case in CASE_ORDER else len(CASE_ORDER)
        unknown_first = lambda v: (v is not None, v if v is not None else 0)  # noqa: E731
        return (
            rank,
            self.case,
            unknown_first(self.epochs),
            unknown_first(self.mlp),
            unknown_first(self.aug_plus),
            unknown_first(self.cos),
            self.extensions,
        )

    def describe(self) -> str:
        flags = ", ".join(
            [f"{k}={getattr(self, k)}" for k in ("mlp", "aug_plus", "cos", "epochs")]
            + [f"{k}={v}" for k, v in self.extensions]
        )
        return f"{self.case} ({flags})"

    def extensions_text(self) -> str:
        """The extensions as the CSV's `extensions` cell and the row label show them, e.g. 'residual_bn_init 0.1'."""
        return variants.describe_departures(self.extensions)


@dataclass
class Source:
    """One set of weights (one source checkpoint) and what every stage measured on it."""

    source_id: str
    sha256: str | None
    key: VariantKey
    variant: Variant  # its newest pretrain record's (else newest record's)
    pretrain: dict | None = None  # newest pretrain record
    linear: dict | None = None  # newest linear record of linear_id
    trials: dict = field(default_factory=dict)  # merge key -> {seed, AP50, AP, AP75, record}, of voc_id
    coco_trials: dict = field(default_factory=dict)  # as trials, with COCO_METRICS, of coco_id
    record_paths: list = field(default_factory=list)
    linear_id: Identity | None = None
    voc_id: Identity | None = None
    coco_id: Identity | None = None


@dataclass
class Row:
    key: VariantKey
    sources: list
    linear_id: Identity | None = None
    voc_id: Identity | None = None
    coco_id: Identity | None = None

    @property
    def identities(self) -> tuple[Identity | None, ...]:
        """The row's protocol identity per stage, in STAGE_IDS order (None: no result in that stage)."""
        return tuple(getattr(self, f"{st}_id") for st in STAGE_IDS)

    @property
    def official(self) -> bool:
        """Run under the official protocol in every stage it has (and the recipe): comparable with the paper."""
        return not self.key.extensions and all(i is None or i.official for i in self.identities)

    def tag(self, limit: int | None = LABEL_DEPARTURES) -> str:
        """What the label's brackets say: extensions, then each stage's departures from the protocol."""
        return "; ".join(
            filter(None, [self.key.extensions_text()] + [i.describe(limit) for i in self.identities if i is not None])
        )

    @property
    def label(self) -> str:
        return case_label(self.key.case, self.tag())

    def sort_key(self) -> tuple:
        ident = lambda i: (0, "") if i is None or i.official else (1, i.describe())  # noqa: E731
        return (self.key.sort_key(), *map(ident, self.identities))

    @property
    def trials(self) -> list[dict]:
        """The VOC trials of all sources."""
        return [t for s in self.sources for t in s.trials.values()]

    @property
    def coco_trials(self) -> list[dict]:
        return [t for s in self.sources for t in s.coco_trials.values()]

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


def is_number(x) -> bool:
    """A finite int or float (not a bool): what a metric or a numeric variant setting must be."""
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
    if rec["stage"] == "linear" and not is_number(metrics.get("top1")):
        raise ValueError(f"linear record without a numeric metrics.top1 (got {metrics.get('top1')!r})")
    if rec["stage"] in TRIAL_METRICS:
        trials = rec.get("trials")
        if not isinstance(trials, list) or not trials:
            raise ValueError(f"{rec['stage']} record without per-trial results (trials)")
        for t in trials:
            if not isinstance(t, Mapping):
                raise ValueError(f"trial is not an object: {t!r}")
            for m in TRIAL_METRICS[rec["stage"]]:
                v = t.get(m)
                if v is not None and not is_number(v):
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
        src = Source(sid, ref_rec.get("source_sha256"), ref_key, Variant.from_record(ref_rec["variant"]))
        linear: dict = {}  # identity key -> (Identity, newest record)
        detection: dict = {st: {} for st in TRIAL_METRICS}  # stage -> identity key -> (Identity, {merge key: trial})
        for rec, key in recs:  # oldest -> newest: later records overwrite
            src.record_paths.append(rec.get("_path"))
            if key != ref_key:
                _warn(
                    f"run record {rec.get('_path')} names variant {key.describe()} but its source "
                    f"{(src.sha256 or '')[:12]} is {ref_key.describe()}; counted as the latter"
                )
            stage = rec["stage"]
            if stage == "pretrain":
                src.pretrain = rec
            elif stage == "linear":
                ident = linear_identity(rec)
                linear[ident.key] = (ident, rec)
            else:
                ident = detection_identity(rec)
                trials = detection[stage].setdefault(ident.key, (ident, {}))[1]
                for i, t in enumerate(rec["trials"]):
                    seed = t.get("seed")
                    merge_key = ("seed", str(seed)) if seed is not None else ("unseeded", rec.get("_path"), i)
                    trials[merge_key] = {
                        "seed": seed,
                        **{m: t.get(m) for m in TRIAL_METRICS[stage]},
                        "record": rec.get("_path"),
                    }
        units += _split_source(src, {"linear": linear, **detection})

    # Units with every stage first, so that a unit missing a stage finds the rows it may join.
    rows: list[Row] = []
    for unit in sorted(units, key=lambda u: sum(getattr(u, f"{st}_id") is None for st in STAGE_IDS)):
        _row_for(rows, unit).sources.append(unit)
    ordered = sorted(rows, key=Row.sort_key)
    for row in ordered:
        row.sources.sort(key=lambda s: s.source_id)
        differing = row.differing_hyperparams()
        if differing:
            _warn(
                f"row {row.key.describe()} {row.tag(None)} pools sources with different hyperparameters "
                f"{differing}; give such runs their own variant name to get separate rows"
            )
    return ordered


def _split_source(src: Source, by_stage: Mapping[str, dict]) -> list[Source]:
    """The source's units (rule 4): its main unit, then one per further identity of a stage.
    `by_stage`: stage -> identity key -> (Identity, the stage's result for `_RESULT_ATTR`)."""

    def primary(by_id: dict):
        if len(by_id) == 1:
            return next(iter(by_id))
        return next((k for k, (ident, _) in by_id.items() if ident.official), None)

    def unit(keys: Mapping[str, Any]) -> Source:
        out = dataclasses.replace(src, record_paths=list(src.record_paths), trials={}, coco_trials={})
        for st, k in keys.items():
            if k is not None:
                ident, result = by_stage[st][k]
                setattr(out, f"{st}_id", ident)
                setattr(out, _RESULT_ATTR[st], result)
        return out

    main = {st: primary(by_id) for st, by_id in by_stage.items()}
    return [unit(main)] + [unit({st: k}) for st, by_id in by_stage.items() for k in by_id if k != main[st]]


def _row_for(rows: list[Row], unit: Source) -> Row:
    """The row a unit joins (rule 5), made if there is none."""
    ids = {st: getattr(unit, f"{st}_id") for st in STAGE_IDS}
    exact = [r for r in rows if r.key == unit.key and all(getattr(r, f"{st}_id") == i for st, i in ids.items())]
    if exact:
        return exact[0]
    candidates = [
        r for r in rows if r.key == unit.key and all(i is None or getattr(r, f"{st}_id") == i for st, i in ids.items())
    ]
    official = [r for r in candidates if r.official]
    if official or len(candidates) == 1:
        return (official or candidates)[0]
    rows.append(Row(unit.key, [], **{f"{st}_id": i for st, i in ids.items()}))
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
        line = {
            "case": k.case,
            "mlp": k.mlp,
            "aug_plus": k.aug_plus,
            "cos": k.cos,
            "epochs": k.epochs,
            "extensions": k.extensions_text(),
            "tag": row.tag(),
            "official": row.official,
            **{f"{st}_protocol": "" if i is None else i.departures_text() for st, i in zip(STAGE_IDS, row.identities)},
        }
        line["linear_top1"], line["linear_std"], line["linear_n"] = _stats(row.linear_values)
        line["linear_best_top1"] = _stats(row.linear_best_values)[0]
        trials = row.trials
        for m in METRICS:
            line[f"{m}_mean"], line[f"{m}_std"], line[f"{m}_n"] = _stats([t[m] for t in trials])
        line["n_trials"] = len(trials)
        coco = row.coco_trials
        for m in COCO_METRICS:
            line[f"{m}_mean"], line[f"{m}_std"], line[f"{m}_n"] = _stats([t[m] for t in coco])
        line["coco_n_trials"] = len(coco)
        lines.append(line)
    columns = (
        CSV_COLUMNS
        + COCO_CSV_COLUMNS
        + ["tag", "official", "linear_std", "linear_n"]
        + [f"{m}_n" for m in (*METRICS, *COCO_METRICS)]
    )
    frame = pd.DataFrame(lines, columns=columns)
    for col in ("mlp", "aug_plus", "cos"):
        frame[col] = frame[col].astype("object")
    frame["epochs"] = frame["epochs"].astype("Int64")
    frame["official"] = frame["official"].astype(bool)
    for col in ["n_trials", "coco_n_trials", "linear_n"] + [f"{m}_n" for m in (*METRICS, *COCO_METRICS)]:
        frame[col] = frame[col].astype("int64")
    return frame


def trials_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """Long format, one line per VOC trial: row index/label/case/epochs/official/extensions, source, seed, the three APs."""
    lines = []
    for i, row in enumerate(rows):
        for src in row.sources:
            for t in src.trials.values():
                lines.append(
                    {
                        "row": i,
                        "label": row.label,
                        "case": row.key.case,
                        "epochs": row.key.epochs,
                        "official": row.official,
                        "extensions": row.key.extensions_text(),
                        "source": src.sha256 or "",
                        "seed": t["seed"],
                        **{m: t[m] for m in METRICS},
                    }
                )
    columns = ["row", "label", "case", "epochs", "official", "extensions", "source", "seed", *METRICS]
    return pd.DataFrame(lines, columns=columns)


# ------------------------------------------------------------------------------------------- naming
def case_label(case: str, tag: str = "") -> str:
    """A row's name in tables and plots: the case's label, then any extensions and departures in brackets."""
    return CASE_LABELS.get(case, case) + (f" [{tag}]" if tag else "")


def epochs_suffix(key: VariantKey, sep: str = " ") -> str:
    """' 200 ep' after a row's label where the epochs column is not beside it (plots, Sources, compare.py)."""
    return "" if key.epochs is None else f"{sep}{key.epochs} ep"
