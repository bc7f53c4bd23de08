"""Bundled real sample data (no network needed).

From the ``stardist==0.9.2`` wheel (BSD-3-Clause, see ``LICENSE-stardist.txt``):

- ``img2d.tif`` / ``mask2d.tif``: 512x512 uint16 fluorescence nuclei with manual ground truth
  (125 nuclei), from the 2018 Data Science Bowl, BBBC038 (Caicedo et al., Nature Methods 16,
  2019). The physical pixel size is not recorded; napari-rat treats it as a nominal 1.0.
- ``img3d.tif`` / ``mask3d.tif``: 31x61x57 synthetic nuclei with labels (StarDist's test volume).
  Its voxel size is not recorded either; its nuclei are half as deep in z as they are wide
  (median extents 7 x 15 x 14 voxels over 51 nuclei), i.e. the z spacing is twice the lateral
  one, as StarDist's 3D example infers from the same labels. napari-rat uses (2, 1, 1).

Both are napari sample data too (File > Open Sample > napari-rat): the image with its labels,
placed with the spacing below.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np

#: The nominal spacing of the bundled 2D nuclei image (its physical pixel size is unknown).
NUCLEI_2D_SPACING = (1.0, 1.0)
#: The bundled 3D volume's spacing: z twice the lateral, from its nuclei's shape (see above).
NUCLEI_3D_SPACING = (2.0, 1.0, 1.0)


def _read(name: str) -> np.ndarray:
    import tifffile

    with files(__name__).joinpath(name).open("rb") as fh:
        return tifffile.imread(fh)


def nuclei_2d() -> tuple[np.ndarray, np.ndarray]:
    """The real 2D nuclei image (uint16) and its instance labels (uint16), both 512x512."""
    return _read("img2d.tif"), _read("mask2d.tif")


def nuclei_3d() -> tuple[np.ndarray, np.ndarray]:
    """The 3D synthetic nuclei volume and its labels, both 31x61x57."""
    return _read("img3d.tif"), _read("mask3d.tif")


def _sample_layers(
    image: np.ndarray, labels: np.ndarray, name: str, spacing: tuple[float, ...]
) -> list[tuple[Any, dict[str, Any], str]]:
    from napari_rat.io.ome_zarr_writer import contrast_windows

    ((window, limits),) = contrast_windows(image, None)
    placement = {"scale": spacing, "axis_labels": tuple("zyx"[-image.ndim :])}
    return [
        (image, {"name": name, "contrast_limits": window, **placement}, "image"),
        (labels, {"name": f"{name} ground truth", **placement}, "labels"),
    ]


def nuclei_2d_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample data: the 2D nuclei image and its ground-truth labels."""
    image, labels = nuclei_2d()
    return _sample_layers(image, labels, "nuclei 2D", NUCLEI_2D_SPACING)


def nuclei_3d_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample data: the 3D nuclei volume and its labels."""
    image, labels = nuclei_3d()
    return _sample_layers(image, labels, "nuclei 3D", NUCLEI_3D_SPACING)
