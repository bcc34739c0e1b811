"""segtrain-compare --group-by: aggregation over seeds from per-case test CSVs and event files; the paired test."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from helpers.cli import SEGTRAIN, TINY_3D, run_cli
from segtrain.compare_groups import holm, paired_wilcoxon


def test_holm_adjustment_known_values():
    # sorted p: 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> kept monotone at 0.06; NaN is not counted
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([0.6, 0.5]) == [1.0, 1.0]


def test_paired_wilcoxon_matches_scipy_on_the_shared_finite_pairs():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(3)
    x, y = rng.normal(0.8, 0.05, 20), rng.normal(0.75, 0.05, 20)
    a = {("c", str(i)): float(v) for i, v in enumerate(x)}
    b = {("c", str(i)): float(v) for i, v in enumerate(y)}
    a[("only", "a")] = 0.1           # unmatched: ignored
    b[("c", "0")] = math.nan          # not scored in b: the pair is dropped
    assert paired_wilcoxon(a, b) == pytest.approx(wilcoxon(x[1:], y[1:]).pvalue)
    assert math.isnan(paired_wilcoxon({("c", "1"): 0.5}, {("c", "1"): 0.4}))  # one pair: no test


@pytest.mark.slow
def test_group_by_loss_aggregates_a_two_loss_two_seed_sweep(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *TINY_3D, "hparams_search=loss_benchmark", "loss=dice_ce,tversky", "seed=0,1",
                    "data.synthetic.num_cases=8", f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "bench"
    proc = run_cli([str(sweep), "--group-by", "loss", "--baseline", "dice_ce", "--out", str(out)], tmp_path, cache_dir,
                   program=SEGTRAIN + "-compare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| rank | loss | runs |" in proc.stdout and "baseline" in proc.stdout
    rows = {r["loss"]: r for r in csv.DictReader((out / "grouped.csv").open())}
    assert set(rows) == {"dice_ce", "tversky"}
    from segtrain.events import read_scalars

    for loss, row in rows.items():
        runs = sorted(p for p in sweep.iterdir() if p.is_dir() and f"loss={loss}," in p.name)
        assert len(runs) == 2 and row["runs"] == "2"
        per_run = []
        for run in runs:
            values = [float(r["dice"]) for r in csv.DictReader((run / "test_metrics_per_case.csv").open()) if r["dice"]]
            per_run.append(np.mean(values))
        assert float(row["dice_mean"]) == pytest.approx(np.mean(per_run))
        assert float(row["dice_std"]) == pytest.approx(np.std(per_run, ddof=1))
        assert float(row["dice_ci_low"]) <= float(row["dice_ci_high"])
        test_cases = json.loads((runs[0] / "split.json").read_text())["test"]
        assert int(row["dice_n_cases"]) <= len(test_cases)
        best = [max(s.value for s in read_scalars(run)["val/dice"]) for run in runs]
        assert float(row["best_val_dice"]) == pytest.approx(np.mean(best))
    assert rows["dice_ce"]["p_dice_holm"] == ""  # the baseline is not tested against itself
    for name in ("grouped.md", "box_dice.png", "box_hd95.png", "curves_val_dice.png"):
        assert (out / name).is_file()


def test_benchmark_script_datasets_compose_with_the_preset(cache_dir):
    """scripts/loss_benchmark.py's dataset overrides are valid configs; the preset holds a test set out."""
    import importlib.util

    from helpers.cli import ROOT, compose

    spec = importlib.util.spec_from_file_location("loss_benchmark", ROOT / "scripts" / "loss_benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in ("tiny3d", "mixed3d", "synthetic2d"):
        cfg = compose(["hparams_search=loss_benchmark", *script.dataset_overrides(name, 40, 64, 10)], cache_dir=cache_dir)
        assert cfg.data.test_fraction == 0.2 and cfg.data.max_epochs == 10 and cfg.data.synthetic.num_cases == 40
        assert cfg.data.synthetic.spatial_dims == (2 if name == "synthetic2d" else 3)
    assert len(script.DEFAULT_LOSSES.split(",")) == 10
