"""``segtrain-compare DIR...``: compare runs from their TensorBoard event files.

Each DIR is a run directory or a folder holding runs (a multirun sweep directory, ``outputs/train``).
Prints one row per run: best and final val/dice, val/iou, val/loss, the held-out test set's scores
(``test/dice`` pooled, ``test/dice_per_case``, ``test/hd95``, ``test/nsd``; runs with a test set),
epochs and wall time, sorted by best val/dice (``--sort``), as a markdown table, or CSV with ``--csv`` (``--csv FILE`` writes the
CSV to FILE and still prints the table). ``--plot FILE.png`` draws the val/dice curves of all runs.

Best is the maximum over epochs of Dice and IoU and the minimum of the loss; final is the last epoch.
A run's name is made of its command-line overrides (``.hydra/overrides.yaml``) that differ between the
runs compared (all of them for a single run), else its directory name.

    segtrain -m loss=dice,tversky,dice_ce
    segtrain-compare outputs/train/multiruns/<time> --plot dice.png

``--group-by loss`` (any config key) aggregates the runs of each group over seeds and folds, with
per-case statistics from their test sets and a paired test against ``--baseline``
(``segtrain.compare_groups``); ``--out DIR`` writes its CSV, markdown and figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from segtrain.events import RUN_METRICS, TEST_METRICS, RunSummary, find_runs, lower_is_better, run_overrides, summarise_run

SORT_KEYS = {
    "best_val_dice": ("best", "val/dice"),
    "final_val_dice": ("final", "val/dice"),
    "best_val_iou": ("best", "val/iou"),
    "final_val_iou": ("final", "val/iou"),
    "best_val_loss": ("best", "val/loss"),
    "final_val_loss": ("final", "val/loss"),
    "test_dice": ("test", "test/dice"),
    "epochs": None,
    "wall_time": None,
    "name": None,
}
NOISE_PREFIXES = ("hydra.", "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps")


def _last_per_key(overrides: list[str]) -> list[str]:
    """Overrides without noise keys, the last one of a repeated key only (Hydra applies the last)."""
    by_key: dict[str, str] = {}
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if not key.startswith(NOISE_PREFIXES):
            by_key.pop(key, None)
            by_key[key] = item
    return list(by_key.values())


def run_names(runs: list[Path]) -> list[str]:
    """Names from the overrides that differ between ``runs`` (all overrides for one run), else directory names."""
    from segtrain.callbacks.run_name import short_lines
    from segtrain.callbacks.sweep import read_failure

    cleaned = [None if o is None else _last_per_key(o) for o in (run_overrides(r) for r in runs)]
    known = [set(o) for o in cleaned if o is not None]
    shared = set.intersection(*known) if len(known) > 1 else set()
    names = []
    for run, items in zip(runs, cleaned):
        distinct = short_lines([x for x in items if x not in shared]) if items is not None else []
        names.append(",".join(distinct) if distinct else run.name)
    # Two runs with the same overrides (repeats): tell them apart by directory.
    for name in set(names):
        same = [i for i, n in enumerate(names) if n == name]
        if len(same) > 1:
            for i in same:
                names[i] = f"{name} ({runs[i].name})" if name != runs[i].name else str(runs[i])
    for i, run in enumerate(runs):  # a run that failed inside a sweep (segtrain/callbacks/sweep.py)
        failure = read_failure(run)
        if failure is not None:
            names[i] += f" [failed, exit {failure[0]}]"
    return names


def sort_runs(summaries: list[RunSummary], key: str) -> list[RunSummary]:
    """Best first: descending Dice/IoU/epochs, ascending loss/wall time/name; missing values last."""
    if key == "name":
        return sorted(summaries, key=lambda s: s.name)
    if key in ("epochs", "wall_time"):
        value = (lambda s: s.epochs) if key == "epochs" else (lambda s: s.wall_time)
        sign = -1 if key == "epochs" else 1
    else:
        kind, tag = SORT_KEYS[key]
        value = lambda s: getattr(s, kind).get(tag, math.nan)  # noqa: E731
        sign = 1 if lower_is_better(tag) else -1
    return sorted(summaries, key=lambda s: (not math.isfinite(value(s)), sign * value(s) if math.isfinite(value(s)) else 0, s.name))


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def columns() -> list[str]:
    return [f"{kind} {tag}" for tag in RUN_METRICS for kind in ("best", "final")]


def _test_tags(summaries: list[RunSummary]) -> list[str]:
    """The test columns, when any run scored a test set."""
    return [tag for tag in TEST_METRICS if any(tag in s.test for s in summaries)]


def markdown_table(summaries: list[RunSummary]) -> str:
    tests = _test_tags(summaries)
    header = ["run", *columns(), *tests, "epochs", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for s in summaries:
        cells = [s.name.replace("|", "\\|")]
        for tag in RUN_METRICS:
            for kind in ("best", "final"):
                v = getattr(s, kind)[tag]
                cells.append(f"{v:.4f}" if math.isfinite(v) else "-")
        cells += [f"{s.test[t]:.4f}" if math.isfinite(s.test.get(t, math.nan)) else "-" for t in tests]
        cells += [str(s.epochs), format_seconds(s.wall_time)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(summaries: list[RunSummary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    tests = _test_tags(summaries)
    writer.writerow(["run", *[c.replace(" ", "_").replace("/", "_") for c in columns()], *[t.replace("/", "_") for t in tests],
                     "epochs", "wall_time_s", "path"])
    for s in summaries:
        values = [getattr(s, kind)[tag] for tag in RUN_METRICS for kind in ("best", "final")]
        values += [s.test.get(t, math.nan) for t in tests]
        writer.writerow([s.name, *[repr(v) if math.isfinite(v) else "" for v in values], s.epochs,
                         f"{s.wall_time:.3f}" if math.isfinite(s.wall_time) else "", str(s.path)])
    return out.getvalue()


def plot_curves(summaries: list[RunSummary], path: str | Path, tag: str = "val/dice") -> Path:
    """One line per run: ``tag`` against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    drawn = [s for s in summaries if s.curves.get(tag)]
    labels = ["\n".join(textwrap.wrap(s.name.replace(",", ", "), 70)) or "-" for s in drawn]
    legend_lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(8, 4.5 + 0.22 * legend_lines), dpi=120)
    for s, label in zip(drawn, labels):
        points = s.curves[tag]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{tag} (whole validation cases)")
    ax.set_title(f"{tag} per run")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def compare(paths: list[str | Path], sort: str = "best_val_dice") -> list[RunSummary]:
    """Summaries of every run found under ``paths``, sorted by ``sort``."""
    runs = find_runs(paths)
    names = run_names(runs)
    return sort_runs([summarise_run(run, name) for run, name in zip(runs, names)], sort)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="segtrain-compare",
        description="Compare segtrain runs: best/final val/dice, val/iou, val/loss, epochs and wall time per run.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories, or folders holding runs (a multirun sweep dir)")
    parser.add_argument("--sort", choices=list(SORT_KEYS), default="best_val_dice",
                        help="sort column (default: best_val_dice; Dice/IoU descending, loss/time ascending)")
    parser.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                        help="CSV instead of markdown on stdout, or written to FILE (the table is still printed)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the val/dice curves of all runs into FILE.png")
    parser.add_argument("--group-by", metavar="KEY", help="aggregate runs by a config key (loss: the loss name) over "
                        "seeds and folds, with per-case test statistics")
    parser.add_argument("--baseline", metavar="NAME", help="with --group-by: the group every other is tested against "
                        "(paired Wilcoxon signed-rank on per-case values, Holm-corrected)")
    parser.add_argument("--out", metavar="DIR", help="with --group-by: write grouped.csv, grouped.md, box plots and curves here")
    args = parser.parse_args(argv)
    try:
        summaries = compare(args.dirs, args.sort)
    except FileNotFoundError as err:
        print(f"segtrain-compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not summaries:
        print(f"segtrain-compare: error: no TensorBoard event files under {', '.join(args.dirs)}", file=sys.stderr)
        sys.exit(2)
    if args.group_by:
        _grouped(summaries, args)
        return
    if args.csv == "-":
        sys.stdout.write(csv_table(summaries))
    else:
        print(markdown_table(summaries))
        if args.csv:
            Path(args.csv).write_text(csv_table(summaries))
            print(f"\nCSV: {args.csv}")
    if args.plot:
        print(f"plot: {plot_curves(summaries, args.plot)}", file=sys.stderr if args.csv == "-" else sys.stdout)


def _grouped(summaries: list[RunSummary], args) -> None:
    from segtrain.compare_groups import group_runs, grouped_csv, grouped_markdown, plot_groups
    from segtrain.files import write_text_atomic

    try:
        groups = group_runs(summaries, args.group_by, args.baseline)
    except ValueError as err:
        print(f"segtrain-compare: error: {err}", file=sys.stderr)
        sys.exit(2)
    table = grouped_markdown(groups, args.group_by, args.baseline)
    print(table)
    if args.out:
        out = Path(args.out)
        write_text_atomic(out / "grouped.md", table + "\n")
        write_text_atomic(out / "grouped.csv", grouped_csv(groups, args.group_by))
        figures = plot_groups(groups, out)
        print(f"\nwritten: {out / 'grouped.md'}, {out / 'grouped.csv'}, " + ", ".join(p.name for p in figures))


if __name__ == "__main__":
    main()
