"""segtrain-compare: run discovery, names, sorting, and a real multirun over three losses."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import pytest

from helpers.cli import TINY_3D, run_cli
from segtrain.compare import compare, csv_table, main, markdown_table, run_names
from segtrain.events import find_runs, read_scalars

COMPARE = str(Path(sys.executable).parent / "segtrain-compare")


def write_run(run_dir: Path, dice: list[float], loss: list[float], overrides: list[str] | None = None) -> Path:
    """A fake run: TensorBoard scalars as segtrain logs them (2 steps per epoch), optional overrides.yaml."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    for epoch, (d, lo) in enumerate(zip(dice, loss)):
        step = 2 * epoch + 1
        writer.add_scalar("epoch", epoch, step, walltime=1000.0 + 10 * epoch)
        writer.add_scalar("val/dice", d, step, walltime=1000.0 + 10 * epoch)
        writer.add_scalar("val/iou", d / (2 - d), step, walltime=1000.0 + 10 * epoch)
        writer.add_scalar("val/loss", lo, step, walltime=1000.0 + 10 * epoch + 5)
    writer.close()
    if overrides is not None:
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return run_dir


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    write_run(root / "0_loss=dice", [0.1, 0.5, 0.4], [0.9, 0.6, 0.5], ["loss=dice", "trainer.max_epochs=3"])
    write_run(root / "1_loss=tversky", [0.2, 0.7, 0.6], [0.8, 0.7, 0.75], ["loss=tversky", "trainer.max_epochs=3"])
    write_run(root / "2_loss=ce", [0.0, 0.1, math.nan], [1.0, 0.9, 0.8], ["loss=ce", "trainer.max_epochs=3"])
    return root


def test_finds_runs_under_a_sweep_dir_and_names_them_by_differing_overrides(sweep, tmp_path):
    runs = find_runs([sweep])
    assert sorted(r.name for r in runs) == ["0_loss=dice", "1_loss=tversky", "2_loss=ce"]
    assert find_runs([sweep / "0_loss=dice"]) == [(sweep / "0_loss=dice").resolve()]
    assert sorted(run_names(runs)) == ["loss=ce", "loss=dice", "loss=tversky"]  # trainer.max_epochs=3 is shared
    plain = write_run(tmp_path / "plain", [0.3], [0.5])  # no .hydra: named by its directory
    assert run_names(find_runs([plain])) == ["plain"]


def test_summaries_best_final_epochs_and_wall_time(sweep):
    by_name = {s.name: s for s in compare([sweep])}
    dice = by_name["loss=dice"]
    assert dice.best["val/dice"] == pytest.approx(0.5) and dice.final["val/dice"] == pytest.approx(0.4)
    assert dice.best["val/loss"] == pytest.approx(0.5) and dice.final["val/loss"] == pytest.approx(0.5)
    assert dice.epochs == 3 and dice.wall_time == pytest.approx(25.0)
    assert by_name["loss=ce"].final["val/dice"] == pytest.approx(0.1)  # NaN epochs are skipped
    assert dice.curves["val/dice"] == [(0.0, pytest.approx(0.1)), (1.0, pytest.approx(0.5)), (2.0, pytest.approx(0.4))]


def test_sorting(sweep):
    assert [s.name for s in compare([sweep])] == ["loss=tversky", "loss=dice", "loss=ce"]
    assert [s.name for s in compare([sweep], sort="best_val_loss")] == ["loss=dice", "loss=tversky", "loss=ce"]
    assert [s.name for s in compare([sweep], sort="name")] == ["loss=ce", "loss=dice", "loss=tversky"]


def test_markdown_csv_and_plot(sweep, tmp_path, capsys):
    summaries = compare([sweep])
    table = markdown_table(summaries).splitlines()
    assert table[0].startswith("| run | best val/dice | final val/dice |") and len(table) == 5
    assert table[2].startswith("| loss=tversky | 0.7000 | 0.6000 |")
    rows = list(csv.DictReader(io.StringIO(csv_table(summaries))))
    assert rows[0]["run"] == "loss=tversky" and float(rows[0]["best_val_dice"]) == pytest.approx(0.7)
    main([str(sweep), "--csv", str(tmp_path / "runs.csv"), "--plot", str(tmp_path / "dice.png")])
    out = capsys.readouterr().out
    assert "| loss=tversky |" in out and (tmp_path / "runs.csv").is_file()
    assert (tmp_path / "dice.png").read_bytes()[:4] == b"\x89PNG"


def test_no_runs_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no TensorBoard event files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert "no such file or directory" in capsys.readouterr().err


@pytest.mark.slow
def test_multirun_over_three_losses_then_compare(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    args = [a for a in TINY_3D if not a.startswith(("trainer.max_epochs", "data.synthetic.num_cases"))]
    proc = run_cli(["-m", *args, "data.synthetic.num_cases=10", "trainer.max_epochs=2", "loss=dice,tversky,dice_ce",
                    f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Job directories are named by the swept parameter.
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [  # the dataset, then what the sweep varies
        "0_loss=dice_synthetic3d", "1_loss=tversky_synthetic3d", "2_loss=dice_ce_synthetic3d"]

    proc = run_cli([str(sweep), "--csv"], tmp_path, cache_dir, program=COMPARE)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["run"] for r in rows] and sorted(r["run"] for r in rows) == ["loss=dice", "loss=dice_ce", "loss=tversky"]
    best_dice = [float(r["best_val_dice"]) for r in rows]
    assert best_dice == sorted(best_dice, reverse=True)  # sorted by best val/dice
    for row in rows:
        scalars = read_scalars(row["path"])
        for tag in ("val/dice", "val/iou", "val/loss"):
            values = [s.value for s in scalars[tag]]
            assert len(values) == 2
            best = min(values) if tag.endswith("loss") else max(values)
            name = tag.replace("/", "_")
            assert float(row[f"best_{name}"]) == pytest.approx(best, abs=1e-7)
            assert float(row[f"final_{name}"]) == pytest.approx(values[-1], abs=1e-7)
        assert int(row["epochs"]) == 2
        times = [s.wall_time for series in scalars.values() for s in series]
        assert float(row["wall_time_s"]) == pytest.approx(max(times) - min(times), abs=1e-3)

    proc = run_cli([str(sweep), "--plot", str(tmp_path / "dice.png")], tmp_path, cache_dir, program=COMPARE)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines() if line.startswith("| loss=")]
    assert len(table) == 3
    for line, row in zip(table, rows):  # the markdown table: same runs, same order, numbers to 4 decimals
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["run"]
        assert float(cells[1]) == pytest.approx(float(row["best_val_dice"]), abs=5e-5)
        assert float(cells[6]) == pytest.approx(float(row["final_val_loss"]), abs=5e-5)
    assert (tmp_path / "dice.png").stat().st_size > 1000
