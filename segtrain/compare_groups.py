"""``segtrain-compare DIR... --group-by loss``: runs grouped by a setting, aggregated over seeds and folds, with statistics.

For each group (e.g. each loss of ``segtrain -m hparams_search=loss_benchmark``):

- **runs**: how many runs (seeds × folds) the group has; **wall time**: their mean; **diverged**: how many
  of them raised the loss/metric divergence flag (``val_diagnostics/loss_metric_divergence``) at any validation.
- **per-case metrics** from each run's held-out test set (``test_metrics_per_case.csv``, docs/evaluation.md):
  for Dice, IoU, HD95 and NSD, ``mean ± std`` over the runs of each run's per-case mean, and a 95%
  percentile-bootstrap interval of the mean over the (case, class) pairs, each pair's value first
  averaged over the group's runs; lesion recall is pooled per run, then averaged over the runs.
- **rank** by mean per-case Dice.
- **paired test** against ``--baseline NAME``: a Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided) on the (case, class) pairs both groups
  scored, each pair averaged over the runs, with Holm's correction over the groups compared, per metric.

Runs without a test set count in ``runs``, wall time and divergence only; their best ``val/dice`` is shown.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segtrain.events import RunSummary

GROUP_METRICS = ("dice", "iou", "hd95", "nsd")


@dataclass
class GroupStats:
    group: str
    runs: list[RunSummary]
    per_case: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)  # metric → (case, class) → value
    values: dict[str, dict] = field(default_factory=dict)  # metric → mean, std, ci_low, ci_high, n_runs, n_cases
    lesion_recall: float = math.nan
    wall_time: float = math.nan
    diverged: int = 0
    best_val_dice: float = math.nan
    rank: int = 0
    p_values: dict[str, float] = field(default_factory=dict)  # metric → Holm-adjusted p against the baseline


def run_group(run_dir: Path, key: str) -> str:
    """The value of ``key`` in a run's composed config (``loss``: the loss name), else from its overrides."""
    from omegaconf import OmegaConf

    config = Path(run_dir) / ".hydra" / "config.yaml"
    if config.is_file():
        cfg = OmegaConf.load(config)
        if key == "loss" and OmegaConf.is_dict(cfg.get("loss")):
            from segtrain.losses.registry import loss_name

            return loss_name(OmegaConf.to_container(cfg.loss))  # a loss of one's own (_target_) included
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            return str(value)
    from segtrain.events import run_overrides

    for item in reversed(run_overrides(run_dir) or []):
        if item.split("=", 1)[0].lstrip("+~") == key:
            return item.split("=", 1)[1]
    return "?"


def _read_rows(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "test_metrics_per_case.csv"
    if not path.is_file():
        return []
    return list(csv.DictReader(path.open()))


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (NaN stays NaN and is not counted)."""
    finite = [(p, i) for i, p in enumerate(p_values) if math.isfinite(p)]
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_wilcoxon(a: dict, b: dict) -> float:
    """Two-sided Wilcoxon signed-rank p-value on the keys both dicts score (NaN with fewer than 2 non-zero differences)."""
    from scipy.stats import wilcoxon

    keys = sorted(k for k in set(a) & set(b) if math.isfinite(a[k]) and math.isfinite(b[k]))
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    if len(keys) < 2 or np.count_nonzero(x - y) < 2:
        return math.nan
    return float(wilcoxon(x, y).pvalue)


def group_runs(summaries: list[RunSummary], key: str, baseline: str | None = None, samples: int = 1000,
               seed: int = 0) -> list[GroupStats]:
    """Grouped statistics (see the module docstring), ranked by mean per-case Dice (best first)."""
    from segtrain.evaluation.summary import bootstrap_interval

    by_group: dict[str, list[RunSummary]] = {}
    for summary in summaries:
        by_group.setdefault(run_group(summary.path, key), []).append(summary)
    groups = []
    for name, runs in sorted(by_group.items()):
        stats = GroupStats(name, runs)
        run_means: dict[str, list[float]] = {m: [] for m in GROUP_METRICS}
        pooled: dict[str, dict[tuple[str, str], list[float]]] = {m: {} for m in GROUP_METRICS}
        recalls = []
        for run in runs:
            rows = _read_rows(run.path)
            for m in GROUP_METRICS:
                values = [_float(r.get(m)) for r in rows]
                finite = [v for v in values if math.isfinite(v)]
                if finite:
                    run_means[m].append(float(np.mean(finite)))
                for r, v in zip(rows, values):
                    if math.isfinite(v):
                        pooled[m].setdefault((r["case"], r["class"]), []).append(v)
            true = sum(int(r.get("lesions_true") or 0) for r in rows)
            if true:
                recalls.append(sum(int(r.get("lesions_found") or 0) for r in rows) / true)
        for m in GROUP_METRICS:
            stats.per_case[m] = {k: float(np.mean(v)) for k, v in pooled[m].items()}
            case_values = np.array(list(stats.per_case[m].values()))
            low, high = bootstrap_interval(case_values, samples, 0.95, seed)
            means = run_means[m]
            stats.values[m] = {"mean": float(np.mean(means)) if means else math.nan,
                               "std": float(np.std(means, ddof=1)) if len(means) > 1 else (0.0 if means else math.nan),
                               "ci_low": low, "ci_high": high, "n_runs": len(means), "n_cases": int(case_values.size)}
        stats.lesion_recall = float(np.mean(recalls)) if recalls else math.nan
        times = [r.wall_time for r in runs if math.isfinite(r.wall_time)]
        stats.wall_time = float(np.mean(times)) if times else math.nan
        stats.diverged = sum(1 for r in runs if r.diverged)
        best = [r.best["val/dice"] for r in runs if math.isfinite(r.best.get("val/dice", math.nan))]
        stats.best_val_dice = float(np.mean(best)) if best else math.nan
        groups.append(stats)
    order = sorted(groups, key=lambda g: (not math.isfinite(g.values["dice"]["mean"]), -np.nan_to_num(g.values["dice"]["mean"]),
                                          -np.nan_to_num(g.best_val_dice), g.group))
    for rank, g in enumerate(order, 1):
        g.rank = rank
    base = next((g for g in order if g.group == baseline), None) if baseline else None
    if baseline and base is None:
        raise ValueError(f"--baseline {baseline}: no group of that name (groups: {', '.join(g.group for g in order)})")
    if base is not None:
        others = [g for g in order if g is not base]
        for m in GROUP_METRICS:
            adjusted = holm([paired_wilcoxon(g.per_case[m], base.per_case[m]) for g in others])
            for g, p in zip(others, adjusted):
                g.p_values[m] = p
    return order


def _cell(stats: dict, digits: int = 4) -> str:
    if not math.isfinite(stats["mean"]):
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} [{stats['ci_low']:.{digits}f}, {stats['ci_high']:.{digits}f}]"


def grouped_markdown(groups: list[GroupStats], key: str, baseline: str | None) -> str:
    from segtrain.compare import format_seconds

    header = ["rank", key, "runs", *[f"{m} mean ± std [95% CI]" for m in GROUP_METRICS], "lesion recall", "best val/dice",
              *([f"p dice vs {baseline} (Holm)"] if baseline else []), "wall time", "diverged"]
    lines = ["| " + " | ".join(header) + " |", "|---:|---|" + "---:|" * (len(header) - 2)]
    for g in groups:
        cells = [str(g.rank), g.group, str(len(g.runs)), *[_cell(g.values[m], 2 if m == "hd95" else 4) for m in GROUP_METRICS],
                 f"{g.lesion_recall:.3f}" if math.isfinite(g.lesion_recall) else "-",
                 f"{g.best_val_dice:.4f}" if math.isfinite(g.best_val_dice) else "-"]
        if baseline:
            p = g.p_values.get("dice", math.nan)
            cells.append("baseline" if g.group == baseline else (f"{p:.3g}" if math.isfinite(p) else "-"))
        cells += [format_seconds(g.wall_time), f"{g.diverged}/{len(g.runs)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grouped_csv(groups: list[GroupStats], key: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = ["mean", "std", "ci_low", "ci_high", "n_runs", "n_cases"]
    writer.writerow(["rank", key, "runs", *[f"{m}_{f}" for m in GROUP_METRICS for f in fields],
                     *[f"p_{m}_holm" for m in GROUP_METRICS], "lesion_recall", "best_val_dice", "wall_time_s", "diverged"])
    for g in groups:
        writer.writerow([g.rank, g.group, len(g.runs), *[g.values[m][f] for m in GROUP_METRICS for f in fields],
                         *[g.p_values.get(m, "") for m in GROUP_METRICS], g.lesion_recall, g.best_val_dice, g.wall_time,
                         g.diverged])
    return out.getvalue()


def plot_groups(groups: list[GroupStats], out_dir: Path) -> list[Path]:
    """``box_<metric>.png`` (per-case values of each group, averaged over its runs) and ``curves_val_dice.png``
    (val/dice per epoch: the mean over a group's runs, shaded between their minimum and maximum)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in GROUP_METRICS:
        data = [list(g.per_case[m].values()) for g in groups]
        if not any(data):
            continue
        fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(groups) + 2), 4), dpi=110)
        ax.boxplot([d if d else [math.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(groups) + 1), [g.group for g in groups], rotation=45, ha="right")
        ax.set_ylabel(f"{m} per case (test set)")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = out_dir / f"box_{m}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for g in groups:
        curves = [dict(r.curves.get("val/dice", [])) for r in g.runs]
        epochs = sorted(set().union(*[set(c) for c in curves])) if curves else []
        if not epochs:
            continue
        values = np.array([[c.get(e, math.nan) for e in epochs] for c in curves])
        mean = np.nanmean(values, 0)
        line, = ax.plot(epochs, mean, label=f"{g.group} ({len(g.runs)})")
        ax.fill_between(epochs, np.nanmin(values, 0), np.nanmax(values, 0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/dice (mean over runs; band: min-max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / "curves_val_dice.png"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths
