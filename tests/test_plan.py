"""The experiment planner (segtrain/data/plan.py): one test per nnU-Net rule, then the plan of real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import compose, run_cli
from segtrain.data.plan import (feature_map_voxels, make_plan, normalization_for, plan_patch, pool_and_conv_props,
                                reoriented, target_spacing)
from test_data_factory import TINY_MODEL, nnunet_dataset, save_nifti, sphere_case


# -- spacing ----------------------------------------------------------------------------------------
def test_target_spacing_is_the_median_for_isotropic_data():
    spacings = [[1.0, 1.0, 1.0], [0.8, 0.8, 0.8], [1.2, 1.2, 1.2], [0.9, 1.0, 1.1]]
    assert target_spacing(spacings, [[100, 100, 100]] * 4) == pytest.approx(np.median(spacings, 0).tolist())


def test_a_coarse_axis_with_few_voxels_takes_the_10th_percentile_of_its_spacings():
    slices = [4.0, 5.0, 5.0, 5.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0]
    spacings = [[0.7, 0.7, s] for s in slices]
    shapes = [[256, 256, 30]] * 10
    target = target_spacing(spacings, shapes)
    assert target[:2] == pytest.approx([0.7, 0.7])
    assert target[2] == pytest.approx(np.percentile(slices, 10))  # not the median, 6.0
    assert target[2] < np.median(slices)


def test_anisotropic_spacing_with_many_voxels_along_it_keeps_the_median():
    spacings = [[0.7, 0.7, s] for s in (4.0, 5.0, 6.0, 6.0)]
    assert target_spacing(spacings, [[256, 256, 200]] * 4)[2] == pytest.approx(5.5)  # 200 * 3 > 256: not anisotropic voxels


def test_the_coarse_axis_never_becomes_finer_than_the_others():
    spacings = [[1.0, 1.0, s] for s in (0.5, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)]
    target = target_spacing(spacings, [[256, 256, 20]] * 10)
    assert target[2] >= 1.0


# -- topology --------------------------------------------------------------------------------------
def test_isotropic_topology_pools_every_axis_down_to_4_voxels():
    strides, kernels, patch, divisor = pool_and_conv_props([1.0, 1.0, 1.0], [64, 64, 64])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4  # 64 -> 4
    assert kernels == [[3, 3, 3]] * 5 and patch == [64, 64, 64] and divisor == [16, 16, 16]


def test_no_pooling_along_a_coarse_axis_until_spacings_are_comparable():
    strides, kernels, _, _ = pool_and_conv_props([0.7, 0.7, 5.0], [256, 256, 24])
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]
    first_z_pool = next(i for i, s in enumerate(strides) if s[2] == 2)
    assert first_z_pool >= 3  # 0.7 -> 1.4 -> 2.8 -> 5.6 mm in-plane before z pools
    assert all(k[2] == 1 for k in kernels[:first_z_pool - 1])


def test_patch_is_padded_to_the_pooling_divisor():
    _, _, patch, divisor = pool_and_conv_props([1.0, 1.0], [100, 60])
    assert all(p % d == 0 and p >= s for p, d, s in zip(patch, divisor, [100, 60]))


# -- patch and batch --------------------------------------------------------------------------------
def test_patch_fits_the_memory_budget_and_grows_with_it():
    small, batch_small, strides, _ = plan_patch([1.0, 1.0, 1.0], [300, 300, 300], 100, 1, 2, memory_gb=4)
    large, batch_large, _, _ = plan_patch([1.0, 1.0, 1.0], [300, 300, 300], 100, 1, 2, memory_gb=16)
    assert np.prod(small) < np.prod(large)
    budget = 560_000_000 * 4 / 8
    assert feature_map_voxels(small, strides, 1, 2) / 2 * 2 <= budget
    assert batch_small >= 2 and batch_large >= 2


def test_patch_never_exceeds_the_median_shape_beyond_the_pooling_divisor():
    patch, _, _, _ = plan_patch([1.0, 1.0, 1.0], [40, 50, 60], 20, 1, 2)
    _, _, _, divisor = pool_and_conv_props([1.0, 1.0, 1.0], patch)
    assert all(p < m + d for p, m, d in zip(patch, [40, 50, 60], divisor))


def test_batch_is_at_least_2_and_covers_at_most_5_percent_of_the_dataset():
    patch, batch, _, _ = plan_patch([1.0, 1.0], [64, 64], 10, 1, 2)  # 2D: memory allows a large batch
    assert batch == max(2, round(64 * 64 * 10 * 0.05 / np.prod(patch)))
    _, batch, _, _ = plan_patch([1.0, 1.0], [64, 64], 10_000, 1, 2)
    assert batch > 2


# -- normalisation ----------------------------------------------------------------------------------
def test_normalisation_follows_the_channel_names_as_nnunet():
    assert normalization_for(["CT", "ct", "T2", "noNorm", "rescale_to_0_1", "MRI"]) == [
        "ct", "ct", "zscore", "none", "minmax", "zscore"]


# -- the whole plan ---------------------------------------------------------------------------------
ANISO = dict(shapes=[[512, 512, 30 + i] for i in range(10)], spacings=[[0.7, 0.7, 5.0 + 0.1 * i] for i in range(10)])


def test_anisotropic_plan_spacing_patch_and_first_stage():
    plan = make_plan(ANISO["shapes"], ANISO["spacings"], ["MRI"], 2, 10)
    assert plan.spacing == pytest.approx([0.7, 0.7, np.percentile([5.0 + 0.1 * i for i in range(10)], 10)], abs=1e-4)
    resampled_slices = np.median([(30 + i) * (5.0 + 0.1 * i) / plan.spacing[2] for i in range(10)])
    assert plan.patch_size[2] <= resampled_slices  # not padded along the coarse axis
    assert plan.strides[1][2] == 1 and plan.kernel_sizes[0][2] == 1  # no pooling along it in the first stage
    assert plan.normalize == ["zscore"] and plan.batch_size >= 2


def test_plan_matches_nnunet_on_the_issue_chest_ct():
    """The chest CT of the issue: 128 x 128 x 17 voxels at 3.05 x 3.05 x 10 mm; nnU-Net v2: 20 x 128 x 128, in-plane pooling first."""
    plan = make_plan([[128, 128, 17]] * 6, [[3.05, 3.05, 10.0]] * 6, ["CT"], 8, 6)
    assert plan.spacing == pytest.approx([3.05, 3.05, 10.0])
    assert plan.patch_size == [128, 128, 20]
    assert plan.strides[1] == [2, 2, 1] and plan.kernel_sizes[0] == [3, 3, 1]
    assert plan.normalize == ["ct"] and plan.batch_size == 2


def test_explicit_values_win_and_the_topology_follows_the_explicit_patch():
    plan = make_plan(ANISO["shapes"], ANISO["spacings"], ["CT"], 2, 10, spacing=[1.0, 1.0, 1.0], patch_size=[64, 64, 32],
                     batch_size=3, normalize="zscore")
    assert plan.spacing == [1.0, 1.0, 1.0] and plan.patch_size == [64, 64, 32] and plan.batch_size == 3
    assert plan.normalize == ["zscore"]
    assert plan.strides[1] == [2, 2, 2]  # isotropic spacing: every axis pools
    assert plan.set_by_user == ["data.spacing", "data.patch_size", "data.batch_size", "data.normalize"]


def test_a_network_with_fixed_poolings_gets_a_compatible_patch():
    plan = make_plan(ANISO["shapes"], ANISO["spacings"], ["MRI"], 2, 10, model_divisor=[16, 16, 16])
    assert all(p % 16 == 0 and p >= 32 for p in plan.patch_size) and plan.strides is None


def test_plan_off_keeps_the_fixed_defaults():
    plan = make_plan(ANISO["shapes"], ANISO["spacings"], ["CT"], 2, 10, mode="off")
    assert plan.spacing is None and plan.patch_size == [96, 96, 96] and plan.batch_size == 2
    assert plan.normalize == ["zscore"] and plan.strides is None


def test_shapes_and_spacings_follow_the_training_orientation():
    assert reoriented([10, 20, 30], [1.0, 2.0, 3.0], "RAS", "RAS") == ([10, 20, 30], [1.0, 2.0, 3.0])
    assert reoriented([10, 20, 30], [1.0, 2.0, 3.0], "SAR", "RAS") == ([30, 20, 10], [3.0, 2.0, 1.0])
    assert reoriented([10, 20, 30], [1.0, 2.0, 3.0], "LPI", "RAS") == ([10, 20, 30], [1.0, 2.0, 3.0])


# -- real runs ---------------------------------------------------------------------------------------
def anisotropic_dataset(root, num_cases=6, shape=(40, 40, 8), spacing=(0.7, 0.7, 5.0), channel="MRI"):
    """An nnU-Net v2 layout of small volumes at 0.7 x 0.7 x 5 mm (slice axis last)."""
    affine = np.diag([*spacing, 1.0])
    nnunet_dataset(root, num_cases=num_cases, shape=shape, channels=(channel,), affine=affine)
    return root


@pytest.mark.xdist_group("cli")
def test_anisotropic_run_writes_its_plan_and_prints_it(tmp_path, cache_dir):
    root = anisotropic_dataset(tmp_path / "aniso")
    run = tmp_path / "run"
    result = run_cli(["data=nifti", f"data.root={root}", "trainer.fast_dev_run=true", "augment=none",  # nnU-Net's network
                      "model.base_filters=4", "model.max_filters=16", *TINY_MODEL[3:], f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads((run / "plan.json").read_text())
    assert {"spacing", "patch_size", "batch_size", "normalize", "strides", "kernel_sizes"} <= set(plan)
    assert plan["spacing"] == pytest.approx([0.7, 0.7, 5.0])
    assert plan["patch_size"][2] <= 8 and plan["strides"][1][2] == 1 and plan["kernel_sizes"][0][2] == 1
    assert plan["normalize"] == ["zscore"]
    report = (run / "dataset_report.txt").read_text()
    assert "plan (data.plan=auto)" in report and "plan (data.plan=auto)" in result.stdout + result.stderr
    spec = json.loads((run / "data_spec.json").read_text())
    assert spec["strides"] == plan["strides"] and spec["patch_size"] == plan["patch_size"]


def test_a_dataset_whose_channel_is_named_ct_gets_ct_normalisation(tmp_path, cache_dir):
    from segtrain.data import build_datamodule

    root = nnunet_dataset(tmp_path / "ct", channels=("CT",))
    cfg = compose(["data=nifti", f"data.root={root}"], cache_dir=cache_dir)
    data = build_datamodule(cfg.data, tmp_path / "run")
    assert data.spec.normalize == ["ct"]
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["normalize"] == ["ct"]
    mr = build_datamodule(compose(["data=nifti", f"data.root={nnunet_dataset(tmp_path / 'mr')}"], cache_dir=cache_dir).data)
    assert mr.spec.normalize == ["zscore"]
    explicit = build_datamodule(compose(["data=nifti", f"data.root={root}", "data.normalize=zscore"], cache_dir=cache_dir).data)
    assert explicit.spec.normalize == ["zscore"]


def test_planned_strides_reach_the_network(tmp_path, cache_dir):
    """The U-Net built for an anisotropic plan pools in-plane first and takes the planned patch."""
    import torch

    from segtrain.data import build_datamodule
    from segtrain.models import build_model, check_patch_size, divisor_per_axis

    root = anisotropic_dataset(tmp_path / "aniso", shape=(64, 64, 12))
    cfg = compose(["data=nifti", f"data.root={root}", "model=unet"], cache_dir=cache_dir)
    data = build_datamodule(cfg.data)
    spec = data.spec
    check_patch_size(cfg.model, spec)
    net = build_model(cfg.model, spec)
    divisor = divisor_per_axis(cfg.model, spec)
    assert divisor[2] < divisor[0]
    out = net(torch.zeros(1, 1, *spec.patch_size))
    assert tuple(out.shape[2:]) == tuple(spec.patch_size)
    dyn = compose(["data=nifti", f"data.root={root}"], cache_dir=cache_dir)  # your data's default: nnU-Net's DynUNet
    net = build_model(dyn.model, spec).eval()  # in training it also returns its deep-supervision outputs
    assert tuple(net(torch.zeros(1, 1, *spec.patch_size)).shape[2:]) == tuple(spec.patch_size)
    assert net.kernel_size[0] == [3, 3, 1]


def test_unetpp_gets_a_patch_it_can_pool(tmp_path, cache_dir):
    from segtrain.data import build_datamodule
    from segtrain.models import fixed_divisor

    root = anisotropic_dataset(tmp_path / "aniso", shape=(64, 64, 12))
    cfg = compose(["data=nifti", f"data.root={root}", "model=unetpp"], cache_dir=cache_dir)
    data = build_datamodule(cfg.data, model_divisor=fixed_divisor(cfg.model, 3))
    assert all(p % 16 == 0 for p in data.spec.patch_size) and data.spec.strides is None


def test_case_on_disk_in_another_orientation_plans_in_ras(tmp_path, cache_dir):
    """Spacings are read per axis after reorientation: a volume stored z-first still plans its coarse axis last."""
    from segtrain.data import build_datamodule

    root = tmp_path / "zfirst"
    affine = np.array([[0, 0.7, 0, 0], [0, 0, 0.7, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]], float)  # array axis 0 = S
    for i in range(4):
        image, label = sphere_case((8, 40, 40), seed=i)
        save_nifti(root / "imagesTr" / f"case{i:02d}_0000.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"case{i:02d}.nii.gz", label, affine)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1},
                                                   "numTraining": 4, "file_ending": ".nii.gz"}))
    data = build_datamodule(compose(["data=nifti", f"data.root={root}"], cache_dir=cache_dir).data)
    assert data.spec.spacing == pytest.approx([0.7, 0.7, 5.0])
    assert data.spec.strides[1] == [2, 2, 1]


NNUNET = json.loads((__import__("pathlib").Path(__file__).parent / "data" / "nnunet_v2_plans.json").read_text())


@pytest.mark.parametrize("name", [k for k in NNUNET if not k.startswith("_")])
def test_plan_equals_nnunet_v2_on_recorded_fingerprints(name):
    """nnU-Net v2's own plans (recorded by running its planner, see docs/data.md) from the same fingerprints."""
    entry = NNUNET[name]
    theirs = entry["plan"]
    dims = 3 if entry["configuration"] == "3d_fullres" else 2
    # fingerprints are (z, y, x) as SimpleITK reads; segtrain's axes are (x, y, z); 2D PNGs carry a dummy first axis
    shapes = [s[::-1] if dims == 3 else s[1:][::-1] for s in entry["shapes"]]
    spacings = [s[::-1] if dims == 3 else [1.0, 1.0] for s in entry["spacings"]]
    ours = make_plan(shapes, spacings, entry["channel_names"], entry["num_classes"], len(shapes))
    rev = lambda values: [list(v)[::-1] for v in values]  # noqa: E731
    if dims == 3:
        assert ours.spacing[::-1] == pytest.approx(theirs["spacing"], abs=1e-4)
    assert ours.patch_size[::-1] == theirs["patch_size"]
    assert ours.batch_size == theirs["batch_size"]
    assert rev(ours.strides) == theirs["strides"] and rev(ours.kernel_sizes) == theirs["kernel_sizes"]
    names = {"CTNormalization": "ct", "ZScoreNormalization": "zscore"}
    assert ours.normalize == [names[n] for n in theirs["normalization_schemes"]]
