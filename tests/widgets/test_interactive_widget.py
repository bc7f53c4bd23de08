"""The RAT interactive dock in a real napari viewer (xvfb): features, scribbles, clicks,
commit, shortcuts, Improve model and Save model, on the bundled nuclei sample and a small
anisotropic 3D volume."""

import numpy as np
import pytest
from scipy import ndimage

napari = pytest.importorskip("napari")

from napari_rat._widgets.interactive_widget import (  # noqa: E402
    CLICKS,
    COMMITTED,
    CURRENT,
    PREDICTION,
    SCRIBBLES,
    InteractiveWidget,
)
from napari_rat._widgets.model_choice import CHECKPOINT  # noqa: E402

pytestmark = pytest.mark.gui

#: The part of the 512x512 nuclei sample the tests use (30-odd nuclei).
CROP = (slice(0, 128), slice(0, 128))
TRANSLATE = (10.0, -4.0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "feature-cache"
    monkeypatch.setenv("NAPARI_RAT_CACHE_DIR", str(folder))
    return folder


def _nuclei(viewer):
    """The 2D nuclei sample, opened through napari's Open Sample entry point, cropped and
    moved (so a layer placed at the origin would show)."""
    image, truth = viewer.open_sample("napari-rat", "nuclei_2d")
    image.data = np.asarray(image.data)[CROP]
    truth.data = np.asarray(truth.data)[CROP]
    image.translate = truth.translate = TRANSLATE
    return image, np.asarray(truth.data).astype(np.int32)


def _dock(viewer, qtbot, image_name="nuclei 2D"):
    widget = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT interactive")
    widget.image_layer.value = image_name
    return widget


def _idle(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _features(qtbot, widget):
    widget.compute_features()
    _idle(qtbot, widget)
    assert widget.session is not None, widget.status.value
    qtbot.waitUntil(lambda: CLICKS in widget.viewer.layers, timeout=10_000)


def _placed_like(layer, image):
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    np.testing.assert_allclose(layer.data_to_world((3, 5)), image.data_to_world((3, 5)))


def _objects(truth, count):
    """The ``count`` largest whole objects (not touching the border), largest first."""
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    inner = [
        i
        for i in ids[np.argsort(-sizes)]
        if not np.isin(i, np.r_[truth[0], truth[-1], truth[:, 0], truth[:, -1]])
    ]
    return inner[:count]


def _strokes(truth, objects):
    """Scribbles scripted from the truth: a row through each object (2) and background rows
    far from every object (1); never the masks themselves."""
    scribbles = np.zeros(truth.shape, np.uint8)
    for i in objects:
        inner = np.argwhere(ndimage.binary_erosion(truth == i, iterations=2))
        row = inner[len(inner) // 2][0]
        cols = inner[inner[:, 0] == row][:, 1]
        scribbles[row, cols] = 2
    far = ndimage.distance_transform_edt(truth == 0) > 4
    rows = np.flatnonzero(far.sum(axis=1) > 30)[::6]
    for row in rows:
        scribbles[row, far[row]] = 1
    return scribbles


def test_scribbles_predict_the_nuclei_off_the_gui_thread_and_features_come_from_the_cache(
    make_napari_viewer, qtbot, cache_dir
):
    viewer = make_napari_viewer()
    image, truth = _nuclei(viewer)
    widget = _dock(viewer, qtbot)
    _features(qtbot, widget)
    assert "computed" in widget.status.value, widget.status.value
    assert any(cache_dir.iterdir())
    scribbles = viewer.layers[SCRIBBLES]
    _placed_like(scribbles, image)
    _placed_like(viewer.layers[CLICKS], image)
    assert scribbles.data.shape == truth.shape

    objects = _objects(truth, 4)
    strokes = _strokes(truth, objects)
    scribbles.data = strokes  # as a paint would: the update follows, debounced
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    prediction = viewer.layers[PREDICTION]
    _placed_like(prediction, image)
    foreground = np.asarray(prediction.data) > 0
    for i in objects:  # the scribbled objects are foreground
        assert foreground[truth == i].mean() > 0.8
    dice = 2 * (foreground & (truth > 0)).sum() / (foreground.sum() + (truth > 0).sum())
    assert dice > 0.8, dice
    assert set(np.unique(prediction.data)) <= {0, 2}  # semantic: the scribbles' class

    # instances: the same update, numbered objects
    widget.output.value = "instances"
    widget.segment()
    qtbot.waitUntil(lambda: np.asarray(prediction.data).max() > 2, timeout=60_000)
    _idle(qtbot, widget)
    assert len(np.unique(prediction.data)) > 10

    # a second computation reads the cache back
    widget.compute_features()
    _idle(qtbot, widget)
    assert "from the cache (no model run)" in widget.status.value, widget.status.value
