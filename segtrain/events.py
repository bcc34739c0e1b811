"""Read a run's TensorBoard event files back: scalars by tag, hyper-parameters, and run summaries
(best/final metrics, epochs, wall time) for the HParams tab and ``segtrain-compare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Scalar:
    step: int
    value: float
    wall_time: float


def event_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).rglob("events.out.tfevents.*"))


def read_scalars(run_dir: str | Path) -> dict[str, list[Scalar]]:
    """Every scalar series under ``run_dir`` (all event files merged), sorted by step.

    Each folder of event files is read as TensorBoard reads a run: its files in order, as one stream.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[Scalar]] = {}
    for folder in sorted({path.parent for path in event_files(run_dir)}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend(Scalar(e.step, e.value, e.wall_time) for e in acc.Scalars(tag))
    for values in series.values():
        values.sort(key=lambda s: (s.step, s.wall_time))
    return series


RESUMED_PLUGINS = ("hparams", "custom_scalars")  # written again by every run that resumes
RESUMED_TAG_PREFIX = "val_summary/"                         # the HParams tab's metrics: placeholders at start, values at the end


def truncate_events(folder: str | Path, wall_time: float) -> int:
    """Drop from the event files in ``folder`` every event written after ``wall_time``; returns how many.

    A run resumed from a checkpoint logs again what came after it: the events its killed or
    stopped predecessor wrote after the checkpoint (``wall_time`` is stored in it, after the
    loggers were flushed) would otherwise appear twice, or at shifted steps. The HParams and
    custom-scalars records and the ``val_summary/*`` metrics are dropped too: the resumed run writes them
    again. Files are rewritten atomically; a file without such events is left untouched.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    from segtrain.files import atomic_write

    dropped = 0
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        kept, removed = [], 0
        for raw in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(raw)
            plugins = {value.metadata.plugin_data.plugin_name for value in event.summary.value}
            rewritten = plugins & set(RESUMED_PLUGINS) or any(v.tag.startswith(RESUMED_TAG_PREFIX) for v in event.summary.value)
            if event.HasField("file_version") or (event.wall_time <= wall_time and not rewritten):
                kept.append(raw)
            else:
                removed += 1
        if removed:
            def write(handle, records=kept):
                writer = RecordWriter(handle)
                for record in records:
                    writer.write(record)

            atomic_write(path, write)
            dropped += removed
    return dropped


def read_hparams(run_dir: str | Path) -> dict[str, object]:
    """The hyper-parameters of the HParams tab (session start info), merged over event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    params: dict[str, object] = {}
    for path in event_files(run_dir):
        acc = EventAccumulator(str(path))
        acc.Reload()
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:  # no HParams in this file
            continue
        for raw in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(raw)
            if data.HasField("session_start_info"):
                for key, value in data.session_start_info.hparams.items():
                    kind = value.WhichOneof("kind")
                    params[key] = getattr(value, kind) if kind else None
    return params


# -- run summaries: best and final metrics (HParams tab, segtrain-compare) -------------------------

RUN_METRICS = ("val/dice", "val/iou", "val/loss")  # best: max of Dice and IoU, min of the loss
TEST_METRICS = ("test/dice", "test/dice_per_case", "test/hd95", "test/nsd")  # a run's held-out test set, once


def lower_is_better(tag: str) -> bool:
    return tag.split("/")[-1].startswith("loss")


def hparam_metric_names() -> list[str]:
    """The HParams tab's metrics: ``val_summary/best_val_dice``, ``val_summary/final_val_dice``, ... for every ``RUN_METRICS`` tag."""
    return [f"val_summary/{kind}_{tag.replace('/', '_')}" for tag in RUN_METRICS for kind in ("best", "final")]


def best_and_final(series: dict[str, list[Scalar]], tag: str) -> tuple[float, float]:
    """(best, final) of one tag's finite values; NaN for both when it has none."""
    import math

    values = [s.value for s in series.get(tag, []) if math.isfinite(s.value)]
    if not values:
        return math.nan, math.nan
    return (min(values) if lower_is_better(tag) else max(values)), values[-1]


def hparam_metrics(final: dict[str, float], best: dict[str, float]) -> dict[str, float]:
    """Values for ``hparam_metric_names()`` at the end of a run, from the module's best and last epoch.

    A metric never finite during the run has no best: its final value (NaN if none) stands in.
    """
    import math

    out: dict[str, float] = {}
    for tag in RUN_METRICS:
        name = tag.replace("/", "_")
        out[f"val_summary/final_{name}"] = final.get(tag, math.nan)
        out[f"val_summary/best_{name}"] = best.get(tag, out[f"val_summary/final_{name}"])
    return out


@dataclass
class RunSummary:
    """One run's row in ``segtrain-compare``: best and final metrics, epochs, wall time."""

    name: str
    path: Path
    best: dict[str, float]
    final: dict[str, float]
    epochs: int
    wall_time: float  # seconds between the first and the last event
    curves: dict[str, list[tuple[float, float]]]  # tag -> [(epoch, value)] for plots
    test: dict[str, float] = field(default_factory=dict)  # TEST_METRICS of a run with a test set
    diverged: bool = False  # the loss/metric divergence flag fired at some validation


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories under ``paths``: a path with event files below it is a run, or holds runs.

    A run directory is the nearest ancestor of an event file that holds ``.hydra/`` (segtrain's
    run directory); without one, the folder of the event files (its parent for ``tensorboard/``).
    A multirun sweep directory therefore gives one run per job.
    """
    runs: list[Path] = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or directory")
        for event in event_files(root):
            run = None
            for parent in [event.parent, *event.parent.parents]:
                if (parent / ".hydra").is_dir():
                    run = parent
                    break
                if parent == root:
                    break
            if run is None:
                run = event.parent.parent if event.parent.name == "tensorboard" else event.parent
            resolved = run.resolve()
            if resolved not in runs:
                runs.append(resolved)
    return runs


def run_overrides(run_dir: str | Path) -> list[str] | None:
    """The command-line overrides of a segtrain run (``.hydra/overrides.yaml``), or None."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        values = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # noqa: BLE001 - an unreadable file only costs the run its nice name
        return None
    return [str(v) for v in values] if isinstance(values, list) else None


def summarise_run(run_dir: str | Path, name: str | None = None) -> RunSummary:
    """Best/final ``RUN_METRICS``, epoch count, wall time and the epoch curves of one run."""
    import math

    run_dir = Path(run_dir)
    series = read_scalars(run_dir)
    best, final = {}, {}
    for tag in RUN_METRICS:
        best[tag], final[tag] = best_and_final(series, tag)
    # Lightning logs the epoch at every step it logs anything: map steps to epochs.
    epoch_at = {s.step: s.value for s in series.get("x_axis/epoch", series.get("epoch", []))}  # "epoch": earlier runs
    curves = {}
    for tag in RUN_METRICS:
        points = series.get(tag, [])
        curves[tag] = [(epoch_at.get(p.step, float(i)), p.value) for i, p in enumerate(points) if math.isfinite(p.value)]
    if epoch_at:
        epochs = int(max(epoch_at.values())) + 1
    else:
        epochs = len(series.get("val/dice", []))
    times = [s.wall_time for values in series.values() for s in values]
    wall = (max(times) - min(times)) if times else math.nan
    test = {tag: series[tag][-1].value for tag in TEST_METRICS if series.get(tag)}
    diverged = any(s.value > 0 for s in series.get("val_diagnostics/loss_metric_divergence", []))
    return RunSummary(name or run_dir.name, run_dir, best, final, epochs, wall, curves, test, diverged)
