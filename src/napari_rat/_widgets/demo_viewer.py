"""The demo's viewer: napari on the sample data with the plugin's docks, and its screenshot.

Used by ``napari-rat demo`` (:mod:`napari_rat.commands.demo`); here because it drives Qt.
"""

from __future__ import annotations

import time
from pathlib import Path

#: Window size of the headless screenshot (logical pixels; Qt enlarges it to the window's
#: minimum size if the docks need more); it fits on
#: :data:`napari_rat.virtual_display.VIRTUAL_SCREEN`.
SCREENSHOT_WINDOW = (1600, 1150)


def build_viewer(samples: dict[str, Path], show: bool):
    """A napari viewer with the samples opened by our reader and the plugin's docks."""
    import napari

    from napari_rat._widgets.attention_widget import AttentionWidget
    from napari_rat._widgets.inference_widget import InferenceWidget
    from napari_rat._widgets.loader_widget import OmeZarrLoaderWidget

    viewer = napari.Viewer(title="napari-rat demo", show=show)
    viewer.open(str(samples["nuclei_2d"]), plugin="napari-rat")
    loader = OmeZarrLoaderWidget(viewer)
    loader.path_edit.setText(str(samples["volume_3d"]))  # Inspect, then Open: the 3D sample
    viewer.window.add_dock_widget(loader, name="OME-Zarr loader", area="right")
    viewer.window.add_dock_widget(InferenceWidget(viewer), name="RAT inference", area="right")
    viewer.window.add_dock_widget(AttentionWidget(viewer), name="RAT attention", area="right")
    viewer.reset_view()
    return viewer


def save_screenshot(viewer, path: Path, timeout: float = 10.0) -> Path:
    """Save a screenshot of the whole window, the whole image in view, every run alike.

    The window gets a fixed size (napari would restore the last session's), and the view is
    fitted only once the canvas has its final size: the layout resizes the canvas after the
    window is shown, and a view fitted before that was clipped left and right by however much
    the canvas then narrowed.
    """
    import imageio.v3 as imageio
    from qtpy.QtWidgets import QApplication

    from napari_rat.atomic_files import atomic_path

    viewer.window.resize(*SCREENSHOT_WINDOW)
    last, stable_since = None, time.monotonic()
    deadline = stable_since + timeout
    while time.monotonic() < deadline:
        QApplication.processEvents()
        size, now = tuple(viewer.canvas.size), time.monotonic()
        if size != last:
            last, stable_since = size, now
        elif now - stable_since >= 0.5:
            break
        time.sleep(0.02)
    viewer.reset_view()
    QApplication.processEvents()
    image = viewer.screenshot(canvas_only=False, flash=False)
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, image, extension=".png")
    return path
