"""Tiny datasets on disk for the data tests (no tests here): nnU-Net v2, MSD, 2D folders, slicerio's chest CT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TINY_MODEL = ["model=unet", "optim=adamw", "model.channels=[4,8,16,32]", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
              "trainer.log_every_n_steps=1"]


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def save_nrrd(path: Path, array: np.ndarray, directions: np.ndarray, origin) -> Path:
    """NRRD in LPS space; ``directions`` rows are the axis vectors (pynrrd's convention)."""
    import nrrd

    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"space": "left-posterior-superior", "space directions": np.asarray(directions, float),
              "space origin": np.asarray(origin, float), "encoding": "gzip"}
    nrrd.write(str(path), array, header, index_order="F")
    return path


def sphere_case(shape=(16, 16, 16), seed=0, radius=3, classes=1, dtype=np.float32):
    """An image with bright spheres and its label (``classes`` spheres with values 1..classes)."""
    rs = np.random.RandomState(seed)
    image = rs.normal(0, 0.2, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for value in range(1, classes + 1):
        centre = [rs.randint(radius, s - radius) for s in shape]
        mask = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2
        label[mask] = value
        image[mask] += value
    return image.astype(dtype), label


def nnunet_dataset(root: Path, num_cases=4, shape=(16, 16, 16), channels=("MR",), classes=("tumour",),
                   ending=".nii.gz", affine=None) -> Path:
    """An nnU-Net v2 raw layout with ``num_cases`` cases."""
    labels = {"background": 0, **{name: i + 1 for i, name in enumerate(classes)}}
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for i in range(num_cases):
        image, label = sphere_case(shape, seed=i, classes=len(classes))
        for c in range(len(channels)):
            save_nifti(root / "imagesTr" / f"case{i:02d}_{c:04d}{ending}", image + c, affine)
        save_nifti(root / "labelsTr" / f"case{i:02d}{ending}", label, affine)
    meta = {"channel_names": {str(i): n for i, n in enumerate(channels)}, "labels": labels, "numTraining": num_cases,
            "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def msd_dataset(root: Path, num_cases=4, shape=(16, 16, 16)) -> Path:
    training = []
    for i in range(num_cases):
        image, label = sphere_case(shape, seed=i)
        save_nifti(root / "imagesTr" / f"vol{i}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"vol{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/vol{i}.nii.gz", "label": f"./labelsTr/vol{i}.nii.gz"})
    meta = {"labels": {"0": "background", "1": "lesion"}, "modality": {"0": "MRI"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def images2d_dataset(root: Path, num_cases=4, shape=(40, 32), rgb=False, suffix=".png") -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(num_cases):
        image, label = sphere_case(shape, seed=i, radius=4)
        pixels = np.clip((image + 0.5) * 120, 0, 255).astype(np.uint8)
        if rgb:
            pixels = np.stack([pixels, pixels // 2, 255 - pixels], -1)
        Image.fromarray(pixels).save(root / "images" / f"img{i}{suffix}")
        Image.fromarray(label).save(root / "labels" / f"img{i}.png")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "cell"}}))
    return root


SLICER_CLASSES = ["ribs", "cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column",
                  "right lung", "left lung", "tissue"]


def slicer_chest_dataset(root: Path) -> Path:
    """slicerio's chest CT (int CT, LPS, 3 x 3 x 10 mm) and its 7-segment labelmap as an nnU-Net v2 layout (.nrrd).

    Four cases from the one volume, halved in-plane (64 x 64 x 34): as is, mirrored, shifted by a
    voxel, and one stored with x and y swapped (same anatomy in another orientation).
    """
    import nrrd
    import slicerio

    ct, header = nrrd.read(slicerio.get_testdata_file("CTChest4.nrrd"), index_order="F")
    segmentation = slicerio.read_segmentation(slicerio.get_testdata_file("Segmentation.seg.nrrd"))
    label = np.asarray(segmentation["voxels"])
    assert label.shape == ct.shape, (label.shape, ct.shape)
    names = {int(s["labelValue"]): s["name"] for s in segmentation["segments"]}
    assert [names[v] for v in range(1, 8)] == SLICER_CLASSES
    directions, origin = np.asarray(header["space directions"], float), np.asarray(header["space origin"], float)
    halved = directions * np.array([[2], [2], [1]])
    variants = {
        "chest00": (ct[::2, ::2], label[::2, ::2], halved, origin),
        "chest01": (ct[::-2, ::2], label[::-2, ::2], halved, origin),
        "chest02": (ct[1::2, 1::2], label[1::2, 1::2], halved, origin + directions[0] + directions[1]),
        "chest03": (np.swapaxes(ct[::2, ::2], 0, 1), np.swapaxes(label[::2, ::2], 0, 1), halved[[1, 0, 2]], origin),
    }
    for case, (image, mask, axes, start) in variants.items():
        save_nrrd(root / "imagesTr" / f"{case}_0000.nrrd", np.ascontiguousarray(image).astype(np.int16), axes, start)
        save_nrrd(root / "labelsTr" / f"{case}.nrrd", np.ascontiguousarray(mask).astype(np.uint8), axes, start)
    meta = {"name": "slicerio chest CT", "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(SLICER_CLASSES)}},
            "numTraining": len(variants), "file_ending": ".nrrd"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
