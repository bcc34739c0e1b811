"""Per-case rows → statistics a paper can report, and the files that hold both.

Per class and metric, over the cases where the metric has a value (NaN = no score, see
``scores``): the number of cases ``n``, mean, standard deviation, median and a percentile bootstrap
confidence interval of the mean (``scipy.stats.bootstrap``: cases resampled with replacement, ``bootstrap`` resamples, a fixed
seed: the same rows give the same interval). ``mean`` (the class ``all``) first averages each
case's classes, then the cases.

Beside the per-case means, the **global** Dice and IoU pool TP/FP/FN over every case before the
ratio, as ``val/dice`` does during training: a large structure weighs more, an empty case adds
nothing. Lesion counts are pooled the same way (recall = all found / all true lesions).

Files (written atomically): ``<prefix>metrics_per_case.csv`` (one row per case and class),
``<prefix>summary.json`` and ``<prefix>summary.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from segtrain.evaluation.detection import COUNTS
from segtrain.evaluation.scores import METRICS

CSV_COLUMNS = ("case", "class", "class_name", *METRICS, "empty", "truth_voxels", "pred_voxels", "tp", "fp", "fn", *COUNTS)


def bootstrap_interval(values: np.ndarray, samples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``scipy.stats.bootstrap``; NaN for no values, the
    value itself for one)."""
    from scipy.stats import bootstrap

    values = np.asarray(values, float)
    if values.size == 0:
        return math.nan, math.nan
    if values.size == 1 or samples <= 0 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    result = bootstrap((values,), np.mean, n_resamples=int(samples), confidence_level=float(confidence),
                       method="percentile", random_state=int(seed), batch=256)  # batch: bounded memory for many cases
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def describe(values: Sequence[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """n, mean, std, median, ci_low, ci_high of the finite values (NaN when there are none)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if finite.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    low, high = bootstrap_interval(finite, samples, confidence, seed)
    return {"n": int(finite.size), "mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "median": float(np.median(finite)), "ci_low": low, "ci_high": high}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def summarise(rows: list[dict], class_names: dict[int, str], samples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> dict:
    """The summary of per-case rows (each with ``case``, ``class`` and the ``scores.score_case`` keys)."""
    classes = sorted({int(r["class"]) for r in rows})
    cases = sorted({r["case"] for r in rows})
    out: dict = {"cases": len(cases), "confidence": confidence, "bootstrap_samples": samples, "classes": {}}
    for c in classes:
        mine = [r for r in rows if int(r["class"]) == c]
        tp, fp, fn = (sum(r[k] for r in mine) for k in ("tp", "fp", "fn"))
        lesions = {k: sum(int(r[k]) for r in mine) for k in COUNTS}
        out["classes"][class_names.get(c, f"class{c}")] = {
            "index": c,
            **{m: describe([r[m] for r in mine], samples, confidence, seed) for m in METRICS},
            "global": {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn)},
            "lesions": {**lesions, "recall": _ratio(lesions["lesions_found"], lesions["lesions_true"]),
                        "precision": _ratio(lesions["lesions_pred"] - lesions["lesions_false"], lesions["lesions_pred"])},
            "empty": {kind: sum(1 for r in mine if r["empty"] == kind) for kind in ("both", "truth", "prediction")},
        }
    per_case = {m: [] for m in METRICS}
    for case in cases:
        for m in METRICS:
            values = [r[m] for r in rows if r["case"] == case and math.isfinite(r[m])]
            per_case[m].append(float(np.mean(values)) if values else math.nan)
    globals_ = [v["global"] for v in out["classes"].values()]
    out["mean"] = {
        **{m: describe(per_case[m], samples, confidence, seed) for m in METRICS},
        "global": {k: _nanmean([g[k] for g in globals_]) for k in ("dice", "iou")},
        "lesions": {k: _nanmean([v["lesions"][k] for v in out["classes"].values()]) for k in ("recall", "precision")},
    }
    return out


def summarise_with(rows: list[dict], class_names: dict[int, str], evaluation: Mapping | None = None) -> dict:
    """``summarise`` with the bootstrap settings of an ``evaluation`` config, its scoring settings recorded."""
    from dataclasses import asdict

    from segtrain.evaluation.scores import ScoreSettings

    evaluation = dict(evaluation or {})
    summary = summarise(rows, class_names, samples=int(evaluation.get("bootstrap", 1000)),
                        confidence=float(evaluation.get("confidence", 0.95)), seed=int(evaluation.get("seed", 0)))
    summary["settings"] = asdict(ScoreSettings.from_config(evaluation))
    return summary


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: null = no score
    return value


def _cell(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def markdown(summary: dict, title: str = "Evaluation") -> str:
    """The summary as markdown: one table of metrics (per class and ``all``), one of lesions."""
    level = int(round(summary["confidence"] * 100))
    settings = summary.get("settings", {})
    lines = [f"# {title}", "",
             f"{summary['cases']} case(s). Mean ± std, median and {level}% bootstrap CI of the mean over the cases with a "
             f"score (n); NSD at {settings.get('nsd_tolerance', '?')} mm; HD{settings.get('hd_percentile', 95):g} and "
             "ASSD in mm (lower is better). Global Dice/IoU pool the voxels of all cases (as val/dice).", "",
             "| class | metric | n | mean | std | median | CI low | CI high |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    groups = [*summary["classes"].items(), ("all", summary["mean"])]
    for name, stats in groups:
        for m in METRICS:
            s = stats[m]
            lines.append(f"| {name} | {m} | {s['n']} | {_cell(s['mean'])} | {_cell(s['std'])} | {_cell(s['median'])} | "
                         f"{_cell(s['ci_low'])} | {_cell(s['ci_high'])} |")
        lines.append(f"| {name} | dice (global) | | {_cell(stats['global']['dice'])} | | | | |")
    lines += ["", "| class | true lesions | found | missed | predicted | false | recall | precision | empty: both / truth / prediction |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, stats in summary["classes"].items():
        les, empty = stats["lesions"], stats["empty"]
        lines.append(f"| {name} | {les['lesions_true']} | {les['lesions_found']} | {les['lesions_missed']} | "
                     f"{les['lesions_pred']} | {les['lesions_false']} | {_cell(les['recall'])} | {_cell(les['precision'])} | "
                     f"{empty['both']} / {empty['truth']} / {empty['prediction']} |")
    return "\n".join(lines) + "\n"


def console_table(summary: dict) -> str:
    """A compact table for the terminal: mean [CI] per class and metric, global Dice, lesion recall/precision."""
    groups = [*summary["classes"].items(), ("all", summary["mean"])]
    width = min(max(len(name) for name, _ in groups), 24) + 1
    header = f"{'class':<{width}}" + "".join(f"{m:>24}" for m in METRICS) + f"{'dice global':>13}{'lesion R/P':>14}"
    lines = [header]
    for name, stats in groups:
        cells = []
        for m in METRICS:
            s = stats[m]
            cells.append(f"{_cell(s['mean'], 3)} [{_cell(s['ci_low'], 3)}, {_cell(s['ci_high'], 3)}]" if s["n"] else "-")
        lesions = stats["lesions"]
        detection = f"{_cell(lesions['recall'], 2) or '-'}/{_cell(lesions['precision'], 2) or '-'}"
        lines.append(f"{name[:width - 1]:<{width}}" + "".join(f"{c:>24}" for c in cells) + f"{_cell(stats['global']['dice'], 4):>13}{detection:>14}")
    return "\n".join(lines)


def write_results(output_dir: str | Path, rows: list[dict], summary: dict, prefix: str = "", title: str = "Evaluation") -> list[Path]:
    """``<prefix>metrics_per_case.csv``, ``<prefix>summary.json`` and ``<prefix>summary.md`` in ``output_dir``, atomically."""
    from segtrain.files import write_text_atomic

    output_dir = Path(output_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    paths = [output_dir / f"{prefix}metrics_per_case.csv", output_dir / f"{prefix}summary.json",
             output_dir / f"{prefix}summary.md"]
    write_text_atomic(paths[0], buffer.getvalue())
    write_text_atomic(paths[1], json.dumps(_json_safe(summary), indent=2))
    write_text_atomic(paths[2], markdown(summary, title))
    return paths


__all__ = ["CSV_COLUMNS", "bootstrap_interval", "console_table", "describe", "markdown",
           "summarise", "summarise_with", "write_results"]
