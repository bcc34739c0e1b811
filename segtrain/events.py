"""Read a run's TensorBoard event files back: scalars by tag, and the hyper-parameters logged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Scalar:
    step: int
    value: float
    wall_time: float


def event_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).rglob("events.out.tfevents.*"))


def read_scalars(run_dir: str | Path) -> dict[str, list[Scalar]]:
    """Every scalar series under ``run_dir`` (all event files merged), sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[Scalar]] = {}
    for path in event_files(run_dir):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend(Scalar(e.step, e.value, e.wall_time) for e in acc.Scalars(tag))
    for values in series.values():
        values.sort(key=lambda s: (s.step, s.wall_time))
    return series


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
