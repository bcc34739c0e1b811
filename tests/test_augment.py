"""Training augmentation (segtrain/augment/, configs/augment/): nnU-Net's set, drawn per sample, applied per batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from helpers.cli import compose
from segtrain.augment import Augmentation, build_augmentation
from segtrain.augment.batched import BatchAugmenter
from segtrain.augment.params import AugmentParams, draw, fields
from segtrain.errors import ConfigError
from test_data_factory import nnunet_dataset

NNUNET = dict(rotation_prob=0.2, scaling_prob=0.2, noise_prob=0.1, blur_prob=0.1, brightness_prob=0.15,
              contrast_prob=0.15, low_resolution_prob=0.125, gamma_inverted_prob=0.1, gamma_prob=0.3, mirror_prob=0.5)


def _rows(augmentation: Augmentation, patch, spacing=None, n=4000, seed=0) -> tuple[np.ndarray, dict]:
    rng = np.random.RandomState(seed)
    degrees, coarse = augmentation.geometry(patch, spacing)
    crop = augmentation.crop_size(patch, spacing)
    rows = np.stack([draw(augmentation, rng, patch, crop, degrees, coarse) for _ in range(n)])
    return rows, fields(len(patch))


def _applied_share(values: np.ndarray, identity: float) -> float:
    return float(np.mean(np.any(values != identity, axis=1)))


def test_parameter_distributions_match_the_table():
    """Each step applies with its probability (binomial, 4 sigma) and draws uniformly in its range (KS test)."""
    augmentation = build_augmentation(compose(["augment=nnunet"]).augment)
    n = 4000
    rows, cols = _rows(augmentation, [32, 32, 32], n=n)
    expected = {"angles": (0.0, NNUNET["rotation_prob"]), "noise_std": (0.0, NNUNET["noise_prob"]),
                "blur_sigma": (0.0, NNUNET["blur_prob"]), "brightness": (1.0, NNUNET["brightness_prob"]),
                "contrast": (1.0, NNUNET["contrast_prob"]), "low_resolution": (1.0, NNUNET["low_resolution_prob"]),
                "gamma_inverted": (1.0, NNUNET["gamma_inverted_prob"]), "gamma": (1.0, NNUNET["gamma_prob"]),
                "scale": (1.0, NNUNET["scaling_prob"])}
    for name, (identity, p) in expected.items():
        share = _applied_share(rows[:, cols[name]], identity)
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (name, share, p)
    mirror = rows[:, cols["mirror"]]
    assert np.all(np.abs(mirror.mean(0) - 0.5) < 4 * math.sqrt(0.25 / n))
    ranges = {"brightness": (0.75, 1.25), "contrast": (0.75, 1.25), "low_resolution": (0.5, 1.0), "gamma": (0.7, 1.5),
              "gamma_inverted": (0.7, 1.5), "blur_sigma": (0.5, 1.0), "noise_std": (0.0, 0.316)}
    for name, (low, high) in ranges.items():
        values = rows[:, cols[name]]
        drawn = values[np.any(values != (0.0 if name in ("blur_sigma", "noise_std") else 1.0), axis=1)].ravel()
        assert drawn.min() >= low and drawn.max() <= high, name
        assert stats.kstest(drawn, "uniform", args=(low, high - low)).pvalue > 1e-3, name
    angles = rows[:, cols["angles"]]
    rotated = angles[np.any(angles != 0, axis=1)]
    assert np.abs(rotated).max() <= math.radians(30) and rotated.shape[1] == 3
    assert stats.kstest(rotated.ravel(), "uniform", args=(-math.radians(30), math.radians(60))).pvalue > 1e-3
    scales = rows[:, cols["scale"]]
    scaled = scales[np.any(scales != 1, axis=1)]
    assert np.all(scaled == scaled[:, :1])  # one factor for all axes
    assert stats.kstest(scaled[:, 0], "uniform", args=(0.7, 0.7)).pvalue > 1e-3
    assert np.array_equal(rows[:, cols["spatial"]][:, 0] > 0, np.any(angles != 0, 1) | np.any(scales != 1, 1))


def test_anisotropic_patches_rotate_and_scale_in_plane_only():
    augmentation = Augmentation(rotation_prob=1.0, scaling_prob=1.0)
    assert augmentation.geometry([128, 128, 20], [0.7, 0.7, 5.0]) == (180.0, 2)
    assert augmentation.crop_size([128, 128, 20], [0.7, 0.7, 5.0])[2] == 20
    rows, cols = _rows(augmentation, [16, 16, 4], [0.7, 0.7, 5.0], n=50)
    angles, scales = rows[:, cols["angles"]], rows[:, cols["scale"]]
    assert np.all(angles[:, :2] == 0) and np.all(angles[:, 2] != 0) and np.abs(angles).max() <= math.pi
    assert np.all(scales[:, 2] == 1.0) and np.all(scales[:, 0] != 1.0)


def test_crop_region_follows_nnunets_get_patch_size():
    augmentation = Augmentation(rotation_prob=0.2, scaling_prob=0.2)
    # 48 * (cos 30 + sin 30) / 0.85 = 77.3, grown to an even margin so that the patch is its exact centre
    assert augmentation.crop_size([48, 48, 48], [1.0, 1.0, 1.0]) == [78, 78, 78]
    assert augmentation.geometry([96, 96], None) == (180.0, None)
    assert augmentation.geometry([256, 96], None) == (15.0, None)
    assert Augmentation(mirror_prob=0.5).crop_size([48, 48, 48]) == [48, 48, 48]


def _ball(shape, radius, centre):
    grid = np.indices(shape)
    return (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2).astype(np.uint8)


def _batch(augmentation: Augmentation, patch, n=4, seed=0, spacing=None, image=None, label=None):
    """A collated batch as the data workers make it: the enlarged regions and each sample's parameters."""
    crop = augmentation.crop_size(patch, spacing)
    degrees, coarse = augmentation.geometry(patch, spacing)
    rng = np.random.RandomState(seed)
    if label is None:
        label = np.stack([_ball(crop, min(crop) // 5, [c // 2 + 2 * (i % 3) for c in crop]) for i in range(n)])[:, None]
    if image is None:
        image = label.astype(np.float32) * 2.0
    rows = [draw(augmentation, rng, patch, crop, degrees, coarse) for _ in range(n)]
    return {"image": torch.from_numpy(np.ascontiguousarray(image)), "label": torch.from_numpy(np.ascontiguousarray(label)),
            "augment": AugmentParams.collate(rows)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("step", ["rotation", "scaling", "mirror", "all"])
def test_image_and_label_stay_aligned_after_each_spatial_step(dims, step):
    settings = NNUNET if step == "all" else {f"{step}_prob": 1.0}
    augmentation = Augmentation(**{**settings, **({"rotation_prob": 1.0, "scaling_prob": 1.0} if step == "all" else {})})
    patch = [24] * dims
    batch = _batch(augmentation, patch, n=6, seed=dims)
    out = BatchAugmenter(augmentation, patch)(batch)
    assert "augment" not in out
    assert tuple(out["image"].shape) == (6, 1, *patch) and tuple(out["label"].shape) == (6, 1, *patch)
    assert out["label"].dtype == torch.uint8 and set(torch.unique(out["label"]).tolist()) <= {0, 1}
    if step == "all":  # intensities change: the object is still where the label is (its mean is well above the rest)
        inside = out["label"].bool()
        assert (out["image"][inside].mean() - out["image"][~inside].mean()) > 1.0
    else:
        agree = ((out["image"] > 1.0) == (out["label"] > 0)).float().mean(dim=tuple(range(1, dims + 2)))
        assert agree.min() > 0.97, agree
    if step == "mirror":  # flips move image and label voxel for voxel
        assert torch.equal(out["image"] > 1.0, out["label"] > 0)


def test_a_sample_neither_rotated_nor_scaled_is_the_exact_centre_of_its_region():
    augmentation = Augmentation(rotation_prob=0.5, scaling_prob=0.5)
    patch = [20, 20, 20]
    crop = augmentation.crop_size(patch)
    rng = np.random.RandomState(0)
    image = rng.rand(8, 1, *crop).astype(np.float32)
    batch = _batch(augmentation, patch, n=8, image=image, label=(image > 0.5).astype(np.uint8))
    spatial = batch["augment"].column(3, "spatial")[:, 0] > 0
    assert spatial.any() and not spatial.all()
    out = BatchAugmenter(augmentation, patch)(batch)
    start = [(c - p) // 2 for c, p in zip(crop, patch)]
    centre = image[(slice(None), slice(None), *(slice(s, s + p) for s, p in zip(start, patch)))]
    for index in np.flatnonzero(~spatial):
        np.testing.assert_array_equal(out["image"][index].numpy(), centre[index])
    for index in np.flatnonzero(spatial):
        assert not np.array_equal(out["image"][index].numpy(), centre[index])


def _intensity_batch(augmentation, n=6, seed=1):
    rng = np.random.RandomState(seed)
    image = rng.normal(size=(n, 2, 12, 14, 10)).astype(np.float32) + np.linspace(0, 3, 10, dtype=np.float32)
    return _batch(augmentation, [12, 14, 10], n=n, seed=seed, image=image, label=(image[:, :1] > 1).astype(np.uint8)), image


@pytest.mark.parametrize("name, check", [
    ("noise", lambda before, after, value: abs(float((after - before).std()) - value) < 0.25 * value + 0.02),
    ("blur", lambda before, after, value: float(after.std()) < float(before.std())),
    ("brightness", lambda before, after, value: np.allclose(after, before * value, rtol=1e-6)),
    ("contrast", lambda before, after, value: after.min() >= before.min() - 1e-6 and after.max() <= before.max() + 1e-6),
    ("low_resolution", lambda before, after, value: np.abs(after - before).max() > 0),
    ("gamma", lambda before, after, value: np.allclose([after.mean(), after.std()], [before.mean(), before.std()], rtol=1e-3, atol=1e-3)),
    ("gamma_inverted", lambda before, after, value: np.allclose([after.mean(), after.std()], [before.mean(), before.std()], rtol=1e-3, atol=1e-3)),
])
def test_each_intensity_step_does_its_job_and_leaves_other_samples_as_they_were(name, check):
    prob = {"noise": "noise_prob", "blur": "blur_prob"}.get(name, f"{name}_prob")
    augmentation = Augmentation(**{prob: 0.5})
    batch, image = _intensity_batch(augmentation, n=16)
    column = {"noise": "noise_std", "blur": "blur_sigma"}.get(name, name)
    values = batch["augment"].column(3, column)
    identity = 0.0 if name in ("noise", "blur") else 1.0
    applied = np.any(values != identity, axis=1)
    assert applied.any() and not applied.all()
    out = BatchAugmenter(augmentation, [12, 14, 10])(batch)["image"].numpy()
    assert out.shape == image.shape and np.isfinite(out).all()
    for index in range(len(image)):
        if applied[index]:
            for channel in range(2):
                assert check(image[index, channel], out[index, channel], float(values[index, 0])), (name, index)
        else:
            np.testing.assert_array_equal(out[index], image[index])


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    augmentation = Augmentation(**NNUNET)
    patch = [16, 16, 16]
    first = BatchAugmenter(augmentation, patch)(_batch(augmentation, patch, n=6, seed=5))
    again = BatchAugmenter(augmentation, patch)(_batch(augmentation, patch, n=6, seed=5))
    other = BatchAugmenter(augmentation, patch)(_batch(augmentation, patch, n=6, seed=6))
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(first["image"], other["image"])


def test_presets_compose_with_every_parameter():
    nnunet = build_augmentation(compose(["augment=nnunet"]).augment)
    assert (nnunet.rotation_prob, nnunet.scaling_prob, nnunet.noise_prob, nnunet.brightness_prob, nnunet.contrast_prob,
            nnunet.gamma_inverted_prob, nnunet.gamma_prob, nnunet.mirror_prob) == (0.2, 0.2, 0.1, 0.15, 0.15, 0.1, 0.3, 0.5)
    assert nnunet.scaling == (0.7, 1.4) and nnunet.gamma == (0.7, 1.5) and nnunet.device == "auto"
    light = build_augmentation(compose(["augment=light"]).augment)
    assert light.mirror_prob == 0.5 and not light.spatial and light.noise_prob == 0 and light.mirroring_only
    none = build_augmentation(compose(["augment=none"]).augment)
    assert none.mirror_prob == 0 and not none.spatial
    assert compose([]).augment == compose(["augment=light"]).augment  # the synthetic presets choose light
    assert compose(["data=nifti"]).augment == compose(["augment=nnunet"]).augment  # user data: nnU-Net's set
    assert compose(["augment=nnunet"]).augment == compose(["augment=nnunet", "data=synthetic2d"]).augment


@pytest.mark.parametrize("override, message", [
    ("augment.rotation_prob=1.5", "augment.rotation_prob=1.5 must be a probability"),
    ("augment.scaling=[1.4,0.7]", "augment.scaling=[1.4, 0.7] must be [low, high]"),
    ("augment.low_resolution=[0.5,2]", "augment.low_resolution=[0.5, 2.0] must lie in (0, 1]"),
    ("augment.device=tpu", "augment.device='tpu' is unknown; use auto"),
])
def test_bad_augmentation_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        build_augmentation(compose(["augment=nnunet", override]).augment)


def test_augment_device_follows_the_training_device():
    assert Augmentation().resolve_device("cuda") == "cuda" and Augmentation().resolve_device("cpu") == "cpu"
    assert Augmentation(device="cpu").resolve_device("cuda") == "cpu"
    with pytest.raises(ConfigError, match="augment.device=cuda needs a model that trains on a GPU"):
        Augmentation(device="cuda").resolve_device("cpu")


def _datamodule(tmp_path, cache_dir, *overrides, label_maps=None, device="cpu"):
    from segtrain.data import build_datamodule

    root = nnunet_dataset(tmp_path / "ds", num_cases=5, shape=(24, 24, 24))
    cfg = compose(["data=nifti", f"data.root={root}", "data.patch_size=[16,16,16]", "data.batch_size=2",
                   "data.patches_per_epoch=8", *overrides], cache_dir=cache_dir)
    data = build_datamodule(cfg.data, label_maps=label_maps, augmentation=build_augmentation(cfg.augment), seed=3)
    data.use_device(device)
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
        assert torch.isfinite(batch["image"]).all() and "augment" not in batch
        # the maps are those of the augmented labels: negative inside the class, positive outside (0: no class)
        for label, distance in zip(batch["label"].bool(), batch["distance"]):
            if label.any() and not label.all():
                assert (distance[label] <= 0).all() and (distance[~label] > 0).all()
            else:
                assert not distance.any()


def test_augmented_batches_are_the_same_with_and_without_workers(tmp_path, cache_dir):
    """Every item is seeded from (seed, epoch, index): exact resume and any worker count draw the same patches."""
    in_process = [b["image"] for b in _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0").train_dataloader()]
    workers = _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=2")
    assert workers.num_workers == 2
    for a, b in zip(in_process, [b["image"] for b in workers.train_dataloader()]):
        torch.testing.assert_close(a, b)


def test_on_a_gpu_the_workers_only_cut_and_the_batch_is_augmented_after_the_transfer(tmp_path, cache_dir):
    """augment.device=cuda: the loader hands out regions and parameters; ``on_after_batch_transfer`` augments them,
    with the same result as the workers' augmentation (the same code on the same device here, a CPU)."""
    on_cpu = [b for b in _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0").train_dataloader()]
    data = _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0")
    data.augment_device = "cuda"  # what use_device("cuda") decides; the collation then leaves the batch as cut
    from segtrain.augment.params import AugmentParams

    for expected, batch in zip(on_cpu, data.train_dataloader()):
        assert isinstance(batch["augment"], AugmentParams) and tuple(batch["image"].shape[2:]) == (26, 26, 26)
        batch = data.on_after_batch_transfer(batch, 0)
        assert torch.equal(batch["image"], expected["image"]) and torch.equal(batch["label"], expected["label"])


def test_num_workers_auto(monkeypatch):
    from segtrain.data import loaders
    from segtrain.data.loaders import resolve_workers

    monkeypatch.setattr(loaders, "usable_cpus", lambda: 16)
    assert resolve_workers("auto", Augmentation(mirror_prob=0.5)) == 0  # mirroring on a CPU: in-process
    assert resolve_workers("auto", Augmentation(mirror_prob=0.5), "cuda") == 12  # a GPU is fed by workers, up to 12
    assert resolve_workers("auto", Augmentation(rotation_prob=0.2)) == 12
    assert resolve_workers("auto", Augmentation(rotation_prob=0.2), "cuda", processes_per_node=4) == 3  # 16 CPUs / 4 GPUs - 1
    monkeypatch.setattr(loaders, "usable_cpus", lambda: 2)
    assert resolve_workers("auto", Augmentation(rotation_prob=0.2)) == 1
    assert resolve_workers(3) == 3
    with pytest.raises(ConfigError, match="data.num_workers='many' must be auto"):
        resolve_workers("many")


def test_training_label_maps_follow_the_augmented_labels_and_validation_maps_are_cached(tmp_path, cache_dir):
    """Training: the loss's maps are computed per batch from the augmented labels; validation: once per case."""
    calls = []

    def copy(label, spacing=None, num_classes=None):
        calls.append(type(label))
        return label.float() if torch.is_tensor(label) else label.astype(np.float32)

    data = _datamodule(tmp_path, cache_dir, "augment=nnunet", "data.num_workers=0", label_maps={"copy": copy})
    assert len(calls) == len(data.val_cases)  # the validation cases' maps, cached
    for _ in range(2):
        for batch in data.train_dataloader():
            assert torch.equal(batch["copy"], batch["label"].float())
        for batch in data.val_dataloader():
            assert "copy" in batch
    assert len(calls) == len(data.val_cases) + 2 * len(data.train_dataloader())
