"""segtrain-predict: predictions come back in the geometry of each input image."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SEGTRAIN, TINY_2D, TINY_3D, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory, cache_dir):
    run = tmp_path_factory.mktemp("run3d")
    proc = run_cli([*TINY_3D, "trainer.max_epochs=2", f"hydra.run.dir={run}"], run, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_prediction_is_written_in_each_inputs_own_geometry(trained_3d, tmp_path, cache_dir):
    """The same scene stored as RAS and as a flipped, anisotropic LPS volume gives the same labels in world space."""
    import nibabel as nib

    source = next((p for p in cache_dir.rglob("imagesTr/case_000.nii.gz")))
    volume = nib.load(source).get_fdata().astype(np.float32)
    inputs = tmp_path / "in"
    inputs.mkdir()
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(volume, ras), inputs / "ras.nii.gz")
    # Flip the first two axes in the array and compensate in the affine (LPS orientation), spacing 1.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:3, 3] = [volume.shape[0] - 1, volume.shape[1] - 1, 0]
    nib.save(nib.Nifti1Image(volume[::-1, ::-1].copy(), lps), inputs / "lps.nii.gz")

    out = tmp_path / "out"
    proc = run_cli([f"ckpt_path={trained_3d / 'checkpoints' / 'last.ckpt'}", f"input={inputs}", f"output_dir={out}",
                    f"hydra.run.dir={tmp_path / 'predict'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = nib.load(out / "ras.nii.gz"), nib.load(out / "lps.nii.gz")
    assert a.shape == volume.shape and b.shape == volume.shape
    np.testing.assert_allclose(a.affine, ras, atol=1e-5)
    np.testing.assert_allclose(b.affine, lps, atol=1e-5)
    pred_a, pred_b = np.asarray(a.dataobj), np.asarray(b.dataobj)
    assert set(np.unique(pred_a)) <= {0, 1}
    np.testing.assert_array_equal(pred_a, pred_b[::-1, ::-1])


def test_predict_2d_writes_label_pngs_of_the_input_size(tmp_path, cache_dir):
    from PIL import Image

    run = tmp_path / "run"
    assert run_cli([*TINY_2D, f"hydra.run.dir={run}"], tmp_path, cache_dir).returncode == 0
    images = next(p for p in cache_dir.glob("synthetic2d_*/images"))
    out = tmp_path / "out"
    proc = run_cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"input={images}", f"output_dir={out}",
                    f"hydra.run.dir={tmp_path / 'predict'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = sorted(images.iterdir())[0]
    written = Image.open(out / f"{first.stem}.png")
    assert written.size == Image.open(first).size


def test_predict_rejects_a_missing_checkpoint(tmp_path, cache_dir):
    proc = run_cli(["ckpt_path=/nope.ckpt", f"input={tmp_path}", f"hydra.run.dir={tmp_path / 'p'}"], tmp_path, cache_dir,
                   program=SEGTRAIN + "-predict")
    assert proc.returncode == 2 and "ckpt_path=/nope.ckpt: no such checkpoint" in proc.stderr
