"""Label maps (signed distances, border weights), boundary's alpha schedule, deep supervision,
the loss configs and the ``segtrain-losses`` listing."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage

from helpers.cli import ROOT
from segtrain.losses import available_losses, build_loss
from segtrain.losses.maps import SignedDistanceMaps
from segtrain.losses.maps import BorderWeightMap
from segtrain.losses.deep_supervision import DeepSupervisionLoss
from segtrain.losses.registry import loss_parameters


# -- boundary: signed distance maps --------------------------------------------------------------
def test_signed_distance_by_hand_with_spacing():
    label = np.array([[[0, 1, 1, 0, 0]]])  # (1, 1, 5): one row
    maps = SignedDistanceMaps()(label, spacing=(1.0, 1.0))
    np.testing.assert_allclose(maps, [[[1, -1, -1, 1, 2]]])
    # 2 mm along the row: distances double
    np.testing.assert_allclose(SignedDistanceMaps()(label, spacing=(1.0, 2.0)), [[[2, -2, -2, 2, 4]]])
    assert maps.dtype == np.float32


def test_signed_distance_channels_absent_and_full_classes():
    label = np.zeros((1, 4, 4), dtype=np.int64)
    label[0, 1:3, 1:3] = 2  # class 1 absent, class 2 present
    maps = SignedDistanceMaps(num_classes=4)(label)
    assert maps.shape == (3, 4, 4)
    assert not maps[0].any() and not maps[2].any()  # absent classes: 0
    assert (maps[1][1:3, 1:3] < 0).all() and (maps[1][0] > 0).all()
    assert SignedDistanceMaps()(label).shape == (2, 4, 4)  # unknown class count: up to the largest label
    assert SignedDistanceMaps()(np.zeros((1, 3, 3), dtype=np.int64)).shape == (1, 3, 3)  # at least one channel
    assert not SignedDistanceMaps()(np.ones((1, 3, 3), dtype=np.int64)).any()  # the class fills the case


def test_boundary_with_precomputed_maps_equals_the_slow_path():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 3, (2, 1, 5, 6, 7)))
    logits = torch.randn(2, 3, 5, 6, 7)
    loss = build_loss("boundary", alpha=0.3)
    maps = torch.from_numpy(np.stack([SignedDistanceMaps(num_classes=3)(t) for t in target.numpy()]))
    torch.testing.assert_close(loss(logits, target, signed_distance=maps), loss(logits, target))
    # a map lacking the last class (absent from every case) is padded with zeros
    torch.testing.assert_close(loss(logits, target, signed_distance=maps[:, :1]), loss(logits, target, signed_distance=torch.cat([maps[:, :1], 0 * maps[:, 1:]], 1)))
    with pytest.raises(ValueError, match=r"loss 'boundary': label map 'signed_distance' has shape \(2, 2, 5, 6, 6\)"):
        loss(logits, target, signed_distance=maps[..., :6])
    with pytest.raises(ValueError, match="has 3 channels but the network predicts 2 foreground class"):
        loss(logits, target, signed_distance=torch.cat([maps, maps[:, :1]], 1))


# -- distance_weighted_ce: border weights --------------------------------------------------------
def brute_force_border(label: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Full-volume distance transform to every component, no cropping."""
    components, count = ndimage.label(label > 0)
    if count < 2:
        return np.zeros(label.shape)
    d = np.sort(np.stack([ndimage.distance_transform_edt(components != k) for k in range(1, count + 1)]), axis=0)
    return w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_border_weights_from_cropped_transforms_equal_the_full_ones(sigma):
    rng = np.random.default_rng(1)
    label = (ndimage.gaussian_filter(rng.random((24, 40, 40)), 1.5) > 0.56).astype(np.int64)
    label[label > 0] = rng.integers(1, 3, int((label > 0).sum()))  # two foreground classes, one union
    assert ndimage.label(label > 0)[1] >= 5
    result = BorderWeightMap(10.0, sigma)(label[None])
    assert result.shape == (1, *label.shape) and result.dtype == np.float32
    np.testing.assert_allclose(result[0], brute_force_border(label, 10.0, sigma), atol=10.0 * 1e-6 + 1e-5)


def test_border_weights_need_two_objects():
    label = np.zeros((1, 8, 8), dtype=np.int64)
    label[0, 2:4, 2:4] = 1
    assert not BorderWeightMap(10.0, 5.0)(label).any()
    assert not BorderWeightMap(10.0, 5.0)(np.zeros((1, 8, 8), dtype=np.int64)).any()


def test_distance_weighted_ce_with_precomputed_maps_equals_the_slow_path():
    rng = np.random.default_rng(2)
    target = torch.from_numpy((rng.random((2, 1, 6, 9, 9)) > 0.8).astype(np.int64))
    logits = torch.randn(2, 1, 6, 9, 9)
    loss = build_loss("distance_weighted_ce", sigma=2.0)
    fn = loss.label_maps["border_weight"]
    maps = torch.from_numpy(np.stack([fn(t) for t in target.numpy()]))
    torch.testing.assert_close(loss(logits, target, border_weight=maps), loss(logits, target))


def test_label_maps_run_in_the_data_pipeline_with_the_spacing():
    """The data pipeline's LabelMapsd calls the loss's functions with the case's spacing."""
    from monai.data import MetaTensor

    from segtrain.data.transforms import LabelMapsd

    label = torch.zeros(1, 4, 5, 6, dtype=torch.uint8)
    label[0, 1:3, 1:3, 1:4] = 1
    affine = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))
    loss = build_loss("boundary")
    out = LabelMapsd(loss.label_maps, num_classes=2)({"label": MetaTensor(label, affine=affine)})
    expected = SignedDistanceMaps(num_classes=2)(label.numpy().astype(np.int64), spacing=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(np.asarray(out["signed_distance"]), expected)
    assert float(np.asarray(out["signed_distance"]).max()) > 2  # in mm along the first axis


def test_the_pipeline_gives_every_case_the_dataset_number_of_channels():
    from segtrain.data.transforms import LabelMapsd

    loss = build_loss("boundary")
    label = np.zeros((1, 4, 4), dtype=np.int64)
    label[0, 0, 0] = 1  # only class 1 in this case; the dataset has 4 classes
    out = LabelMapsd(loss.label_maps, num_classes=4)({"label": torch.from_numpy(label)})
    assert tuple(out["signed_distance"].shape) == (3, 4, 4)  # same channels for every case
    assert loss.label_maps["signed_distance"](label).shape == (1, 4, 4)  # alone: up to the case's largest label


# -- boundary: the alpha schedule ----------------------------------------------------------------
def test_boundary_alpha_schedule():
    loss = build_loss("boundary", alpha=1.0, alpha_step=0.25, alpha_min=0.1)
    assert loss.current_alpha == 1.0
    assert [loss.on_epoch_start(e)["alpha"] for e in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.1, 0.1]
    # resuming: a fresh loss told epoch 2 is where the first one was at epoch 2
    resumed = build_loss("boundary", alpha=1.0, alpha_step=0.25, alpha_min=0.1)
    assert resumed.on_epoch_start(2) == {"alpha": 0.5}
    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.integers(0, 2, (2, 1, 6, 6)))
    logits = torch.randn(2, 2, 6, 6)
    gdl = build_loss("generalized_dice")(logits, target)
    term = build_loss("boundary", alpha=0.0, alpha_min=0.0)(logits, target)
    torch.testing.assert_close(resumed(logits, target), 0.5 * gdl + 0.5 * term)


# -- deep supervision ----------------------------------------------------------------------------
def test_deep_supervision_weights():
    assert DeepSupervisionLoss.weights(1) == [1.0]
    assert DeepSupervisionLoss.weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert sum(DeepSupervisionLoss.weights(5)) == pytest.approx(1.0)


def test_deep_supervision_main_output_last_gets_the_largest_weight():
    loss = build_loss("dice_ce")
    wrapped = DeepSupervisionLoss(loss)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    heads = [torch.randn(2, 3, 8, 8) for _ in range(3)]  # MONAI's UNet++: shallow first, main output last
    expected = 4 / 7 * loss(heads[2], target) + 2 / 7 * loss(heads[1], target) + 1 / 7 * loss(heads[0], target)
    torch.testing.assert_close(wrapped(heads, target), expected)
    torch.testing.assert_close(wrapped(heads[2], target), loss(heads[2], target))  # one output: the loss itself


def test_deep_supervision_downsamples_label_and_maps_for_coarse_heads():
    loss = build_loss("boundary", alpha=0.5)
    wrapped = DeepSupervisionLoss(loss)
    assert "signed_distance" in wrapped.label_maps
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    target[0, 0, 2:6, 2:6] = 1
    maps = torch.from_numpy(SignedDistanceMaps(2)(target[0].numpy()))[None]
    main, coarse = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)
    small_target, small_maps = target[..., ::2, ::2], maps[..., ::2, ::2]  # nearest neighbour
    expected = 2 / 3 * loss(main, target, signed_distance=maps) + 1 / 3 * loss(coarse, small_target, signed_distance=small_maps)
    torch.testing.assert_close(wrapped([coarse, main], target, signed_distance=maps), expected)


# -- configs and the listing ---------------------------------------------------------------------
@pytest.mark.parametrize("name", available_losses())
def test_every_loss_has_a_config_with_every_parameter_default_and_comment(name):
    path = ROOT / "configs" / "loss" / f"{name}.yaml"
    assert path.is_file(), f"add configs/loss/{name}.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    assert config.pop("name") == name
    assert config == loss_parameters(name), "the config must list every parameter with the code's default"
    lines = {line.split(":")[0]: line for line in path.read_text().splitlines() if line and not line.startswith("#")}
    assert all("#" in lines[key] for key in config), "every parameter needs a one-line comment"
    assert path.read_text().startswith("# "), "the first line says what the loss is"


@pytest.mark.parametrize("name", available_losses())
def test_every_loss_documents_formula_paper_and_arguments(name):
    from segtrain.losses.registry import _get

    doc = inspect.getdoc(_get(name))
    assert "Pick it" in doc or "pick it" in doc, "say when to choose the loss"
    if name != "ce":  # cross-entropy has no single source
        assert any(year in doc for year in ("2015", "2016", "2017", "2018", "2019", "2021")), "cite the paper"
    for param in loss_parameters(name):
        assert param in doc, f"document the argument {param}"


def test_segtrain_losses_lists_every_loss_with_parameters(capsys):
    from segtrain.cli import losses_main

    losses_main([])
    out = capsys.readouterr().out
    for name in available_losses():
        assert f"\n{name} " in out
    assert "alpha = 0.3" in out and "weight of false positives" in out  # tversky's parameter, default, comment
    assert "include_background = false" in out and "class_weights = null" in out
    losses_main(["focal_tversky"])
    out = capsys.readouterr().out
    assert "Abraham & Khan" in out and "gamma = 0.75" in out and "example: segtrain loss=focal_tversky" in out
    with pytest.raises(SystemExit) as exit_:
        losses_main(["nope"])
    assert exit_.value.code == 2
    assert "unknown loss 'nope'; available losses: balanced_ce" in capsys.readouterr().err


def test_conservative_base_e_is_the_natural_log():
    logits, target = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4))
    torch.testing.assert_close(build_loss("conservative", base="e")(logits, target), build_loss("conservative", base=math.e)(logits, target))
