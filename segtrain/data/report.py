"""The dataset report: what preflight found per case and for the whole dataset (``dataset_report.{txt,json}``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segtrain.files import write_text_atomic

TINY_FOREGROUND = 0.01         # below this share of voxels, the report suggests imbalance-aware losses


@dataclass
class CaseInfo:
    id: str
    shape: list[int]
    spacing: list[float]
    channels: int
    class_voxels: dict[int, int]
    axcodes: str = ""
    dtype: str = ""
    intensity_range: list[list[float]] = field(default_factory=list)  # per channel [min, max]


@dataclass
class DatasetReport:
    layout: str
    root: str
    num_cases: int
    num_classes: int
    class_names: list[str]
    channel_names: list[str]
    cases: list[CaseInfo] = field(default_factory=list)
    intensity: list[dict] = field(default_factory=list)  # per channel: foreground statistics (see ``intensity_statistics``)
    notes: list[str] = field(default_factory=list)       # hints added by the data module (configuration-dependent)

    def foreground_fraction(self) -> dict[str, float]:
        """Share of all voxels of the dataset that belong to each foreground class."""
        total = sum(int(np.prod(c.shape)) for c in self.cases)
        return {name: sum(c.class_voxels.get(index, 0) for c in self.cases) / max(total, 1)
                for index, name in enumerate(self.class_names) if index > 0}

    def cases_with_class(self) -> dict[str, int]:
        return {name: sum(1 for c in self.cases if c.class_voxels.get(index, 0) > 0)
                for index, name in enumerate(self.class_names) if index > 0}

    def median_spacing(self) -> list[float]:
        return np.median(np.array([c.spacing for c in self.cases]), 0).tolist()

    def summary(self) -> str:
        shapes = np.array([c.shape for c in self.cases])
        spacings = np.array([c.spacing for c in self.cases])
        axcodes = sorted({c.axcodes for c in self.cases if c.axcodes})
        dtypes = sorted({c.dtype for c in self.cases if c.dtype})
        lines = [
            f"dataset: {self.root} ({self.layout}), {self.num_cases} cases, {len(self.channel_names)} channel(s) "
            f"{self.channel_names}, {self.num_classes} classes {self.class_names}",
            f"  shape: min {shapes.min(0).tolist()} median {np.median(shapes, 0).astype(int).tolist()} max {shapes.max(0).tolist()}",
            f"  spacing: min {np.round(spacings.min(0), 3).tolist()} median {np.round(np.median(spacings, 0), 3).tolist()} "
            f"max {np.round(spacings.max(0), 3).tolist()}"
            + (f"; orientation {', '.join(axcodes)}" if axcodes else "") + (f"; dtype {', '.join(dtypes)}" if dtypes else ""),
        ]
        for stats in self.intensity:
            if stats.get("foreground_voxels_sampled"):
                lines.append(
                    f"  intensity {stats['channel']}: range [{stats['min']:.4g}, {stats['max']:.4g}], foreground mean "
                    f"{stats['mean']:.4g} std {stats['std']:.4g}, 0.5-99.5% [{stats['percentile_00_5']:.4g}, {stats['percentile_99_5']:.4g}]"
                )
        fractions, present = self.foreground_fraction(), self.cases_with_class()
        empty = sum(1 for c in self.cases if not any(v for k, v in c.class_voxels.items() if k > 0))
        lines.append(
            "  foreground fraction: "
            + ", ".join(f"{name} {100 * f:.4f}% (in {present[name]} cases)" for name, f in fractions.items())
            + f"; {empty} case(s) without foreground"
        )
        if fractions and min(fractions.values()) < TINY_FOREGROUND:
            tiny = [n for n, f in fractions.items() if f < TINY_FOREGROUND]
            lines.append(
                f"  hint: tiny foreground (<{100 * TINY_FOREGROUND:g}% of voxels: {', '.join(tiny)}): prefer region or "
                "compound losses (loss=dice_ce, loss=tversky loss.alpha=0.3, focal_tversky) over plain cross-entropy, "
                "and keep foreground oversampling on (data.pos_fraction, data.sampling=class_balanced for several classes)"
            )
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["foreground_fraction"] = self.foreground_fraction()
        data["cases_with_class"] = self.cases_with_class()
        return data

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / "dataset_report.json", json.dumps(self.to_dict(), indent=2))
        write_text_atomic(directory / "dataset_report.txt", self.summary() + "\n")


