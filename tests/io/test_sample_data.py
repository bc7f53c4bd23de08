"""The bundled real data as napari sample data (File > Open Sample > napari-rat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_rat.sample_data import NUCLEI_2D_SPACING, NUCLEI_3D_SPACING, nuclei_2d, nuclei_3d

napari = pytest.importorskip("napari")

MANIFEST = Path(__file__).parents[2] / "napari.yaml"


def test_manifest_validates_with_npe2():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    samples = {s.key: s for s in manifest.contributions.sample_data}
    assert set(samples) == {"nuclei_2d", "nuclei_3d"}


@pytest.mark.gui
@pytest.mark.parametrize(
    ("key", "load", "spacing"),
    [("nuclei_2d", nuclei_2d, NUCLEI_2D_SPACING), ("nuclei_3d", nuclei_3d, NUCLEI_3D_SPACING)],
)
def test_open_sample_adds_the_image_and_its_labels(make_napari_viewer, key, load, spacing):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-rat", key)
    image, labels = load()
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    assert [layer.name for layer in viewer.layers] == [layer.name for layer in layers]
    img, lab = layers
    np.testing.assert_array_equal(np.asarray(img.data), image)
    np.testing.assert_array_equal(np.asarray(lab.data), labels)
    for layer in layers:
        assert tuple(layer.scale) == pytest.approx(spacing)
        assert tuple(layer.axis_labels) == tuple("zyx"[-image.ndim :])
    # A usable contrast: the window inside the data's range, not the type's.
    lo, hi = img.contrast_limits
    assert image.min() <= lo < hi <= image.max()
    assert len(np.unique(labels)) > 10  # real instance labels came along
