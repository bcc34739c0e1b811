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


# -- label maps on the training device: the torch functions ----------------------------------------
# Tolerance against SciPy's exact EDT (float64): absolute 1e-4 × the largest distance of the map, the
# torch maps being the exact separable EDT in float32. Border weights: absolute w0·1e-5 (the SciPy map
# drops the term beyond a margin where it is below w0·1e-6) plus a relative 1e-5.
def blobs(rng, shape, threshold=0.55, smooth=1.5):
    """A random blobby mask per item, (N, *S) bool."""
    return ndimage.gaussian_filter(rng.random(shape), (0,) + (smooth,) * (len(shape) - 1)) > threshold


def assert_same_partition(ours: np.ndarray, theirs: np.ndarray):
    """``ours`` (−1 background) and ``theirs`` (scipy.ndimage.label, 0 background) split the voxels alike."""
    assert ((ours >= 0) == (theirs > 0)).all()
    pairs = set(zip(ours[theirs > 0].tolist(), theirs[theirs > 0].tolist()))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize("shape, spacing", [((3, 19, 23), None), ((3, 16, 21), (0.5, 2.0)),
                                            ((3, 9, 14, 12), None), ((3, 9, 14, 12), (3.0, 0.7, 0.7))])
def test_distance_to_equals_scipy(shape, spacing):
    from segtrain.losses.maps import distance_to

    rng = np.random.default_rng(4)
    mask = rng.random(shape) > 0.93
    mask[1] = False  # no True voxel: +inf
    mask[2] = True  # all True: 0
    result = distance_to(torch.from_numpy(mask), spacing)
    assert result.shape == mask.shape and result.dtype == torch.float32
    assert torch.isinf(result[1]).all() and not result[2].any()
    expected = ndimage.distance_transform_edt(~mask[0], sampling=spacing)
    assert expected.max() > 2
    np.testing.assert_allclose(result[0].numpy(), expected, rtol=0, atol=1e-4 * expected.max())


def several_classes(rng, shape):
    """(B, 1, *S) labels in [0, 4): item 0 random blobs of classes 1–3, item 1 lacks class 2, item 2 is all class 1."""
    label = np.zeros(shape, dtype=np.int64)
    for c in (1, 2, 3):
        label[blobs(rng, shape, 0.58)] = c
    label[1][label[1] == 2] = 0
    label[2] = 1
    return label[:, None]


@pytest.mark.parametrize("shape, spacing", [((3, 20, 24), None), ((3, 20, 24), (2.0, 0.5)),
                                            ((3, 10, 16, 14), None), ((3, 10, 16, 14), (3.0, 0.7, 0.7))])
def test_signed_distance_equals_the_scipy_maps(shape, spacing):
    from segtrain.losses.maps import signed_distance

    rng = np.random.default_rng(5)
    label = several_classes(rng, shape)
    assert set(np.unique(label[0])) == {0, 1, 2, 3} and 2 not in label[1]
    result = signed_distance(torch.from_numpy(label), num_classes=5, spacing=spacing)
    assert result.shape == (shape[0], 4, *shape[1:]) and result.dtype == torch.float32
    expected = np.stack([SignedDistanceMaps(num_classes=5)(case, spacing=spacing) for case in label])
    assert not expected[1, 1].any() and not expected[2].any() and not expected[:, 3].any()  # absent, filling
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # unknown class count: the largest label of the batch + 1 (reads the label: a host synchronisation)
    assert signed_distance(torch.from_numpy(label)).shape[1] == 3


@pytest.mark.parametrize("shape", [(3, 40, 44), (2, 18, 22, 20)])
def test_connected_components_equal_scipy_label(shape):
    from segtrain.losses.maps import connected_components

    rng = np.random.default_rng(6)
    mask = blobs(rng, shape, 0.52, 1.2)
    mask[-1] = False  # an empty item
    result = connected_components(torch.from_numpy(mask))
    assert result.shape == mask.shape and result.dtype == torch.int64
    counts = []
    for ours, item in zip(result.numpy(), mask):
        theirs, count = ndimage.label(item)
        assert_same_partition(ours, theirs)
        counts.append(count)
    assert min(counts[:-1]) >= 5
    # too few iterations may leave a component split, never merge two
    for ours, item in zip(connected_components(torch.from_numpy(mask), max_iterations=1).numpy(), mask):
        theirs = ndimage.label(item)[0]
        assert len(set(zip(ours[item].tolist(), theirs[item].tolist()))) == len(np.unique(ours[item]))


def test_connected_components_of_a_serpentine_up_to_the_bound():
    from segtrain.losses.maps import connected_components

    mask = np.zeros((2, 20, 20), dtype=bool)
    for row in range(0, 12, 2):  # arms of 5 voxels joined at alternating ends: 35 voxels <= 20 + 20
        mask[0, row, :5] = True
        if row + 2 < 12:
            mask[0, row + 1, 4 if row % 4 == 0 else 0] = True
    mask[1, 3:8, 3:8] = mask[1, 12:15, 2:18] = True
    assert mask[0].sum() <= sum(mask.shape[1:]) and ndimage.label(mask[0])[1] == 1
    result = connected_components(torch.from_numpy(mask)).numpy()
    for ours, item in zip(result, mask):
        assert_same_partition(ours, ndimage.label(item)[0])
    assert (result[0][mask[0]] == 0).all()  # the id is the smallest flat index of the component


@pytest.mark.parametrize("shape, objects", [((2, 16, 18), 0), ((2, 16, 18), 1), ((2, 16, 18), 2),
                                            ((2, 12, 14, 13), 1), ((2, 12, 14, 13), 2), ((2, 40, 40), "many"),
                                            ((2, 16, 24, 24), "many")])
@pytest.mark.parametrize("sigma", [2.0, 5.0])
def test_border_weight_equals_the_scipy_map(shape, objects, sigma):
    from segtrain.losses.maps import border_weight

    rng = np.random.default_rng(7)
    label = np.zeros(shape, dtype=np.int64)
    if objects == "many":
        label[blobs(rng, shape, 0.56)] = 1
        label[label > 0] = rng.integers(1, 3, int((label > 0).sum()))  # two classes, one union
    else:
        for k in range(objects):  # boxes 3 voxels apart along the last axis, in both items
            box = (slice(None),) + (slice(1, 4),) * (len(shape) - 2) + (slice(1 + 6 * k, 4 + 6 * k),)
            label[box] = k + 1
    counts = [ndimage.label(item > 0)[1] for item in label]
    assert counts == [objects] * 2 if objects != "many" else min(counts) >= 5
    result = border_weight(torch.from_numpy(label)[:, None], 10.0, sigma)
    assert result.shape == (shape[0], 1, *shape[1:]) and result.dtype == torch.float32
    expected = np.stack([BorderWeightMap(10.0, sigma)(item[None]) for item in label])
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=10.0 * 1e-5)
    assert (expected.max() > 1) == (objects not in (0, 1))


def test_torch_maps_make_no_host_synchronisation(monkeypatch):
    from segtrain.losses.maps import border_weight, connected_components, signed_distance

    rng = np.random.default_rng(8)
    label = torch.from_numpy(several_classes(rng, (3, 8, 12, 10)))
    expected = (SignedDistanceMaps(4)(label), BorderWeightMap(10.0, 3.0)(label))

    def sync(*args, **kwargs):
        raise AssertionError("host synchronisation")

    with monkeypatch.context() as patch:
        for name in ("item", "__bool__", "__float__", "__int__", "tolist", "numpy", "cpu", "nonzero", "unique"):
            patch.setattr(torch.Tensor, name, sync)
        for name in ("unique", "nonzero", "masked_select"):
            patch.setattr(torch, name, sync)
        with pytest.raises(AssertionError, match="host synchronisation"):
            bool(label.any())  # the patches bite
        result = (signed_distance(label, num_classes=4), border_weight(label, 10.0, 3.0))
        connected_components(label[:, 0] > 0)
    torch.testing.assert_close(result[0], expected[0], rtol=0, atol=1e-4 * float(expected[0].abs().max()))
    torch.testing.assert_close(result[1], expected[1], rtol=1e-5, atol=1e-4)


def test_the_map_classes_dispatch_on_the_label_type():
    rng = np.random.default_rng(9)
    label = several_classes(rng, (3, 10, 12))
    batch = torch.from_numpy(label).to(torch.uint8)  # any integer dtype
    for fn, kwargs in [(SignedDistanceMaps(), {"num_classes": 5, "spacing": (2.0, 0.5)}), (SignedDistanceMaps(), {}),
                       (BorderWeightMap(10.0, 3.0), {})]:
        cases = [fn(case, **kwargs) for case in label]  # NumPy, one case: NumPy (K, *S)
        assert all(isinstance(c, np.ndarray) and c.dtype == np.float32 for c in cases)
        result = fn(batch, **kwargs)  # a CPU tensor batch: SciPy per case, a (B, K, *S) tensor
        assert torch.is_tensor(result) and result.dtype == torch.float32 and result.device == batch.device
        channels = max(c.shape[0] for c in cases)  # unknown class count: the batch's largest label
        expected = np.stack([np.concatenate([c, np.zeros((channels - c.shape[0], *c.shape[1:]), np.float32)]) for c in cases])
        assert tuple(result.shape) == expected.shape
        np.testing.assert_array_equal(result.numpy(), expected)
    with pytest.raises(ValueError, match=r"must be a batch \(B, 1, \*S\)"):
        SignedDistanceMaps()(torch.zeros(1, 5, 5, dtype=torch.long))
    # off the CPU the torch functions run; on the meta device (no data at all) nothing can read a value
    meta = torch.zeros(2, 1, 6, 7, 8, dtype=torch.long, device="meta")
    for fn, channels in [(SignedDistanceMaps(4), 3), (BorderWeightMap(10.0, 3.0), 1)]:
        result = fn(meta, (3.0, 0.7, 0.7))
        assert result.device.type == "meta" and result.dtype == torch.float32 and result.shape == (2, channels, 6, 7, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_map_classes_on_a_gpu_stay_on_it_without_synchronisation():
    rng = np.random.default_rng(10)
    label = torch.from_numpy(several_classes(rng, (3, 12, 20, 18)))
    gpu = label.cuda()
    for fn, kwargs, atol in [(SignedDistanceMaps(), {"num_classes": 4, "spacing": (3.0, 0.7, 0.7)}, None),
                             (BorderWeightMap(10.0, 4.0), {}, 1e-4)]:
        expected = fn(label, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            result = fn(gpu, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert result.device == gpu.device and result.dtype == torch.float32
        atol = atol or 1e-4 * float(expected.abs().max())
        torch.testing.assert_close(result.cpu(), expected, rtol=1e-5, atol=atol)


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


def test_deep_supervision_reads_dynunets_stacked_heads_main_first():
    """MONAI's DynUNet in training: (B, heads, C, *S), main first, heads upsampled; the weights are nnU-Net's."""
    from monai.networks.nets import DynUNet

    loss = build_loss("dice_ce")
    wrapped = DeepSupervisionLoss(loss)
    target = torch.randint(0, 3, (2, 1, 16, 16))
    net = DynUNet(2, 1, 3, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3, filters=[4, 8, 16, 32],
                  deep_supervision=True, deep_supr_num=1).train()
    stacked = net(torch.randn(2, 1, 16, 16))
    assert stacked.shape == (2, 2, 3, 16, 16)
    expected = 2 / 3 * loss(stacked[:, 0], target) + 1 / 3 * loss(stacked[:, 1], target)
    torch.testing.assert_close(wrapped(stacked, target), expected)
    assert net.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 3, 16, 16)  # inference: the main output only


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
