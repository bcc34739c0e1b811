"""Overlays, the custom-scalars layout, run names from overrides, and the HParams content (no training)."""

from __future__ import annotations

import re

import pytest
import torch

from helpers.cli import TINY_3D, compose
from segtrain.callbacks.layout import MetricsLayout, default_layout
from segtrain.callbacks.overlays import ValidationOverlays, display_slice, pick_slice, render_overlay
from segtrain.callbacks.run_name import MAX_LENGTH, join_overrides


# -- overlays -------------------------------------------------------------------------------------------
def test_pick_slice_prefers_label_then_prediction_then_middle():
    label, pred = torch.zeros(8, 8, 10, dtype=torch.long), torch.zeros(8, 8, 10, dtype=torch.long)
    assert pick_slice(label, pred) == 5
    pred[2:4, 2:4, 7] = 1
    assert pick_slice(label, pred) == 7
    label[1:6, 1:6, 3] = 1
    label[1:3, 1:3, 8] = 1
    assert pick_slice(label, pred) == 3


def test_render_overlay_panels_and_colours():
    from segtrain.callbacks.overlays import GAP, HEADER

    image = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    label = torch.zeros(8, 8, dtype=torch.long)
    pred = torch.zeros(8, 8, dtype=torch.long)
    label[2:4, 2:4] = 1  # TP at (2..3, 2..3) except one FN
    pred[2:4, 2:4] = 1
    pred[3, 3] = 0
    pred[6, 6] = 1  # FP
    out = render_overlay(image, label, pred, min_size=8, titles=False)
    assert out.shape == (3, 2 * 8 + GAP, 2 * 8 + GAP) and 0 <= out.min() and out.max() <= 1  # a 2x2 grid
    errors = out[:, 8 + GAP:, 8 + GAP:]
    assert errors[1, 2, 2] > 0.7 and errors[0, 2, 2] < 0.3  # TP green
    assert errors[0, 6, 6] > 0.7 and errors[1, 6, 6] < 0.3  # FP red
    assert errors[2, 3, 3] > 0.7 and errors[0, 3, 3] < 0.3  # FN blue
    assert torch.equal(out[:, :8, :8], out[:, :8, :8][0:1].expand(3, 8, 8))  # the image panel is grey
    big = render_overlay(image, label, pred, min_size=64)  # small slices enlarged, titled
    assert big.shape == (3, 2 * (HEADER + 64) + GAP, 2 * 64 + GAP)
    band = big[:, :HEADER, :64]
    assert (band < 0.5).any() and (band > 0.9).any()  # dark title text on white
    legend = big[:, HEADER + 64 + GAP: 2 * HEADER + 64 + GAP, 64 + GAP:]
    greenish = (legend[1] > 0.6) & (legend[0] < 0.4)
    assert greenish.any()  # "TP" in green in the errors panel's title


def test_display_slice_orients_3d_and_2d_cases():
    image = torch.zeros(1, 4, 6, 5)
    label = torch.zeros(1, 4, 6, 5, dtype=torch.long)
    label[0, 0, 1, 2] = 1  # x=0, y=1 on slice z=2
    img2d, lab2d, pred2d = display_slice(image, label, torch.zeros_like(label))
    assert img2d.shape == (1, 6, 4) and lab2d.shape == (6, 4)
    assert lab2d[6 - 1 - 1, 4 - 1 - 0] == 1  # rows: y flipped (anterior up); columns: x flipped (right on the left)
    img2d, lab2d, _ = display_slice(torch.zeros(3, 5, 7), torch.zeros(1, 5, 7, dtype=torch.long), torch.zeros(1, 5, 7, dtype=torch.long))
    assert img2d.shape == (3, 7, 5) and lab2d.shape == (7, 5)  # MONAI's (width, height) back to (height, width)


class _Writer:
    def __init__(self):
        self.images, self.layouts = [], []

    def add_image(self, tag, image, global_step, dataformats):
        self.images.append((tag, tuple(image.shape), global_step))

    def add_custom_scalars(self, layout):
        self.layouts.append(layout)


class _Trainer:
    def __init__(self, writer):
        self.is_global_zero, self.sanity_checking, self.current_epoch, self.global_step = True, False, 0, 7
        self.loggers = [type("Logger", (), {"experiment": writer})()]


def test_overlays_keep_the_first_cases_by_id_and_log_them_sorted():
    writer = _Writer()
    trainer, callback = _Trainer(writer), ValidationOverlays(num_cases=2, min_size=1)
    callback.on_validation_epoch_start(trainer, None)
    for batch_idx, case_id in enumerate(["case_3", "case_1", "case_4", "case_0"]):
        volume = torch.zeros(1, 1, 8, 8, 6)
        outputs = {"image": volume, "label": volume.long(), "pred": volume.long(), "id": [case_id]}
        callback.on_validation_batch_end(trainer, None, outputs, {}, batch_idx)
    callback.on_validation_epoch_end(trainer, None)
    assert [(tag, step) for tag, _, step in writer.images] == [("val_overlays/case_0", 7), ("val_overlays/case_1", 7)]
    from segtrain.callbacks.overlays import GAP, HEADER

    assert writer.images[0][1] == (3, 2 * (HEADER + 8) + GAP, 2 * 8 + GAP)  # four titled 8x8 panels, 2x2
    # Not every epoch when asked, never during the sanity check, never on other ranks.
    writer.images.clear()
    for attr, value in (("current_epoch", 1), ("sanity_checking", True), ("is_global_zero", False)):
        trainer = _Trainer(writer)
        setattr(trainer, attr, value)
        callback = ValidationOverlays(every_n_epochs=2)
        callback.on_validation_batch_end(trainer, None, outputs, {}, 0)
        callback.on_validation_epoch_end(trainer, None)
    assert writer.images == []
    with pytest.raises(ValueError, match="opacity"):
        ValidationOverlays(opacity=2)


# -- custom scalars ------------------------------------------------------------------------------------------
def test_layout_keeps_losses_and_dice_on_separate_charts_per_split():
    layout = default_layout()
    charts = {title: chart for category in layout.values() for title, chart in category.items()}
    assert all(kind == "Multiline" for kind, _ in charts.values())
    tags = ["train/loss", "train/loss_epoch", "train/dice", "val/loss", "val/dice", "val/iou", "val/dice/sphere"]

    def tags_of(title):
        return [t for t in tags if any(re.match(rx, t) for rx in charts[title][1])]

    assert list(layout) == ["segtrain: validation (whole cases)", "segtrain: training (patches)",
                            "segtrain: comparisons and diagnostics"]
    assert tags_of("val loss") == ["val/loss"] and tags_of("val Dice") == ["val/dice"] and tags_of("val IoU") == ["val/iou"]
    assert tags_of("train loss (per step)") == ["train/loss"] and tags_of("train Dice (patches)") == ["train/dice"]
    assert tags_of("Dice: train patches vs val whole cases") == ["train/dice", "val/dice"]
    assert tags_of("val Dice per class") == ["val/dice/sphere"]
    losses, dice = {"train/loss", "train/loss_epoch", "val/loss"}, {"train/dice", "val/dice", "val/iou", "val/dice/sphere"}
    for title in charts:  # no chart puts a loss and a Dice on one axis, but the one that compares losses
        assert not (set(tags_of(title)) & losses and set(tags_of(title)) & dice), title
    writer = _Writer()
    MetricsLayout().on_fit_start(_Trainer(writer), None)
    assert writer.layouts == [default_layout()]


def test_layout_is_readable_by_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    MetricsLayout().on_fit_start(_Trainer(writer), None)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    proto = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [chart.title for category in proto.category for chart in category.chart]
    assert "Dice: train patches vs val whole cases" in titles


# -- run names ------------------------------------------------------------------------------------------------
def test_run_names_put_the_loss_first_and_stay_valid_directory_names():
    assert join_overrides([("loss.alpha", "loss.alpha=0.7"), ("loss", "loss=tversky")]) == "loss=tversky,loss.alpha=0.7"
    items = [(a.split("=")[0], a) for a in TINY_3D] + [("loss", "loss=dice"), ("data.root", "data.root=/data/x")]
    name = join_overrides(items)
    assert len(name) <= MAX_LENGTH and "/" not in name and name.startswith("loss=dice,model.channels=")
    assert re.search(r",\+\d+~[0-9a-f]{8}$", name)
    assert join_overrides([]) == ""
    assert join_overrides([("data.label_mapping", "data.label_mapping={255: 1}")]) == "data.label_mapping=_255_1"
    assert join_overrides([("x", "x='a b'/c:[1,2]")]) == "x=_a_b_c_1,2"


# -- HParams -----------------------------------------------------------------------------------------------------
def test_flat_params_hold_every_loss_model_data_optim_parameter(cache_dir):
    from segtrain.train import flat_params

    cfg = compose(["loss=tversky", "loss.alpha=0.7"], cache_dir=cache_dir)
    params = flat_params(cfg)
    for group in ("loss", "model", "optim", "data"):
        leaves = {}

        def walk(prefix, node):
            if hasattr(node, "items"):
                for k, v in node.items():
                    if k not in ("_partial_", "cache_dir"):
                        walk(f"{prefix}.{k}", v)
            else:
                leaves[prefix] = node

        walk(group, cfg[group])
        assert set(leaves) <= set(params), sorted(set(leaves) - set(params))
    assert params["loss.alpha"] == 0.7 and params["loss.beta"] == "null"
    assert params["data.synthetic.num_cases"] == 32 and params["model.channels"] == "[16, 32, 64, 128]" and params["model.strides"] == "auto"
    assert all(isinstance(v, (int, float, str, bool)) for v in params.values())


def test_flat_params_put_the_overridden_ones_first(cache_dir, monkeypatch):
    import segtrain.train as train

    cfg = compose(["loss=tversky", "loss.alpha=0.7", "data.patch_size=[32,32,32]"], cache_dir=cache_dir)
    monkeypatch.setattr(train, "_group_choices", lambda: {"loss": "tversky", "data": "synthetic3d"})
    params = train.flat_params(cfg, ["loss=tversky", "loss.alpha=0.7", "data.patch_size=[32,32,32]"])
    assert list(params)[:3] == ["(set) loss", "(set) loss.alpha", "(set) data.patch_size"]
    assert params["(set) loss"] == "tversky" and params["(set) data.patch_size"] == "[32, 32, 32]"
    assert params["loss.alpha"] == 0.7 and len(params) == len(train.flat_params(cfg)) + 3
    assert sorted(params)[:3] == sorted(list(params)[:3])  # TensorBoard sorts by name: they stay first


def test_hparam_metrics_best_and_final():
    from segtrain.events import hparam_metric_names, hparam_metrics

    best = {"val/dice": 0.6, "val/iou": 0.3, "val/loss": 0.5}
    values = hparam_metrics({"val/dice": 0.5, "val/iou": 0.25, "val/loss": 0.55}, best)
    assert set(values) == set(hparam_metric_names())
    assert values["val_summary/best_val_dice"] == pytest.approx(0.6) and values["val_summary/final_val_dice"] == pytest.approx(0.5)
    assert values["val_summary/best_val_iou"] == pytest.approx(0.3) and values["val_summary/best_val_loss"] == pytest.approx(0.5)
    assert values["val_summary/final_val_loss"] == pytest.approx(0.55)
    assert hparam_metrics({"val/dice": 0.4}, {})["val_summary/best_val_dice"] == 0.4  # never finite: the final stands in
