"""Training augmentation (segtrain/augment.py, configs/augment/): nnU-Net's set from MONAI transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.cli import compose
from segtrain.augment import Augmentation, RandRotateScaled, build_augmentation
from segtrain.errors import ConfigError
from test_data_factory import nnunet_dataset


def _ball(shape=(40, 40, 40), radius=8, centre=None):
    grid = np.indices(shape)
    centre = centre or [s // 2 + 3 for s in shape]
    return (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2).astype(np.uint8)[None]


def test_rotation_and_scaling_keep_image_and_label_aligned():
    label = _ball()
    data = {"image": label.astype(np.float32) * 2.0, "label": label}
    transform = RandRotateScaled(["image", "label"], [24, 24, 24], "label", rotation_prob=1.0, degrees=30,
                                 scaling_prob=1.0, scaling=(0.7, 1.4))
    for seed in range(5):
        transform.set_random_state(seed)
        out = transform(data)
        assert out["image"].shape == (1, 24, 24, 24) and out["label"].shape == (1, 24, 24, 24)
        assert out["label"].dtype == np.uint8 and set(np.unique(out["label"])) <= {0, 1}
        agree = ((out["image"] > 1.0) == (out["label"] > 0)).mean()
        assert agree > 0.97, (seed, agree)
        assert any(transform._angles) and transform._scale[0] != 1.0


def test_without_rotation_or_scaling_the_patch_is_the_uninterpolated_centre():
    region = np.random.RandomState(0).rand(1, 30, 30, 30).astype(np.float32)
    transform = RandRotateScaled(["image"], [20, 20, 20], "label", rotation_prob=0.0, degrees=30, scaling_prob=0.0,
                                 scaling=(0.7, 1.4))
    out = transform({"image": region})
    np.testing.assert_array_equal(out["image"], region[:, 5:25, 5:25, 5:25])


def test_spatial_probabilities_are_nnunets():
    transform = RandRotateScaled(["image"], [8, 8, 8], "label", rotation_prob=0.2, degrees=30, scaling_prob=0.2,
                                 scaling=(0.7, 1.4))
    transform.set_random_state(0)
    rotated = scaled = 0
    for _ in range(4000):
        transform.randomize()
        rotated += any(transform._angles)
        scaled += transform._scale[0] != 1.0
        assert len(set(transform._scale)) == 1  # one factor for all axes
        assert all(abs(a) <= np.radians(30) for a in transform._angles)
    assert rotated / 4000 == pytest.approx(0.2, abs=0.02) and scaled / 4000 == pytest.approx(0.2, abs=0.02)


def test_anisotropic_patches_rotate_and_scale_in_plane_only():
    augmentation = Augmentation(rotation_prob=1.0, scaling_prob=1.0)
    degrees, coarse = augmentation.geometry([128, 128, 20], [0.7, 0.7, 5.0])
    assert (degrees, coarse) == (180.0, 2)
    assert augmentation.crop_size([128, 128, 20], [0.7, 0.7, 5.0])[2] == 20
    transform = RandRotateScaled(["image"], [16, 16, 4], "label", 1.0, degrees, 1.0, (0.7, 1.4), coarse_axis=2)
    transform.set_random_state(1)
    for _ in range(20):
        transform.randomize()
        assert transform._angles[0] == transform._angles[1] == 0.0 and transform._angles[2] != 0.0
        assert transform._scale[2] == 1.0


def test_crop_region_follows_nnunets_get_patch_size():
    augmentation = Augmentation(rotation_prob=0.2, scaling_prob=0.2)
    # 48 * (cos 30 + sin 30) / 0.85 = 77.3
    assert augmentation.crop_size([48, 48, 48], [1.0, 1.0, 1.0]) == [77, 77, 77]
    assert augmentation.geometry([96, 96], None) == (180.0, None)
    assert augmentation.geometry([256, 96], None) == (15.0, None)
    assert Augmentation(mirror_prob=0.5).crop_size([48, 48, 48]) == [48, 48, 48]


def test_presets_compose_with_every_parameter():
    nnunet = build_augmentation(compose(["augment=nnunet"]).augment)
    assert (nnunet.rotation_prob, nnunet.scaling_prob, nnunet.noise_prob, nnunet.brightness_prob, nnunet.contrast_prob,
            nnunet.gamma_inverted_prob, nnunet.gamma_prob, nnunet.mirror_prob) == (0.2, 0.2, 0.1, 0.15, 0.15, 0.1, 0.3, 0.5)
    assert nnunet.scaling == (0.7, 1.4) and nnunet.gamma == (0.7, 1.5)
    light = build_augmentation(compose(["augment=light"]).augment)
    assert light.mirror_prob == 0.5 and not light.spatial and light.noise_prob == 0
    none = build_augmentation(compose(["augment=none"]).augment)
    assert none.mirror_prob == 0 and not none.spatial
    assert compose([]).augment == compose(["augment=light"]).augment  # the synthetic presets choose light
    assert compose(["data=nifti"]).augment == compose(["augment=nnunet"]).augment  # user data: nnU-Net's set
    assert compose(["augment=nnunet"]).augment == compose(["augment=nnunet", "data=synthetic2d"]).augment


@pytest.mark.parametrize("override, message", [
    ("augment.rotation_prob=1.5", "augment.rotation_prob=1.5 must be a probability"),
    ("augment.scaling=[1.4,0.7]", "augment.scaling=[1.4, 0.7] must be [low, high]"),
    ("augment.low_resolution=[0.5,2]", "augment.low_resolution=[0.5, 2.0] must lie in (0, 1]"),
])
def test_bad_augmentation_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        build_augmentation(compose(["augment=nnunet", override]).augment)


def _datamodule(tmp_path, cache_dir, *overrides, label_maps=None):
    from segtrain.data import build_datamodule

    root = nnunet_dataset(tmp_path / "ds", num_cases=5, shape=(24, 24, 24))
    cfg = compose(["data=nifti", f"data.root={root}", "data.patch_size=[16,16,16]", "data.batch_size=2",
                   "data.patches_per_epoch=8", *overrides], cache_dir=cache_dir)
    data = build_datamodule(cfg.data, label_maps=label_maps, augmentation=build_augmentation(cfg.augment), seed=3)
    data.setup("fit")
    return data


def test_nnunet_pipeline_gives_patches_of_the_patch_size_with_valid_labels(tmp_path, cache_dir):
    from segtrain.losses.maps import SignedDistanceMaps

    data = _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0",
                       label_maps={"distance": SignedDistanceMaps(2)})
    for batch in data.train_dataloader():
        assert tuple(batch["image"].shape) == (2, 1, 16, 16, 16)
        assert tuple(batch["distance"].shape) == (2, 1, 16, 16, 16)
        assert batch["label"].dtype == torch.uint8 and int(batch["label"].max()) <= 1
        assert torch.isfinite(batch["image"]).all()


def test_augmented_batches_are_the_same_with_and_without_workers(tmp_path, cache_dir):
    """Every item is seeded from (seed, epoch, index): exact resume and any worker count draw the same patches."""
    in_process = [b["image"] for b in _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0").train_dataloader()]
    workers = _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=2")
    assert workers.num_workers == 2
    for a, b in zip(in_process, [b["image"] for b in workers.train_dataloader()]):
        torch.testing.assert_close(a, b)


def test_num_workers_auto(tmp_path, cache_dir):
    from segtrain.data.loaders import resolve_workers

    assert resolve_workers("auto", Augmentation(mirror_prob=0.5)) == 0
    assert resolve_workers("auto", Augmentation(rotation_prob=0.2)) >= 1
    assert resolve_workers(3) == 3
    with pytest.raises(ConfigError, match="data.num_workers='many' must be auto"):
        resolve_workers("many")


def test_label_maps_are_computed_once_per_case(tmp_path, cache_dir):
    """The label maps step is a MONAI MapTransform in the cached part: never recomputed per patch."""
    calls = []

    def counting(label, spacing, num_classes=None):
        calls.append(1)
        return label.astype(np.float32)

    data = _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0", label_maps={"copy": counting})
    cases = len(data.train_cases) + len(data.val_cases)
    assert len(calls) == cases
    for _ in range(2):
        for _batch in data.train_dataloader():
            pass
        for _batch in data.val_dataloader():
            pass
    assert len(calls) == cases
