"""File formats: one registry of readers (as nnU-Net's ``reader_writer_registry``); a new format is one class.

Each reader names its suffixes and reads a file's header (shape, channels, geometry) and raw voxels
for preflight; training and prediction load files through MONAI's ``LoadImaged`` (the same formats).
``layouts`` and ``predict`` take their suffix lists from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segtrain.errors import DataError


@dataclass
class _Header:
    path: str
    shape: tuple[int, ...]         # spatial, in the axis order MONAI loads
    channels: int
    affine: np.ndarray | None      # 4x4 RAS (as MONAI's readers give it), None for 2D images
    dtype: str


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0][:200] if text else "") or type(err).__name__


def _unreadable(path: str, err: Exception) -> DataError:
    return DataError(f"{path}: cannot be read ({_first_line(err)}); the file is corrupt, truncated or not an image: "
                     "re-export or re-download it, or remove the case")


class Reader:
    """A file format: ``suffixes``, ``spatial_dims`` (3: volumes, 2: images), header and voxel reading."""

    suffixes: tuple[str, ...] = ()
    spatial_dims = 3
    label_suffixes: tuple[str, ...] | None = None  # suffixes allowed for label files (None: all of ``suffixes``)

    def header(self, path: str) -> tuple[tuple[int, ...], int, np.ndarray | None, str]:
        """(shape with channels last if any, channels, 4x4 RAS affine or None, dtype)."""
        raise NotImplementedError

    def voxels(self, path: str) -> tuple[np.ndarray, float, float]:
        """Raw voxels (spatial axes first, in MONAI's order; channels last) and the (slope, intercept) to apply."""
        raise NotImplementedError


class NiftiReader(Reader):
    suffixes = (".nii.gz", ".nii")

    def header(self, path):
        import numpy as np

        import nibabel as nib

        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
        return shape, 1, np.asarray(image.affine, float), str(image.get_data_dtype())

    def voxels(self, path):
        import numpy as np

        import nibabel as nib

        proxy = nib.load(path).dataobj
        raw = np.asarray(proxy.get_unscaled())
        slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
        return raw, float(1.0 if slope is None else slope), float(0.0 if inter is None else inter)


class NrrdReader(Reader):
    suffixes = (".nrrd", ".nhdr")

    @staticmethod
    def affine(header: dict, path: str) -> np.ndarray:
        """As MONAI's NrrdReader: columns = space directions, LPS (or unspecified space) switched to RAS."""
        import numpy as np

        if "space directions" not in header or "space origin" not in header:
            raise DataError(f"{path}: the NRRD header lacks 'space directions' or 'space origin' (no geometry); "
                            "save the volume with its geometry (e.g. from 3D Slicer) or convert it to NIfTI")
        direction = np.asarray(header["space directions"], dtype=float)
        affine = np.eye(4)
        affine[:3, :3] = direction.T
        affine[:3, 3] = np.asarray(header["space origin"], dtype=float)
        if header.get("space", "left-posterior-superior") == "left-posterior-superior":
            affine[:2] *= -1
        return affine

    def header(self, path):
        import nrrd

        header = nrrd.read_header(path)
        shape = tuple(int(s) for s in header["sizes"])
        if len(shape) != 3:
            raise DataError(f"{path}: NRRD with {len(shape)} axes {list(shape)}; only 3D scalar volumes are read: "
                            "save one file per channel (nnU-Net: CASE_0000.nrrd, CASE_0001.nrrd)")
        return shape, 1, self.affine(header, path), str(header.get("type", ""))

    def voxels(self, path):
        import nrrd

        return nrrd.read(path, index_order="F")[0], 1.0, 0.0


class MetaImageReader(Reader):
    """MetaImage (.mha/.mhd) and anything else MONAI's ``LoadImage`` reads (ITK)."""

    suffixes = (".mha", ".mhd")

    def header(self, path):
        import numpy as np

        from monai.transforms import LoadImage

        loaded = LoadImage(image_only=True)(path)
        return tuple(loaded.shape), 1, np.asarray(loaded.affine, float), str(loaded.dtype)

    def voxels(self, path):
        import numpy as np

        from monai.transforms import LoadImage

        return np.asarray(LoadImage(image_only=True)(path)), 1.0, 0.0


class Image2DReader(Reader):
    """PNG, TIFF and JPEG through Pillow, in MONAI ``PILReader``'s (width, height) order; labels lossless only."""

    suffixes = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
    label_suffixes = (".png", ".tif", ".tiff")  # JPEG would blur class indices
    spatial_dims = 2
    BANDS = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4, "YCbCr": 3, "HSV": 3, "LAB": 3}

    def header(self, path):
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
        return (width, height), self.BANDS.get(mode, 1), None, mode

    def voxels(self, path):
        import numpy as np

        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image)
        if array.dtype == bool:  # 1-bit images
            array = array.astype(np.uint8)
        return np.swapaxes(array, 0, 1), 1.0, 0.0


GENERIC = MetaImageReader()  # anything with another suffix: MONAI's LoadImage decides
READERS: list[Reader] = [NiftiReader(), NrrdReader(), GENERIC, Image2DReader()]
VOLUME_SUFFIXES = tuple(s for r in READERS if r.spatial_dims == 3 for s in r.suffixes)
IMAGE_2D_SUFFIXES = tuple(s for r in READERS if r.spatial_dims == 2 for s in r.suffixes)
LABEL_2D_SUFFIXES = tuple(s for r in READERS if r.spatial_dims == 2 for s in (r.label_suffixes or r.suffixes))


def reader_for(path: str) -> Reader:
    """The reader of ``path`` by its suffix (MONAI's generic loader for anything unknown)."""
    name = str(path).lower()
    return next((r for r in READERS if name.endswith(r.suffixes)), GENERIC)


def read_header(path: str, spatial_dims: int) -> _Header:
    """Shape, channels and geometry of one file, reading as little of it as the format allows."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found; add it or remove the case from the dataset")
    reader = reader_for(path)
    try:
        shape, channels, affine, dtype = reader.header(path)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means an unreadable file for the user
        raise _unreadable(path, err) from None
    if reader.spatial_dims == 2:
        return _Header(path, shape, channels, affine, dtype)
    if spatial_dims == 3 and len(shape) == 3:
        return _Header(path, shape, 1, affine, dtype)
    if spatial_dims == 3 and len(shape) == 4:  # MSD-style 4D NIfTI: channels last
        return _Header(path, shape[:3], shape[3], affine, dtype)
    raise DataError(f"{path}: a volume with {len(shape)} dimensions {list(shape)}; expected 3D (or 4D with channels last)")


def read_voxels(path: str) -> tuple[np.ndarray, float, float]:
    """Raw voxels (spatial axes first, in MONAI's order; channels last) and the (slope, intercept) to apply."""
    try:
        return reader_for(path).voxels(path)
    except Exception as err:  # noqa: BLE001
        raise _unreadable(path, err) from None


def max_displacement(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between where two affines put the same voxel, over the corners of the grid."""
    import numpy as np

    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(len(shape), -1)
    homogeneous = np.vstack([corners, np.ones((1, corners.shape[1]))])
    return float(np.linalg.norm((a - b)[:3] @ homogeneous, axis=0).max())


def voxel_spacing(affine: np.ndarray | None, spatial_dims: int) -> list[float]:
    """Voxel sizes (mm) along each axis from a 4x4 affine (column norms); 1 per pixel for 2D images (no affine)."""
    import numpy as np

    if affine is None:
        return [1.0] * spatial_dims
    return np.sqrt((affine[:3, :3] ** 2).sum(0)).tolist()[:spatial_dims]
