"""The docks' workers read the layer as it was when the user asked, never the live layer.

A worker that read the live layer would cut its input from, and place its results by, whatever
the user did to the layer meanwhile (moving it, replacing its pixels), from another thread.
"""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_rat._widgets.attention_widget import AttentionWidget  # noqa: E402
from napari_rat._widgets.inference_widget import InferenceWidget  # noqa: E402
from napari_rat.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.gui


def test_attention_maps_are_of_the_layer_as_it_was_when_asked(
    make_napari_viewer, qtbot, dock_checkpoints
):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((80, 70), (0.5, 0.5), seed=0)
    layer = viewer.add_image(img, name="img", scale=(0.5, 0.5), translate=(100.0, 50.0))
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.use_checkpoint(dock_checkpoints["2d"])
    widget.image_layer.value = "img"
    widget.window.value = 32
    widget.point.value = ", ".join(map(str, layer.data_to_world((40, 30))))
    widget.show_point()
    assert widget.worker is not None
    # While the worker runs, the layer moves and its pixels are replaced.
    layer.translate = (0.0, 0.0)
    layer.data = np.zeros_like(img)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "over 2 blocks" in widget.status.value, widget.status.value
    att = viewer.layers["attention block 0"]
    # The window's pixel (0, 0) is the source's pixel (24, 14) where the source was.
    np.testing.assert_allclose(att.translate, (100.0 + 24 * 0.5, 50.0 + 14 * 0.5))
    # The point's attention is over the nuclei (a blank image groups every pixel alike).
    assert len(np.unique(viewer.layers["grouping block 0"].data)) > 1
    assert att.data.max() == pytest.approx(1.0)


def test_inference_results_are_of_the_layer_as_it_was_when_run(
    make_napari_viewer, qtbot, dock_checkpoints
):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((64, 60), seed=3)
    layer = viewer.add_image(img, name="img", scale=(0.5, 0.25), translate=(4.0, 2.0))
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")
    widget.model.use_checkpoint(dock_checkpoints["2d"])
    widget.image_layer.value = "img"
    widget.tile.value = 32
    widget.run()
    assert widget.worker is not None
    # While the model runs, the layer moves and gets other pixels of another shape.
    layer.translate = (-50.0, -50.0)
    layer.data = np.zeros((16, 16), np.float32)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "done" in widget.status.value, widget.status.value
    out = viewer.layers["img foreground (RAT)"]
    assert out.data.shape == img.shape
    np.testing.assert_allclose(out.translate, (4.0, 2.0))
    np.testing.assert_allclose(out.scale, (0.5, 0.25))
