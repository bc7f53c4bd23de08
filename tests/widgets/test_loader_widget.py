"""The OME-Zarr loader dock widget, driven in a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_rat.io import Channel, write_image, write_labels

pytestmark = pytest.mark.gui

SPACING = (3.0, 0.5, 0.25)
TRANSLATION = (12.0, -4.0, 7.5)


@pytest.fixture
def image(tmp_path):
    data = (np.arange(2 * 8 * 32 * 24) % 251).astype(np.uint16).reshape(2, 8, 32, 24)
    path = write_image(
        tmp_path / "img.zarr",
        data,
        axes="czyx",
        scale=SPACING,
        translation=TRANSLATION,
        levels=3,
        channels=[Channel("dapi", "0000FF", (0, 200)), Channel("gfp", "00FF00", (10, 150))],
    )
    write_labels(path, (data[0] > 100).astype(np.uint8), "mask")
    return path


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_rat._widgets.loader_widget import OmeZarrLoaderWidget

    viewer = make_napari_viewer()
    w = OmeZarrLoaderWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def _inspect(widget, qtbot, text):
    widget.path_edit.setText(str(text))
    widget.inspect_button.click()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=20000)


def test_inspect_and_open_selection(widget, qtbot, image):
    _inspect(widget, qtbot, image)
    assert widget.pyramid is not None
    summary = widget.summary.toPlainText()
    assert "OME-Zarr 0.5" in summary
    assert "level 0 (0): 2 x 8 x 32 x 24 uint16, spacing 1 x 3 x 0.5 x 0.25" in summary
    assert "z (space, micrometer)" in summary
    assert "channels: dapi, gfp" in summary and "labels: mask" in summary
    assert widget.channel_list.count() == 2 and widget.level_list.count() == 3

    # Only gfp, levels 1-2, a region, no labels.
    from qtpy.QtCore import Qt

    widget.channel_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    widget.level_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    widget.label_list.item(0).setCheckState(Qt.CheckState.Unchecked)
    widget.region_edit.setText("z=2:6")
    widget.open_button.click()

    viewer = widget.viewer
    assert [layer.name for layer in viewer.layers] == ["gfp"]
    gfp = viewer.layers["gfp"]
    assert gfp.multiscale and len(gfp.data) == 2
    assert gfp.data[0].shape == (4, 32, 12)
    level1 = widget.pyramid.levels[1]
    expected = (TRANSLATION[0] + 2 * SPACING[0], level1.translation[2], level1.translation[3])
    np.testing.assert_allclose(gfp.data_to_world((0, 0, 0)), expected)
    assert tuple(gfp.contrast_limits) == (10, 150)
    assert "Opened 1 layer" in widget.status_label.text()


def test_open_everything_places_labels_with_the_image(widget, qtbot, image):
    _inspect(widget, qtbot, image)
    widget.open_button.click()
    names = [layer.name for layer in widget.viewer.layers]
    assert names == ["dapi", "gfp", "mask"]
    for layer in widget.viewer.layers:
        np.testing.assert_allclose(layer.data_to_world((0, 0, 0)), TRANSLATION)
        np.testing.assert_allclose(layer.scale, SPACING)


def test_errors_show_in_the_widget(widget, qtbot, tmp_path):
    _inspect(widget, qtbot, tmp_path / "missing.zarr")
    assert widget.pyramid is None
    assert "no such file" in widget.status_label.text()
    assert not widget.open_button.isEnabled()

    (tmp_path / "plain").mkdir()
    _inspect(widget, qtbot, tmp_path / "plain")
    assert "not a zarr group" in widget.status_label.text()


def test_bad_region_is_reported(widget, qtbot, image):
    _inspect(widget, qtbot, image)
    widget.region_edit.setText("q=1:2")
    widget.open_button.click()
    assert "unknown axis" in widget.status_label.text()
    assert len(widget.viewer.layers) == 0


@pytest.mark.parametrize("name", ["_on_loaded", "open_selected"])
def test_an_exception_in_a_loader_callback_stays_in_the_dock(
    make_napari_viewer, qtbot, image, monkeypatch, name
):
    from napari_rat._widgets.loader_widget import OmeZarrLoaderWidget

    def fail(self, *args):
        raise ValueError(f"boom in {name}")

    monkeypatch.setattr(OmeZarrLoaderWidget, name, fail)
    viewer = make_napari_viewer()
    widget = OmeZarrLoaderWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _inspect(widget, qtbot, image)
    if name == "open_selected":
        widget.open_button.setEnabled(True)
        widget.open_button.click()
    assert f"boom in {name}" in widget.status_label.text()
    assert widget.inspect_button.isEnabled() and len(viewer.layers) == 0


def test_a_long_error_wraps_instead_of_widening_the_loader(widget, qtbot, tmp_path):
    # Size hints are computed from the layout when asked: nothing to wait for.
    before = widget.sizeHint().width(), widget.minimumSizeHint().width()
    missing = tmp_path.joinpath(
        *[f"a_long_folder_name_without_any_spaces_{i}" * 3 for i in range(3)]
    )
    _inspect(widget, qtbot, missing / "img.zarr")
    assert len(widget.status_label.text()) > 300
    after = widget.sizeHint().width(), widget.minimumSizeHint().width()
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 2, (before, after)
