"""The loss/metric divergence monitor: its rule on hand-made histories, and real CLI runs."""

from __future__ import annotations

import logging

import pytest

from helpers.cli import TINY_3D, run_cli
from segtrain.callbacks.divergence import DivergenceMonitor, assess, linear_trend, spearman
from segtrain.events import read_scalars

FLAG, CORR = "val_diagnostics/loss_metric_divergence", "val_diagnostics/loss_dice_corr"
WARNING = "loss and Dice diverge"

# Histories seen in real runs of the tiny 3D data (12 epochs, see the CLI tests below).
TINY_FG_DICE_BG = (  # loss=dice loss.include_background=true, foreground 0.04%: loss falls, Dice ~0
    [0.6088, 0.5856, 0.5658, 0.5485, 0.5364, 0.5291, 0.5241, 0.5206, 0.5182, 0.5167, 0.5159, 0.5156],
    [0.0005, 0.0008, 0.0007, 0.0010, 0.0048, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
)
HEALTHY = (  # loss=dice_ce on learnable data: loss falls, Dice rises
    [1.50, 1.389, 1.291, 1.193, 1.114, 1.053, 1.010, 0.977, 0.952, 0.935, 0.924, 0.919],
    [0.10, 0.225, 0.291, 0.373, 0.474, 0.571, 0.629, 0.669, 0.686, 0.696, 0.700, 0.705],
)
CONVERGED = (  # Dice rose early, then a plateau while the loss keeps falling slowly (confidence grows)
    [1.22, 1.07, 0.94, 0.83, 0.77, 0.69, 0.61, 0.57, 0.573, 0.565, 0.55, 0.54, 0.53, 0.52],
    [0.05, 0.44, 0.78, 0.83, 0.81, 0.825, 0.859, 0.858, 0.839, 0.833, 0.84, 0.83, 0.835, 0.838],
)


# The GPU run of the nnU-Net issue (a real 5-case 3D lesion set, model=dynunet, 900 steps): the training
# loss fell 45% while val/dice stayed 0.0000 at all 18 validations and val/loss rose (read off its curves).
LESION_TRAIN = [1.212, 1.154, 1.106, 1.063, 1.021, 0.986, 0.950, 0.921, 0.893, 0.866, 0.841, 0.815, 0.790, 0.770,
                0.747, 0.727, 0.684, 0.667]
LESION_VAL = [1.031, 1.035, 1.044, 1.051, 1.049, 1.062, 1.071, 1.077, 1.090, 1.096, 1.103, 1.118, 1.121, 1.134, 1.142,
              1.151, 1.160, 1.172]
LESION_DICE = [0.0] * 18


def verdicts(losses, dices, **kw):
    return [assess(list(range(n)), losses[:n], dices[:n], **kw) for n in range(1, len(losses) + 1)]


def test_spearman_matches_scipy_and_handles_constant_series():
    from scipy.stats import spearmanr

    x, y = [3, 1, 2, 2, 5], [0.1, 0.4, 0.3, 0.2, 0.0]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [0, 0, 0]) == 0.0
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_linear_trend_is_the_least_squares_line():
    assert linear_trend([0, 1, 2, 3], [1.0, 0.9, 0.8, 0.7]) == pytest.approx((1.0, 0.7))
    assert linear_trend([0, 1, 2], [0.0, 1.0, 0.0]) == pytest.approx((1 / 3, 1 / 3))


def test_loss_falling_while_dice_stays_zero_is_flagged_once_the_window_is_full():
    results = verdicts(*TINY_FG_DICE_BG)
    assert not any(r.diverging for r in results[:9])  # window of 10 not yet full: never judged
    assert results[9].diverging
    assert results[9].loss_change < -0.1 and abs(results[9].dice_change) < 0.01
    assert results[9].corr > 0  # loss and Dice fall together: the opposite of healthy


def test_healthy_run_is_not_flagged_and_correlates_negatively():
    results = verdicts(*HEALTHY)
    assert not any(r.diverging for r in results)
    assert all(r.corr == pytest.approx(-1.0) for r in results[2:])


def test_plateau_after_dice_took_off_is_not_flagged():
    assert not any(r.diverging for r in verdicts(*CONVERGED))


def test_dice_falling_while_loss_improves_is_flagged_even_after_take_off():
    losses = [1.0 - 0.03 * i for i in range(12)]
    dices = [0.1, 0.4, 0.6, 0.62, 0.6, 0.58, 0.55, 0.52, 0.5, 0.47, 0.45, 0.42]
    assert verdicts(losses, dices)[-1].diverging


def test_flat_loss_is_not_flagged():
    assert not any(r.diverging for r in verdicts([0.5] * 12, [0.0] * 12))


def test_training_loss_falling_while_val_dice_never_leaves_zero_is_flagged_as_overfitting():
    """The nnU-Net issue's curve: val/loss rises, so the first rule is silent; the second catches it."""
    epochs = list(range(18))
    assert not assess(epochs, LESION_VAL, LESION_DICE).diverging  # val/loss alone: no warning (as before)
    results = [assess(epochs[:n], LESION_VAL[:n], LESION_DICE[:n], train_losses=LESION_TRAIN[:n]) for n in range(1, 19)]
    assert not any(r.diverging for r in results[:9])  # the window fills first
    assert all(r.diverging and r.rule == "train" for r in results[9:])
    assert results[-1].train_change == pytest.approx(-0.45, abs=0.03) and results[-1].val_loss_change > 0.1
    monitor = DivergenceMonitor()
    monitor.history = {"epoch": epochs, "loss": LESION_VAL, "dice": LESION_DICE, "train_loss": LESION_TRAIN}
    monitor.last = results[-1]
    message = monitor.flat_message()
    assert "the training loss fell" in message and "never left 0" in message and "over-fitting a few training cases" in message


def test_training_loss_falling_while_val_dice_stays_zero_and_val_loss_flat_is_a_loss_metric_mismatch():
    epochs = list(range(18))
    flat_val = [1.0 + 0.002 * (i % 3) for i in range(18)]
    result = assess(epochs, flat_val, LESION_DICE, train_losses=LESION_TRAIN)
    assert result.diverging and result.rule == "train" and abs(result.val_loss_change) < 0.05
    monitor = DivergenceMonitor()
    monitor.history = {"epoch": epochs, "loss": flat_val, "dice": LESION_DICE, "train_loss": LESION_TRAIN}
    monitor.last = result
    assert "a mismatch between the loss and the metric" in monitor.flat_message()
    # a run whose Dice leaves 0 is not flagged by this rule, nor one whose training loss barely moves
    assert not assess(epochs, flat_val, [0.0] * 5 + [0.2] * 13, train_losses=LESION_TRAIN).diverging
    assert not assess(epochs, flat_val, LESION_DICE, train_losses=[1.0 - 0.005 * i for i in range(18)]).diverging
    healthy_train = [1.5 - 0.05 * i for i in range(12)]
    assert not any(assess(list(range(n)), HEALTHY[0][:n], HEALTHY[1][:n], train_losses=healthy_train[:n]).diverging
                   for n in range(1, 13))


def test_window_and_thresholds_are_configurable():
    results = verdicts(*TINY_FG_DICE_BG, window=4)
    assert results[3].diverging  # a short window judges earlier
    assert not any(r.diverging for r in verdicts(*TINY_FG_DICE_BG, min_loss_improvement=0.5))
    with pytest.raises(ValueError, match="window=2"):
        DivergenceMonitor(window=2)
    with pytest.raises(ValueError, match="min_dice_gain"):
        DivergenceMonitor(min_dice_gain=-1)


class _Logger:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


class _Trainer:
    def __init__(self):
        self.sanity_checking, self.is_global_zero, self.global_step, self.current_epoch = False, True, 0, 0
        self.state = type("State", (), {"fn": "fit"})()
        self.loggers = [_Logger()]
        self.callback_metrics = {}


def test_callback_logs_every_validation_and_warns_once(caplog):
    import torch

    from segtrain.losses import build_loss

    monitor, trainer = DivergenceMonitor(), _Trainer()
    module = type("Module", (), {"loss": build_loss("dice", include_background=True)})()
    with caplog.at_level(logging.WARNING, logger="segtrain"):
        for epoch, (loss, dice) in enumerate(zip(*TINY_FG_DICE_BG)):
            trainer.current_epoch, trainer.global_step = epoch, 4 * (epoch + 1)
            trainer.callback_metrics = {"val/loss": torch.tensor(loss), "val/dice": torch.tensor(dice),
                                        "train/loss_epoch": torch.tensor(0.7 - 0.001 * epoch)}
            monitor.on_validation_end(trainer, module)
    assert len(monitor.history["train_loss"]) == len(TINY_FG_DICE_BG[0])
    flags = [m[FLAG] for _, m in trainer.loggers[0].logged]
    assert flags == [0.0] * 9 + [1.0] * 3
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1
    assert "include_background" in warnings[0] and "0.6088 -> 0.5167" in warnings[0]

    # A resumed run keeps its history (and does not warn again).
    restored = DivergenceMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.warned and restored.history == monitor.history

    # The second rule through the callback: the recorded lesion run warns once, naming over-fitting.
    monitor, trainer = DivergenceMonitor(), _Trainer()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segtrain"):
        for epoch, (train, val) in enumerate(zip(LESION_TRAIN, LESION_VAL)):
            trainer.current_epoch = epoch
            trainer.callback_metrics = {"val/loss": torch.tensor(val), "val/dice": torch.tensor(0.0),
                                        "train/loss_epoch": torch.tensor(train)}
            monitor.on_validation_end(trainer, module)
    warnings = [r.getMessage() for r in caplog.records if "never left 0" in r.getMessage()]
    assert len(warnings) == 1 and "over-fitting" in warnings[0]


# -- real runs of the CLI -------------------------------------------------------------------------------

LONGER = {"trainer.max_epochs": "12", "data.patches_per_epoch": "16", "data.batch_size": "4", "data.synthetic.num_cases": "10"}
TINY_FOREGROUND = {"data.synthetic.radius": "[1,2]", "data.synthetic.num_objects": "[1,3]"}  # ~0.04% foreground


def tiny(**overrides: str) -> list[str]:
    """TINY_3D with some of its values replaced (or added): 10 cases give 2 validation cases with foreground."""
    args = [a for a in TINY_3D if a.split("=", 1)[0] not in overrides]
    return args + [f"{k}={v}" for k, v in overrides.items()]


@pytest.mark.slow
def test_dice_with_background_on_tiny_foreground_is_caught(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_cli([*tiny(**LONGER, **TINY_FOREGROUND), "loss=dice", "loss.include_background=true",
                    f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(WARNING) == 1, proc.stdout[-3000:]
    assert "loss.include_background=true" in proc.stdout  # the likely cause, named
    scalars = read_scalars(run)
    flags = [s.value for s in scalars[FLAG]]
    losses, dices = [s.value for s in scalars["val/loss"]], [s.value for s in scalars["val/dice"]]
    assert len(flags) == 12 and flags[:9] == [0.0] * 9 and flags[9] == 1.0
    assert losses[9] < 0.9 * losses[0]  # the loss falls clearly...
    assert max(dices) < 0.05  # ...while foreground Dice stays near 0
    assert scalars[CORR][7].value > 0  # and loss and Dice do not move in opposite directions


@pytest.mark.slow
def test_healthy_dice_ce_run_is_not_flagged_and_logs_overlays_and_layout(tmp_path, cache_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from segtrain.events import event_files, read_hparams

    run = tmp_path / "run"
    proc = run_cli([*tiny(**LONGER), "loss=dice_ce", f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert WARNING not in proc.stdout
    scalars = read_scalars(run)
    assert [s.value for s in scalars[FLAG]] == [0.0] * 12
    dices = [s.value for s in scalars["val/dice"]]
    assert dices[-1] > dices[0] + 0.3
    assert all(s.value < -0.9 for s in scalars[CORR])  # Dice rises as the loss falls
    # Overlays of the validation cases (both here) after each validation, and the custom-scalars layout.
    tags = {}
    for path in event_files(run):
        acc = EventAccumulator(str(path), size_guidance={"images": 0})
        acc.Reload()
        for kind, names in acc.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, set()).update(names)
        if "val_overlays/case_000" in acc.Tags()["images"]:
            images = acc.Images("val_overlays/case_000")
    assert {"val_overlays/case_000", "val_overlays/case_007"} <= tags["images"]
    from segtrain.callbacks.overlays import GAP, HEADER

    panel = (images[0].width - GAP) // 2  # four titled panels in a 2x2 grid
    assert len(images) == 12 and images[0].height == 2 * (HEADER + panel) + GAP
    assert "custom_scalars__config__" in tags["tensors"]
    # HParams: every parameter, best and final metrics.
    hparams = read_hparams(run)
    assert hparams["loss.name"] == "dice_ce" and hparams["data.synthetic.num_cases"] == 10
    assert {"loss.ce_weight", "model.channels", "optim.optimizer.lr", "data.patch_size"} <= set(hparams)
    for tag in ("val/dice", "val/iou", "val/loss"):
        name = tag.replace("/", "_")
        values = [s.value for s in scalars[tag]]
        best = min(values) if tag.endswith("loss") else max(values)
        assert scalars[f"val_summary/best_{name}"][-1].value == pytest.approx(best, abs=1e-6)
        assert scalars[f"val_summary/final_{name}"][-1].value == pytest.approx(values[-1], abs=1e-6)
