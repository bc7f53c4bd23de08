"""The README's screenshot of the RAT interactive dock in use: docs/img/interactive_dock.png.

    PYTHONPATH=src .venv/bin/python scripts/interactive_screenshot.py [OUT.png]

napari on a private X display (Xvfb, when there is no ``DISPLAY``), the bundled 2D nuclei
sample opened through File > Open Sample (its top-left 256 x 256 quarter), the dock with the
starter model: features computed (cached in a temporary folder), scribbles scripted from the
ground truth (a row through a few nuclei, rows of background far from any; never the masks
themselves), the prediction, one clicked nucleus committed and another one clicked. The window
is saved as ``napari-rat demo`` saves its own (``demo_viewer.save_screenshot``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "interactive_dock.png"
CROP = (slice(0, 256), slice(0, 256))


def _wait(condition, timeout=300.0):
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the dock did not finish in time")
        QApplication.processEvents()
        time.sleep(0.02)


def _strokes(truth: np.ndarray, count: int) -> np.ndarray:
    scribbles = np.zeros(truth.shape, np.uint8)
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    for i in ids[np.argsort(-sizes)][:count]:
        inner = np.argwhere(ndimage.binary_erosion(truth == i, iterations=2))
        row = inner[len(inner) // 2][0]
        scribbles[row, inner[inner[:, 0] == row][:, 1]] = 2
    far = ndimage.distance_transform_edt(truth == 0) > 4
    for row in np.flatnonzero(far.sum(axis=1) > 40)[::16]:
        scribbles[row, far[row]] = 1
    return scribbles


def main(out: Path) -> Path:
    import napari

    from napari_rat._widgets.demo_viewer import save_screenshot
    from napari_rat._widgets.interactive_layers import CLICKS, COMMITTED, CURRENT, PREDICTION
    from napari_rat._widgets.interactive_widget import InteractiveWidget

    viewer = napari.Viewer(title="napari-rat: RAT interactive", show=True)
    image, truth_layer = viewer.open_sample("napari-rat", "nuclei_2d")
    image.data = np.asarray(image.data)[CROP]
    truth = np.asarray(truth_layer.data)[CROP].astype(np.int32)
    viewer.layers.remove(truth_layer)
    dock = InteractiveWidget(viewer)
    viewer.window.add_dock_widget(dock, name="RAT interactive", area="right")
    dock.image_layer.value = image.name
    dock.compute_features()
    _wait(lambda: not dock.busy and CLICKS in viewer.layers)

    viewer.layers["RAT scribbles"].data = _strokes(truth, 6)
    dock.update_scribbles()
    _wait(lambda: not dock.busy and PREDICTION in viewer.layers)
    viewer.layers[PREDICTION].opacity = 0.45

    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    clicks = viewer.layers[CLICKS]
    for i in ids[np.argsort(-sizes)][6:8]:
        clicks.add([ndimage.center_of_mass(truth == i)])
        _wait(lambda: not dock.busy and CURRENT in viewer.layers)
        if COMMITTED not in viewer.layers:
            dock.commit()
    viewer.layers.selection.active = viewer.layers["RAT scribbles"]
    path = save_screenshot(viewer, out)
    viewer.close()
    return path


if __name__ == "__main__":
    from napari_rat.virtual_display import virtual_display

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    with tempfile.TemporaryDirectory() as cache, virtual_display() as shown:
        if not shown:
            sys.exit("no display and no Xvfb: install xvfb (scripts/setup.sh does)")
        os.environ["NAPARI_RAT_CACHE_DIR"] = cache
        print(main(target))
