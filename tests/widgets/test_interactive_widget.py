"""The RAT interactive dock in a real napari viewer (xvfb): features, scribbles, clicks,
commit, shortcuts, Improve model and Save model, on the bundled nuclei sample and a small
anisotropic 3D volume."""

import numpy as np
import pytest
from scipy import ndimage

napari = pytest.importorskip("napari")

from napari_rat._widgets.interactive_layers import (  # noqa: E402
    CLICKS,
    COMMITTED,
    CURRENT,
    PREDICTION,
    SCRIBBLES,
    SIGN_COLOURS,
)
from napari_rat._widgets.interactive_widget import InteractiveWidget  # noqa: E402
from napari_rat._widgets.model_choice import CHECKPOINT, STARTER  # noqa: E402

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


def _dock(viewer, qtbot, image_name="nuclei 2D", *, from_menu=False):
    if from_menu:  # Plugins > napari-rat > RAT interactive: the manifest's entry point
        _, widget = viewer.window.add_plugin_dock_widget("napari-rat", "RAT interactive")
        assert isinstance(widget, InteractiveWidget)
    else:
        widget = InteractiveWidget(viewer)
        viewer.window.add_dock_widget(widget, name="RAT interactive")
    if image_name is not None:
        widget.image_layer.value = image_name
    return widget


def _idle(qtbot, widget, timeout=120_000):
    """No worker runs and no scribble update waits for its debounce (a pending update would
    start a worker after this returned)."""
    qtbot.waitUntil(lambda: not widget.busy and not widget.update_pending, timeout=timeout)


def _features(qtbot, widget):
    widget.compute_features()
    _idle(qtbot, widget)
    assert widget.session is not None, widget.status.value
    qtbot.waitUntil(lambda: CLICKS in widget.viewer.layers, timeout=10_000)


def _placed_like(layer, image):
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    point = (3, 5, 2)[: image.ndim]
    np.testing.assert_allclose(layer.data_to_world(point), image.data_to_world(point))


#: Label 7 of the 2D sample's top-left corner (CROP) is drawn as one nucleus but shows two
#: bright lobes with a dim seam between them; the starter splits it in two, as it does touching
#: nuclei, so a click gives one lobe. The click and scribble tests use unambiguous nuclei.
AMBIGUOUS = {7}


def _objects(truth, count):
    """The ``count`` largest whole objects (not touching the border, not :data:`AMBIGUOUS`
    when ``truth`` is the 2D sample's crop), largest first."""
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    edge = np.r_[truth[0], truth[-1], truth[:, 0], truth[:, -1]]
    skip = AMBIGUOUS if truth.shape == (CROP[0].stop, CROP[1].stop) else set()
    inner = [i for i in ids[np.argsort(-sizes)] if not np.isin(i, edge) and i not in skip]
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


def _press(viewer, key):
    """A key press as the canvas hands it on (the active layer's keys first, then the
    viewer's)."""
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    assert handler.press_key(key), f"{key} is not bound"
    handler.release_key(key)


def _rgba(colour):
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(colour)[0]


def _centre(truth, i):
    return ndimage.center_of_mass(truth == i)


def test_a_click_gives_the_object_and_c_commits_it_placed_like_the_image(
    make_napari_viewer, qtbot, cache_dir
):
    viewer = make_napari_viewer()
    image, truth = _nuclei(viewer)
    widget = _dock(viewer, qtbot, from_menu=True)  # its viewer: napari's public-only proxy
    _features(qtbot, widget)
    clicks = viewer.layers[CLICKS]
    first, second = _objects(truth, 2)

    clicks.add([_centre(truth, first)])
    qtbot.waitUntil(lambda: CURRENT in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    current = viewer.layers[CURRENT]
    _placed_like(current, image)
    mask = np.asarray(current.data) > 0
    iou = (mask & (truth == first)).sum() / (mask | (truth == first)).sum()
    assert iou > 0.5, iou
    np.testing.assert_allclose(clicks.face_color[0], _rgba(SIGN_COLOURS["positive"]))

    viewer.layers.selection.active = clicks  # Points bind S themselves: the dock's win
    _press(viewer, "S")
    assert clicks.mode == "add" and widget.busy  # segmenting again, not napari's select mode
    _idle(qtbot, widget)
    _press(viewer, "C")
    committed = viewer.layers[COMMITTED]
    _placed_like(committed, image)
    np.testing.assert_array_equal(np.asarray(committed.data) == 1, mask)
    assert len(clicks.data) == 0 and not np.asarray(current.data).any()  # ready for the next

    # T makes the next clicks negative (red); Shift+C clears them
    _press(viewer, "T")
    assert not widget.positive.value
    clicks.add([(2.0, 2.0)])
    assert clicks.features["sign"].iloc[-1] == "negative"
    np.testing.assert_allclose(clicks.face_color[-1], _rgba(SIGN_COLOURS["negative"]))
    _press(viewer, "Shift-C")
    assert len(clicks.data) == 0
    _press(viewer, "T")
    assert widget.positive.value

    # the result layers removed by hand come back on the next click and commit
    viewer.layers.remove(CURRENT)
    viewer.layers.remove(COMMITTED)
    clicks.add([_centre(truth, second)])
    qtbot.waitUntil(lambda: CURRENT in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    widget.commit()
    committed = viewer.layers[COMMITTED]
    _placed_like(committed, image)
    labels = np.asarray(committed.data)
    assert labels.max() == 1 and (labels == 1).sum() > 0
    assert ((labels == 1) & (truth == second)).sum() / (labels == 1).sum() > 0.5
    # nothing to commit now: said, nothing written
    widget.commit()
    assert "nothing to commit" in widget.status.value
    np.testing.assert_array_equal(viewer.layers[COMMITTED].data, labels)


def test_accept_improve_and_save_hand_the_model_to_the_inference_dock(
    make_napari_viewer, qtbot, cache_dir, tmp_path
):
    viewer = make_napari_viewer()
    image, truth = _nuclei(viewer)
    widget = _dock(viewer, qtbot)
    _features(qtbot, widget)
    widget.save_model(tmp_path / "early.safetensors")
    assert "improve the model first" in widget.status.value
    widget.improve_model()
    assert "nothing to learn from" in widget.status.value and widget.worker is None

    widget.accept_automatic()
    qtbot.waitUntil(lambda: COMMITTED in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    committed = np.asarray(viewer.layers[COMMITTED].data)
    _placed_like(viewer.layers[COMMITTED], image)
    np.testing.assert_array_equal(committed, widget.session.cut(widget.session.maps.labels))
    assert committed.max() >= 0.5 * (len(np.unique(truth)) - 1)  # most nuclei

    viewer.layers[SCRIBBLES].data = _strokes(truth, _objects(truth, 2))
    widget.steps.value = 3
    widget.improve_model()
    assert widget.worker is not None and widget.cancel_button.enabled
    _idle(qtbot, widget, timeout=240_000)
    assert widget.tuned, widget.status.value
    assert "model improved" in widget.status.value or "updat" in widget.status.value
    assert widget.session.model.checkpoint_info.extra["trained_on"]
    # re-predicted with the new features
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)

    path = tmp_path / "tuned"
    widget.save_model(path)
    _idle(qtbot, widget)
    saved = tmp_path / "tuned.safetensors"
    assert saved.is_file() and "chosen in the RAT inference dock" in widget.status.value
    from napari_rat._widgets.inference_widget import InferenceWidget

    docks = [w for w in viewer.window.dock_widgets.values() if isinstance(w, InferenceWidget)]
    assert len(docks) == 1
    assert docks[0].model.kind.value == CHECKPOINT
    assert docks[0].model.selection() == saved
    from napari_rat.model import read_checkpoint_info

    assert read_checkpoint_info(saved).extra["trained_on"]
    # this dock's own choice names the saved model, and keeps it for the next features
    assert widget.model.selection() == saved
    tuned = widget.session.model
    widget.compute_features()
    _idle(qtbot, widget)
    assert widget.session.model is tuned and widget.tuned
    assert "from the cache" in widget.status.value, widget.status.value
    # choosing the bundled model again starts from it
    widget.model.kind.value = STARTER
    widget.compute_features()
    _idle(qtbot, widget)
    assert widget.session.model is not tuned and not widget.tuned
    assert widget.session.checkpoint == "starter"


def test_a_newer_stroke_cancels_the_older_update(make_napari_viewer, qtbot, cache_dir):
    viewer = make_napari_viewer()
    _, truth = _nuclei(viewer)
    widget = _dock(viewer, qtbot)
    _features(qtbot, widget)
    scribbles = viewer.layers[SCRIBBLES]
    first, second = _objects(truth, 2)
    strokes = _strokes(truth, [first])
    scribbles.data = strokes
    assert widget._timer.isActive()  # debounced: nothing runs while painting goes on
    widget.update_scribbles()
    older = widget._scribble_job
    strokes = strokes.copy()
    strokes[_strokes(truth, [second]) == 2] = 3  # a second class
    scribbles.data = strokes
    widget.update_scribbles()
    assert older.cancelled and widget._scribble_job is not older
    _idle(qtbot, widget)
    prediction = np.asarray(viewer.layers[PREDICTION].data)
    assert set(np.unique(prediction)) == {0, 2, 3}  # the newer strokes' classes
    assert (prediction[truth == second] == 3).mean() > 0.5


def test_cancel_stops_the_features_and_the_tune_leaving_everything_as_it_was(
    make_napari_viewer, qtbot, cache_dir
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-rat", "nuclei_2d")  # the whole 512x512 image: several tiles
    widget = _dock(viewer, qtbot)
    layers = [layer.name for layer in viewer.layers]
    from qtpy.QtCore import QTimer

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    widget.compute_features()
    qtbot.waitUntil(lambda: "features: tiles" in widget.status.value, timeout=60_000)
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=60_000)
    timer.stop()
    assert len(ticks) > 10  # the viewer's event loop kept turning while the model ran
    widget.cancel()
    _idle(qtbot, widget)
    assert widget.status.value.startswith("cancelled"), widget.status.value
    assert widget.session is None and [layer.name for layer in viewer.layers] == layers
    assert not [p for p in cache_dir.rglob("*") if p.name == ".zattrs" or p.suffix == ".json"]
    assert widget.compute_button.enabled and not widget.cancel_button.enabled

    image = viewer.layers["nuclei 2D"]
    image.data = np.asarray(image.data)[CROP]
    viewer.layers["nuclei 2D ground truth"].data = truth = np.asarray(
        viewer.layers["nuclei 2D ground truth"].data
    )[CROP]
    _features(qtbot, widget)
    model = widget.session.model
    viewer.layers[SCRIBBLES].data = _strokes(truth, _objects(truth, 2))
    _idle(qtbot, widget)
    widget.steps.value = 500
    widget.improve_model()
    qtbot.waitUntil(lambda: "improving the model: step" in widget.status.value, timeout=60_000)
    widget.cancel()
    _idle(qtbot, widget)
    assert widget.status.value.startswith("cancelled"), widget.status.value
    assert widget.session.model is model and not widget.tuned


def test_bad_input_is_said_and_leaves_the_layers_alone(make_napari_viewer, qtbot, cache_dir):
    viewer = make_napari_viewer()
    widget = _dock(viewer, qtbot, image_name=None)
    widget.compute_features()
    assert "choose an image layer" in widget.status.value
    widget.segment()
    assert "compute the image's features first" in widget.status.value

    viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="4d")
    widget.image_layer.value = "4d"
    widget.compute_features()
    assert (
        "4 dimensions" in widget.status.value and "2D image or a 3D volume" in widget.status.value
    )

    _nuclei(viewer)
    other = viewer.add_labels(np.ones((50, 50), np.uint8), name="other labels")
    widget.image_layer.value = "nuclei 2D"
    widget.scribble_choice.value = "other labels"
    before = [layer.name for layer in viewer.layers]
    widget.compute_features()
    assert widget.worker is None and widget.session is None
    assert "'other labels' has shape (50, 50)" in widget.status.value
    assert "image (128, 128)" in widget.status.value
    assert [layer.name for layer in viewer.layers] == before
    assert other.data.shape == (50, 50) and (other.data == 1).all()

    # the image's own labels (its shape) can be the scribbles
    widget.scribble_choice.value = "nuclei 2D ground truth"
    _features(qtbot, widget)
    assert SCRIBBLES not in viewer.layers


def test_closing_the_dock_unbinds_its_keys_and_gives_back_the_viewers(
    make_napari_viewer, qtbot, cache_dir
):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer()
    _nuclei(viewer)

    def mine(viewer):
        viewer.status = "mine"

    viewer.bind_key("T", mine)
    widget = _dock(viewer, qtbot)
    _features(qtbot, widget)
    keys = [coerce_keybinding(k) for k in ("S", "C", "T", "Shift-C")]
    assert all(k in viewer.keymap for k in keys)
    clicks = viewer.layers[CLICKS]
    assert all(k in clicks.keymap for k in keys)
    viewer.window.remove_dock_widget(widget.native)
    assert viewer.keymap.get(coerce_keybinding("T")) is mine
    assert not [k for k in keys if k in viewer.keymap and k != coerce_keybinding("T")]
    assert not [k for k in keys if k in clicks.keymap]


def test_anisotropic_3d_slice_then_box_clicks_and_commit(
    make_napari_viewer, qtbot, cache_dir, dock_checkpoints
):
    """A small random-weight 3D model on a volume of spacing 2 x 0.5 x 0.5: in a 2D view the
    update predicts the current slice only; in a 3D view the (small) volume; clicks and
    commits are 3D and placed like the image."""
    from napari_rat.synthetic import synthetic_nuclei

    viewer = make_napari_viewer()
    spacing, translate = (2.0, 0.5, 0.5), (4.0, 1.0, -2.0)
    img, truth = synthetic_nuclei((8, 40, 40), spacing, radius=3.0, seed=4)
    truth = truth.astype(np.int32)
    image = viewer.add_image(img, name="vol", scale=spacing, translate=translate)
    widget = _dock(viewer, qtbot, image_name="vol")
    widget.model.use_checkpoint(dock_checkpoints["3d"])
    z = 4
    viewer.dims.set_point(0, translate[0] + z * spacing[0])
    _features(qtbot, widget)
    assert widget.session.shape == img.shape  # the whole volume, not a plane
    scribbles = viewer.layers[SCRIBBLES]
    assert scribbles.data.shape == img.shape
    _placed_like(scribbles, image)

    strokes = np.zeros(img.shape, np.uint8)
    strokes[z] = _strokes(truth[z], _objects(truth[z], 2))
    scribbles.data = strokes
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    prediction = viewer.layers[PREDICTION]
    _placed_like(prediction, image)
    data = np.asarray(prediction.data)
    planes = np.flatnonzero(data.reshape(len(data), -1).any(axis=1))
    assert list(planes) == [z]  # the current slice (2D-in-3D)

    viewer.dims.ndisplay = 3
    widget.segment()
    qtbot.waitUntil(lambda: len(np.flatnonzero(np.asarray(prediction.data).any((1, 2)))) > 1)
    _idle(qtbot, widget)

    # a click in the 3D view lands on the brightest voxel of its view ray (along z here)
    np.testing.assert_allclose(np.abs(viewer.camera.view_direction), (1, 0, 0), atol=1e-6)
    i = _objects(truth[z], 1)[0]
    y, x = np.round(ndimage.center_of_mass(truth[z] == i)).astype(int)
    viewer.layers[CLICKS].add([(0, y, x)])
    qtbot.waitUntil(lambda: CURRENT in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    brightest = (int(np.argmax(img[:, y, x])), y, x)
    assert brightest[0] != 0  # the click moved
    np.testing.assert_allclose(viewer.layers[CLICKS].data[0], brightest)
    current = np.asarray(viewer.layers[CURRENT].data)
    assert current.shape == img.shape and current[brightest] == 1
    widget.commit()
    committed = viewer.layers[COMMITTED]
    _placed_like(committed, image)
    np.testing.assert_allclose(committed.scale, spacing)
    np.testing.assert_array_equal(np.asarray(committed.data) == 1, current > 0)


def test_a_2d_model_on_a_volume_takes_the_current_plane(make_napari_viewer, qtbot, cache_dir):
    """The 2D starter (chosen as a file: the bundled choice takes the 3D one for a volume) on a
    stack: features, scribbles and clicks of the current plane, the results in that plane of
    volume-shaped layers."""
    from napari_rat.pretrained import starter_model_path

    viewer = make_napari_viewer()
    _, truth2d = _nuclei(viewer)
    plane = np.asarray(viewer.layers["nuclei 2D"].data)
    stack = np.stack([plane[::-1], plane, plane[:, ::-1]])
    image = viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0), translate=(6, 0, 0))
    widget = _dock(viewer, qtbot, image_name="stack")
    widget.model.use_checkpoint(starter_model_path(2))
    viewer.dims.set_point(0, 6 + 3.0)  # plane 1
    _features(qtbot, widget)
    assert "plane 1" in widget.status.value, widget.status.value
    assert widget.session.shape == plane.shape
    scribbles = viewer.layers[SCRIBBLES]
    assert scribbles.data.shape == stack.shape
    strokes = np.zeros(stack.shape, np.uint8)
    strokes[1] = _strokes(truth2d, _objects(truth2d, 3))
    scribbles.data = strokes
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    data = np.asarray(viewer.layers[PREDICTION].data)
    assert not data[0].any() and not data[2].any()
    dice = 2 * ((data[1] > 0) & (truth2d > 0)).sum() / ((data[1] > 0).sum() + (truth2d > 0).sum())
    assert dice > 0.8, dice
    _placed_like(viewer.layers[PREDICTION], image)


def test_removed_layers_come_back_and_a_brush_stroke_updates(make_napari_viewer, qtbot, cache_dir):
    """Run, remove the dock's layers by hand, go on: S makes the inputs again, a stroke
    painted with napari's brush (``Labels.paint``) updates the prediction, which comes back."""
    viewer = make_napari_viewer()
    image, truth = _nuclei(viewer)
    widget = _dock(viewer, qtbot)
    _features(qtbot, widget)
    strokes = _strokes(truth, _objects(truth, 3))
    viewer.layers[SCRIBBLES].data = strokes
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    first = np.asarray(viewer.layers[PREDICTION].data).copy()
    for name in (PREDICTION, SCRIBBLES, CLICKS):  # one per event-loop turn, as a user would
        viewer.layers.remove(name)
        qtbot.wait(50)
    _press(viewer, "S")  # nothing painted any more: the inputs come back, empty
    assert SCRIBBLES in viewer.layers and CLICKS in viewer.layers
    scribbles = viewer.layers[SCRIBBLES]
    _placed_like(scribbles, image)
    _idle(qtbot, widget)
    assert PREDICTION not in viewer.layers
    scribbles.data = strokes
    _idle(qtbot, widget)
    scribbles.selected_label = 2
    scribbles.brush_size = 3
    i = _objects(truth, 4)[3]
    scribbles.paint(_centre(truth, i), 2)  # the brush's own call: a paint event
    assert widget._timer.isActive()
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    again = np.asarray(viewer.layers[PREDICTION].data)
    _placed_like(viewer.layers[PREDICTION], image)
    assert (again[truth == i] > 0).mean() > 0.8
    assert ((again > 0) == (first > 0)).mean() > 0.9  # the same strokes, the same answer


@pytest.mark.parametrize("name", ["commit", "_on_click_done", "_on_scribbles_done"])
def test_an_exception_in_a_dock_callback_stays_in_the_dock(
    make_napari_viewer, qtbot, cache_dir, monkeypatch, caplog, name
):
    """A callback raising (a key's action, a worker's result handler): the failure is logged
    and shown, and napari keeps running (pytest-qt fails a test on an exception that
    reaches Qt)."""
    import logging

    def fail(self, *args, **kwargs):
        raise ValueError(f"boom in {name}")

    monkeypatch.setattr(InteractiveWidget, name, fail)
    viewer = make_napari_viewer()
    _, truth = _nuclei(viewer)
    widget = _dock(viewer, qtbot)
    _features(qtbot, widget)
    caplog.set_level(logging.ERROR)
    if name == "_on_scribbles_done":
        viewer.layers[SCRIBBLES].data = _strokes(truth, _objects(truth, 2))
        widget.update_scribbles()
    else:
        viewer.layers[CLICKS].add([_centre(truth, _objects(truth, 1)[0])])
        _idle(qtbot, widget)
        if name == "commit":
            _press(viewer, "C")
    _idle(qtbot, widget)
    assert f"boom in {name}" in caplog.text
    assert f"boom in {name}" in widget.status.value


def test_features_of_the_current_view_and_scribbles_and_clicks_there(
    make_napari_viewer, qtbot, cache_dir
):
    """Zoomed in, 'features of: current view' computes the view's features only; scribbles
    predict there, clicks segment there, and everything lands on the image."""
    viewer = make_napari_viewer()
    image, truth = _nuclei(viewer)
    i = _objects(truth, 1)[0]
    cy, cx = _centre(truth, i)
    viewer.camera.center = (TRANSLATE[0] + cy, TRANSLATE[1] + cx)
    viewer.camera.zoom = 12
    widget = _dock(viewer, qtbot)
    widget.extent.value = "current view"
    _features(qtbot, widget)
    session = widget.session
    assert session.layer_shape == truth.shape
    assert all(n < 128 for n in session.shape), session.shape
    ys, xs = session.where
    assert ys.start <= cy < ys.stop and xs.start <= cx < xs.stop
    assert "the view" in widget.status.value

    strokes = np.zeros(truth.shape, np.uint8)
    strokes[session.where] = _strokes(truth[session.where], [i])
    assert (strokes == 1).any()
    viewer.layers[SCRIBBLES].data = strokes
    qtbot.waitUntil(lambda: PREDICTION in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    prediction = np.asarray(viewer.layers[PREDICTION].data)
    outside = np.ones(truth.shape, bool)
    outside[session.where] = False
    assert not prediction[outside].any()
    assert (prediction[truth == i] > 0).mean() > 0.8

    viewer.layers[CLICKS].add([(cy, cx)])
    qtbot.waitUntil(lambda: CURRENT in viewer.layers, timeout=60_000)
    _idle(qtbot, widget)
    widget.commit()
    labels = np.asarray(viewer.layers[COMMITTED].data)
    _placed_like(viewer.layers[COMMITTED], image)
    assert ((labels == 1) & (truth == i)).sum() / ((labels == 1) | (truth == i)).sum() > 0.5
