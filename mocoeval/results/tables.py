"""Ablation tables: rows (`results.rows`, where the rules that join records into rows are) -> Markdown, LaTeX, CSV.

`build_outputs` reads the store and writes every table and plot; `regenerate` is the same for the commands
that finish a run, never raising.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mocoeval.results import store as results_store
from mocoeval.results.paper import CASE_LABELS, COCO_PAPER_SCHEDULE, COCO_SCHEDULES, load_paper_numbers, paper_by_case
from mocoeval.results.rows import (
    COCO_CSV_COLUMNS,
    COCO_METRICS,
    CSV_COLUMNS,
    METRICS,
    Row,
    VariantKey,
    ablation_frame,
    case_label,
    collect_rows,
    epochs_suffix,
    is_number,
    trials_frame,
)
from mocoeval.results.statistics import paper_gap_within_noise, paper_noise_note
from mocoeval.runtime.fileio import atomic_write_text

logger = logging.getLogger(__name__)

HIGHLIGHT_GAP = 0.5  # the MoCo papers highlight gains over supervised of at least 0.5 point
MISSING = "—"

# Output file names (inside the output folder).
OUT_MARKDOWN = "ablation.md"
OUT_LATEX = "ablation.tex"
OUT_CSV = "ablation.csv"
OUT_PAPER_CSV = "ablation_vs_paper.csv"
OUT_COCO_PAPER_CSV = "ablation_coco_vs_paper.csv"  # written only with COCO results, as the COCO table
OUT_TRIALS_PNG = "ablation_voc_trials.png"
OUT_LINEAR_VS_VOC_PNG = "ablation_linear_vs_voc.png"


# ----------------------------------------------------------------------------------------- formatting
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


_MARKDOWN = _Style(
    pm="±",
    check="✓",
    missing=MISSING,
    highlight=lambda s: f"**{s}**",
    minus="-",
    escape=lambda s: s.replace("|", "\\|"),
)
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX = _Style(
    pm="$\\pm$",
    check="\\checkmark",
    missing="--",
    highlight=lambda s: "\\textcolor{green!50!black}{" + s + "}",
    minus="$-$",
    escape=lambda s: "".join(_LATEX_ESCAPES.get(c, c) for c in s),
)


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


def _trial_cell(line: Mapping, metric: str, reference: Mapping | None, style: _Style) -> str:
    """A VOC or COCO cell: mean ± std (n trials), then the gap to the reference (supervised) row."""
    mean, std, n = line[f"{metric}_mean"], line[f"{metric}_std"], line[f"{metric}_n"]
    text = _stat_cell(mean, std, n, style, show_n_when_single=True)
    if text == style.missing or reference is None or reference is line or _missing(reference[f"{metric}_mean"]):
        return text
    gap = _gap(mean, reference[f"{metric}_mean"])
    bracket = f"({_fmt_signed(gap, style)})"
    if gap >= HIGHLIGHT_GAP:
        bracket = style.highlight(bracket)
    return f"{text} {bracket}"


def has_gaps(frame: pd.DataFrame, metrics: Sequence[str] = METRICS) -> bool:
    """Whether cells show gaps: only when a supervised row has a result for one of `metrics` (the notes about
    gaps are left out otherwise)."""
    supervised = frame[frame["case"] == "supervised"] if len(frame) else frame
    return any(not _missing(v) for m in metrics for v in supervised.get(f"{m}_mean", ()))


def _flag(value, style: _Style) -> str:
    return style.check if value is True else ""


def _table_cells(frame: pd.DataFrame, style: _Style) -> list[list[str]]:
    lines = frame.to_dict("records")
    supervised = next((ln for ln in lines if ln["case"] == "supervised"), None)
    out = []
    for ln in lines:
        epochs = "" if _missing(ln["epochs"]) else str(int(ln["epochs"]))
        linear = _stat_cell(ln["linear_top1"], ln["linear_std"], ln["linear_n"], style, show_n_when_single=False)
        out.append(
            [
                style.escape(case_label(ln["case"], ln["tag"])),
                _flag(ln["mlp"], style),
                _flag(ln["aug_plus"], style),
                _flag(ln["cos"], style),
                epochs,
                linear,
                *(_trial_cell(ln, m, supervised, style) for m in METRICS),
            ]
        )
    return out


def has_coco(frame: pd.DataFrame) -> bool:
    """Whether any row has COCO results: the COCO table and columns appear only then."""
    return bool(len(frame)) and bool((frame["coco_n_trials"] > 0).any())


def _coco_cells(frame: pd.DataFrame, style: _Style) -> list[list[str]]:
    """The rows with COCO results: label, epochs, box and mask AP / AP50 / AP75 with the gap to supervised."""
    lines = [ln for ln in frame.to_dict("records") if ln["coco_n_trials"] > 0]
    supervised = next((ln for ln in lines if ln["case"] == "supervised"), None)
    return [
        [
            style.escape(case_label(ln["case"], ln["tag"])),
            "" if _missing(ln["epochs"]) else str(int(ln["epochs"])),
            *(_trial_cell(ln, m, supervised, style) for m in COCO_METRICS),
        ]
        for ln in lines
    ]


COCO_HEADER = ["case", "epochs", "box AP", "box AP50", "box AP75", "mask AP", "mask AP50", "mask AP75"]
COCO_NOTE = (
    "COCO: Mask R-CNN R50-C4 fine-tuned on COCO train2017, evaluated on val2017 (COCOeval box and mask "
    "AP); the official protocol is the 2× schedule. Cells as in the VOC table"
)


def render_coco_markdown(frame: pd.DataFrame) -> str:
    """The COCO table with its note; empty string when no row has COCO results."""
    if not has_coco(frame):
        return ""
    table = _md_table(COCO_HEADER, [":--", "--:"] + ["--:"] * len(COCO_METRICS), _coco_cells(frame, _MARKDOWN))
    gaps = ", with the gap to the supervised row in brackets" if has_gaps(frame, COCO_METRICS) else ""
    return f"## Our results on COCO\n\n{table}\n- {COCO_NOTE}{gaps}.\n"


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


def _comparison_lines(frame: pd.DataFrame, published: Mapping[str, dict]) -> list[dict]:
    """For each published case (in table order): the paper row and each of our rows of that case."""
    ours = frame.to_dict("records")
    cases = sorted(published, key=lambda c: VariantKey(c, None, None, None, None).sort_key())
    out = []
    for case in cases:
        # the paper ran the recipe under the official protocol: rows departing from either are not its rows
        matching = [ln for ln in ours if ln["case"] == case and ln["official"]] or [None]
        out += [{"case": case, "paper": published[case], "ours": ln} for ln in matching]
    return out


# (paper column, our mean column, our count column, title)
COMPARISON_METRICS = (
    ("linear_top1", "linear_top1", "linear_n", "ImageNet acc."),
    ("AP50", "AP50_mean", "AP50_n", "AP50"),
    ("AP", "AP_mean", "AP_n", "AP"),
    ("AP75", "AP75_mean", "AP75_n", "AP75"),
)
COCO_COMPARISON_METRICS = tuple((m, f"{m}_mean", f"{m}_n", t) for m, t in zip(COCO_METRICS, COCO_HEADER[2:]))


def _comparison(
    frame: pd.DataFrame, published: Mapping[str, dict], metrics: Sequence[tuple], noise: bool
) -> pd.DataFrame:
    """Per published case and each of our rows of it: per metric the paper's value, ours (mean), ours - paper,
    and (with `noise`) whether that difference is within the paper's noise."""
    kinds = ("paper", "ours", "diff") + (("within_noise",) if noise else ())
    lines = []
    for item in _comparison_lines(frame, published):
        p, o = item["paper"], item["ours"]
        line = {
            "case": item["case"],
            "paper_source": p["source"],
            "paper_epochs": p["epochs"],
            "epochs": None if o is None else o["epochs"],
        }
        for name, ours_col, n_col, _ in metrics:
            pv = p[name]
            ov = None if o is None or o[n_col] == 0 else o[ours_col]
            line[f"{name}_paper"] = None if _missing(pv) else float(pv)
            line[f"{name}_ours"] = None if _missing(ov) else float(ov)
            line[f"{name}_diff"] = None if _missing(pv) or _missing(ov) else _gap(ov, pv)
            if noise:
                line[f"{name}_within_noise"] = (
                    None
                    if line[f"{name}_diff"] is None
                    else paper_gap_within_noise(item["case"], name, float(ov), int(o[n_col]), float(pv))
                )
        lines.append(line)
    columns = ["case", "paper_source", "paper_epochs", "epochs"] + [f"{n}_{w}" for n, _, _, _ in metrics for w in kinds]
    out = pd.DataFrame(lines, columns=columns)
    for n, _, _, _ in metrics if noise else ():
        out[f"{n}_within_noise"] = out[f"{n}_within_noise"].astype("object")  # True / False / empty
    for col in ("paper_epochs", "epochs"):
        out[col] = out[col].astype("Int64")
    return out


def comparison_frame(frame: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Ours beside the published linear and VOC numbers: per case paper value, ours (mean), difference
    ours - paper, and whether that difference is within the paper's noise (empty where the paper reports no
    spread)."""
    return _comparison(frame, paper_by_case(paper), COMPARISON_METRICS, noise=True)


def coco_comparison_frame(frame: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """Ours beside the published COCO numbers of our official schedule (2x), as `comparison_frame` without the
    within-noise columns: no spread is published for COCO."""
    return _comparison(frame, paper_by_case(paper, COCO_PAPER_SCHEDULE), COCO_COMPARISON_METRICS, noise=False)


def _comparison_cells(
    comp: pd.DataFrame, style: _Style, metrics: Sequence[tuple] = COMPARISON_METRICS
) -> list[list[str]]:
    def num(x):
        return style.missing if _missing(x) else f"{x:.1f}"

    def epochs(x):
        return "" if _missing(x) else str(int(x))

    cells = []
    for ln in comp.to_dict("records"):
        line = [style.escape(CASE_LABELS.get(ln["case"], ln["case"])), epochs(ln["paper_epochs"]), epochs(ln["epochs"])]
        for name, _, _, _ in metrics:
            diff, within = ln[f"{name}_diff"], ln.get(f"{name}_within_noise")
            mark = "" if _missing(within) else " (within noise)" if within else " (beyond noise)"
            line += [
                num(ln[f"{name}_paper"]),
                num(ln[f"{name}_ours"]),
                style.missing if _missing(diff) else _fmt_signed(diff, style) + mark,
            ]
        cells.append(line)
    return cells


def _comparison_header(metrics: Sequence[tuple]) -> list[str]:
    return ["case", "epochs (paper)", "epochs (ours)"] + [
        f"{t} {w}" for _, _, _, t in metrics for w in ("paper", "ours", "Δ")
    ]


def render_comparison_markdown(comp: pd.DataFrame, metrics: Sequence[tuple] = COMPARISON_METRICS) -> str:
    align = [":--", "--:", "--:"] + ["--:"] * (3 * len(metrics))
    return _md_table(_comparison_header(metrics), align, _comparison_cells(comp, _MARKDOWN, metrics))


def _times(schedule: str, times: str = "×") -> str:
    """'2x' as the tables print it: '2×' (LaTeX: times='$\\times$')."""
    return schedule.replace("x", times)


def render_coco_comparison_markdown(frame: pd.DataFrame, paper: pd.DataFrame | None) -> str:
    """Ours vs the published COCO numbers with its notes; empty string when no row has COCO results."""
    if not has_coco(frame):
        return ""
    comp = coco_comparison_frame(frame, paper)
    by_source: dict[str, list[str]] = {}
    for ln in comp.drop_duplicates("case").to_dict("records"):
        by_source.setdefault(ln["paper_source"], []).append(CASE_LABELS.get(ln["case"], ln["case"]))
    sources = "; ".join(f"{' and '.join(cases)} from {src}" for src, cases in by_source.items())
    official, others = _times(COCO_PAPER_SCHEDULE), [s for s in COCO_SCHEDULES if s != COCO_PAPER_SCHEDULE]
    notes = [
        f"Paper, {official} schedule: {sources or 'no published numbers'}. Δ = ours − paper (displayed values). "
        f"{MISSING} under paper: not reported by that source; under ours: no result yet.",
        f"Compared: the published {official} lines, with our rows under the official protocol in every stage (its "
        f"COCO config is the {official} schedule). The {' / '.join(map(_times, others))} lines of "
        f"`results/paper_numbers.csv` (`coco_schedule` {' / '.join(others)}) are compared with nothing: such a "
        "run departs from that protocol. No spread is published for COCO: no within / beyond noise marks.",
    ]
    table = render_comparison_markdown(comp, COCO_COMPARISON_METRICS)
    return "## Ours vs the published numbers on COCO\n\n" + table + "\n" + "\n".join(f"- {n}" for n in notes) + "\n"


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
            cells.append(
                [
                    _MARKDOWN.escape(row.label + epochs_suffix(row.key)),
                    f"`{src.sha256[:12]}`" if src.sha256 else MISSING,
                    val(v.get("batch_size")),
                    val(v.get("moco_k")),
                    val(v.get("moco_t")),
                    val(v.get("moco_m")),
                    val(loss if is_number(loss) else None, "{:.4f}"),
                    val(top1, "{:.2f}"),
                    f"{len(src.trials)}" + (f": {trials}" if trials else ""),
                ]
            )
    header = ["row", "source sha256", "batch", "K", "T", "m", "pretrain loss", "linear top-1", "VOC trials: seeds"]
    return _md_table(header, [":--", ":--"] + ["--:"] * 7, cells)


def render_markdown(
    rows: Sequence[Row],
    frame: pd.DataFrame,
    paper: pd.DataFrame | None,
    *,
    n_records: int,
    runs_dir: str | os.PathLike | None = None,
    images: Sequence[str] = (),
) -> str:
    """The whole ablation.md: the table, its notes, ours vs the paper, the sources, the plots."""
    parts = [
        "# MoCo v2 transfer ablation\n",
        "Generated by `python results/make_tables.py` from the run records (do not edit by hand).\n",
    ]
    parts.append("## Our results (MoCo v2 Table 1 layout)\n")
    if frame.empty:
        where = f" in `{runs_dir}`" if runs_dir is not None else ""
        parts.append(
            f"No run records found{where} yet: pretrain, run `transfer/run_linear.py` and "
            "`transfer/run_voc.py`, and this table fills in. The published numbers are below.\n"
        )
    else:
        parts.append(render_markdown_table(frame))
        notes = [
            "VOC: Faster R-CNN R50-C4 fine-tuned on VOC07+12, evaluated on VOC07 test. Each VOC cell is "
            "mean ± std (n trials); std is the population std (ddof=0), the convention of the official ± "
            "numbers; a single trial shows no std.",
            *(
                [
                    "In brackets: the gap to the supervised row (difference of the displayed means), **bold** when "
                    f"≥ +{HIGHLIGHT_GAP}, as in the paper."
                ]
                if has_gaps(frame)
                else []
            ),
            "ImageNet acc.: linear-classification top-1 of the frozen features after the final epoch (not the "
            "best epoch's, which main_lincls also tracks as best_acc1: it is in the CSV as linear_best_top1); "
            "mean ± std (n checkpoints) when several checkpoints share a row.",
            f"{MISSING}: no result yet. Rows: one per variant (case, switches, epochs) and protocol identity; "
            "extensions beyond the recipe and departures from the official linear / VOC protocol are in brackets, "
            f"and such rows are not compared with the paper. {n_records} run record(s).",
        ]
        full = {}  # each stage's full list of departures -> the rows run under it
        for row in rows:
            for ident in row.identities:
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
    coco = render_coco_markdown(frame)
    if coco:
        parts.append(coco)
    parts.append("## Ours vs the published numbers\n")
    parts.append(render_comparison_markdown(comparison_frame(frame, paper)))
    parts.append(
        "- Paper: MoCo v2 (Chen et al. 2020) Table 1; random init: MoCo v1 (He et al. 2020) R50-C4 VOC "
        "table. Δ = ours − paper (displayed values). All published numbers, with sources: "
        "`results/paper_numbers.csv`."
    )

    parts.append(f"- {paper_noise_note()}\n")
    if coco:
        parts.append(render_coco_comparison_markdown(frame, paper))
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


def _latex_ap(text: str) -> str:
    return text.replace("AP50", "AP$_{50}$").replace("AP75", "AP$_{75}$")


def _latex_comparison_header(metrics: Sequence[tuple]) -> list[str]:
    return ["case", "ep. (paper)", "ep. (ours)"] + [
        f"{_latex_ap(t)} {w}" for _, _, _, t in metrics for w in ("paper", "ours", "$\\Delta$")
    ]


def render_latex(frame: pd.DataFrame, paper: pd.DataFrame | None) -> str:
    """ablation.tex: the ablation table and ours-vs-paper (with COCO results also the COCO table and its
    ours-vs-paper), as table environments to \\input."""
    header = ["case", "MLP", "aug+", "cos", "epochs", "ImageNet acc.", "VOC AP$_{50}$", "VOC AP", "VOC AP$_{75}$"]
    gaps = has_gaps(frame)
    return "\n".join(
        [
            "% Generated by results/make_tables.py from the run records; do not edit by hand.",
            "% Needs \\usepackage{booktabs}, \\usepackage{amssymb} (\\checkmark), \\usepackage{xcolor} (gap highlight).",
            "% VOC cells: mean $\\pm$ std (n trials), std = population std (ddof=0)"
            + (f"; in brackets the gap to the\n% supervised row, coloured when >= +{HIGHLIGHT_GAP}." if gaps else "."),
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            _latex_tabular(header, "lccccrrrr", _table_cells(frame, _LATEX), "no run records yet"),
            "\\caption{MoCo v2 ablation: ImageNet linear top-1 and VOC07 detection (Faster R-CNN R50-C4, "
            "mean $\\pm$ std over n trials, population std)." + (" In brackets: gap to supervised.}" if gaps else "}"),
            "\\label{tab:mocoeval-ablation}",
            "\\end{table}",
            "",
            "\\begin{table}[t]",
            "\\centering",
            "\\scriptsize",
            _latex_tabular(
                _latex_comparison_header(COMPARISON_METRICS),
                "lrr" + "rrr" * len(COMPARISON_METRICS),
                _comparison_cells(comparison_frame(frame, paper), _LATEX),
                "no published numbers",
            ),
            "\\caption{Ours beside the published numbers (MoCo v2 Table 1; random init from MoCo v1). "
            "$\\Delta$ = ours $-$ paper; within / beyond noise: inside / outside the 95\\% interval of a t-test "
            "with the paper's reported spread (ablation.md says how).}",
            "\\label{tab:mocoeval-vs-paper}",
            "\\end{table}",
            "",
        ]
        + (
            []
            if not has_coco(frame)
            else [
                "\\begin{table}[t]",
                "\\centering",
                "\\small",
                _latex_tabular(
                    [_latex_ap(h) for h in COCO_HEADER],
                    "lr" + "r" * len(COCO_METRICS),
                    _coco_cells(frame, _LATEX),
                    "no COCO results",
                ),
                "\\caption{COCO transfer: Mask R-CNN R50-C4 (box and mask AP on val2017, mean $\\pm$ std over n trials, "
                "population std)." + (" In brackets: gap to supervised.}" if has_gaps(frame, COCO_METRICS) else "}"),
                "\\label{tab:mocoeval-coco}",
                "\\end{table}",
                "",
                "\\begin{table}[t]",
                "\\centering",
                "\\scriptsize",
                _latex_tabular(
                    _latex_comparison_header(COCO_COMPARISON_METRICS),
                    "lrr" + "rrr" * len(COCO_COMPARISON_METRICS),
                    _comparison_cells(coco_comparison_frame(frame, paper), _LATEX, COCO_COMPARISON_METRICS),
                    "no published numbers",
                ),
                "\\caption{Ours beside the published COCO numbers ("
                + _times(COCO_PAPER_SCHEDULE, "$\\times$")
                + " schedule; sources in ablation.md). $\\Delta$ = ours $-$ paper; no spread is published for COCO.}",
                "\\label{tab:mocoeval-coco-vs-paper}",
                "\\end{table}",
                "",
            ]
        )
    )


def render_csv(frame: pd.DataFrame) -> str:
    """ablation.csv: exactly CSV_COLUMNS (then COCO_CSV_COLUMNS when a row has COCO results), one line per row; empty cells for missing values (and for the std of
    a single trial); booleans as True/False, empty when not applicable (random-init, supervised)."""
    buf = io.StringIO()
    columns = CSV_COLUMNS + (COCO_CSV_COLUMNS if has_coco(frame) else [])  # VOC-only tables keep their columns
    frame[columns].to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
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


def build_outputs(
    runs_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    paper_csv: str | os.PathLike | None = None,
    *,
    plots: bool = True,
) -> list[Path]:
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
        labels = [
            "\n".join(
                [case_label(r.key.case, r.key.extensions_text())]
                + [i.describe(1) for i in r.identities if i is not None and not i.official]
            )
            + epochs_suffix(r.key, "\n")
            for r in rows
        ]
        images.append(plots_mod.plot_voc_trials(trials_frame(rows), labels, paper, out_dir / OUT_TRIALS_PNG))
        images.append(plots_mod.plot_linear_vs_voc(frame, paper, out_dir / OUT_LINEAR_VS_VOC_PNG))
    written.append(
        atomic_write_text(
            out_dir / OUT_MARKDOWN,
            render_markdown(
                rows, frame, paper, n_records=len(records), runs_dir=runs_dir, images=[i.name for i in images]
            ),
        )
    )
    written.append(atomic_write_text(out_dir / OUT_LATEX, render_latex(frame, paper)))
    written.append(atomic_write_text(out_dir / OUT_CSV, render_csv(frame)))
    written.append(atomic_write_text(out_dir / OUT_PAPER_CSV, render_comparison_csv(comp)))
    if has_coco(frame):  # as the COCO table: stores without COCO results keep their outputs
        coco_comp = coco_comparison_frame(frame, paper)
        written.append(atomic_write_text(out_dir / OUT_COCO_PAPER_CSV, render_comparison_csv(coco_comp)))
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
