"""The inference dock widget in a real napari viewer (xvfb)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_rat._widgets.inference_widget import InferenceWidget  # noqa: E402
from napari_rat.config import ModelConfig  # noqa: E402
from napari_rat.model import build_model, save_checkpoint  # noqa: E402
from napari_rat.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, small_model_config):
    import torch

    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    c2 = ModelConfig(**small_model_config)
    volume = {"spatial_dims": 3, "sga_kernel_size": [1, 3, 3], "stride": [1, 2, 2]}
    c3 = ModelConfig(**{**small_model_config, **volume})
    return (
        save_checkpoint(build_model(c2), tmp / "m2.safetensors", c2),
        save_checkpoint(build_model(c3), tmp / "m3.safetensors", c3),
    )


def _widget(viewer, checkpoint, layer_name):
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")
    widget.model.use_checkpoint(checkpoint)
    widget.image_layer.value = layer_name
    widget.tile.value = 32
    return widget


def test_3d_volume_results_land_on_the_source(make_napari_viewer, qtbot, checkpoints):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((6, 40, 36), (2.0, 0.5, 0.5), seed=0)
    layer = viewer.add_image(
        img,
        name="vol",
        scale=(2.0, 0.5, 0.5),
        translate=(5.0, -3.0, 7.0),
        units=("um", "um", "um"),
        axis_labels=("z", "y", "x"),
    )
    widget = _widget(viewer, checkpoints[1], "vol")
    assert not widget.model.checkpoint.native.isHidden()
    # The event loop keeps turning while the worker runs.
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    widget.run()
    assert widget.worker is not None and not widget.run_button.enabled
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    timer.stop()
    assert len(ticks) > 3
    assert "done" in widget.status.value, widget.status.value
    prob = viewer.layers["vol foreground (RAT)"]
    labels = viewer.layers["vol instances (RAT)"]
    for out in (prob, labels):
        assert out.data.shape == img.shape
        np.testing.assert_allclose(out.scale, layer.scale)
        np.testing.assert_allclose(out.translate, layer.translate)
        np.testing.assert_allclose(out.data_to_world((1, 2, 3)), layer.data_to_world((1, 2, 3)))
        assert tuple(out.axis_labels) == ("z", "y", "x")
    assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0


def test_2d_model_on_current_slice_of_a_volume(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((5, 32, 30), (1.0, 1.0, 1.0), seed=1)
    layer = viewer.add_image(img, name="vol", scale=(3.0, 1.0, 1.0), translate=(10.0, 0, 0))
    viewer.dims.set_point(0, 10.0 + 3.0 * 3)
    widget = _widget(viewer, checkpoints[0], "vol")
    widget.region.value = "current slice"
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    out = viewer.layers["vol foreground (RAT)"]
    assert out.data.shape == (1, 32, 30)
    # The single plane sits exactly on slice 3 of the source.
    np.testing.assert_allclose(out.data_to_world((0, 4, 5)), layer.data_to_world((3, 4, 5)))


@pytest.mark.parametrize("grid", [False, True])
def test_current_view_of_a_pyramid_level(make_napari_viewer, qtbot, checkpoints, grid):
    """Zoomed in on a multiscale image: the results cover what is on screen (in grid mode, in
    one cell), read from the chosen level, and sit on the source."""
    viewer = make_napari_viewer(show=True)
    img, _ = synthetic_nuclei((160, 192), (0.5, 0.5), seed=2)
    pyramid = [img, img.reshape(80, 2, 96, 2).mean((1, 3))]
    # napari's own account of what is on screen: the corner pixels of a plain (single-scale)
    # layer larger than the image.
    ref = viewer.add_image(np.zeros((400, 400), np.float32), scale=(0.5, 0.5), translate=(0, -30))
    layer = viewer.add_image(
        pyramid, name="pyr", multiscale=True, scale=(0.5, 0.5), translate=(20.0, -4.0)
    )
    canvas = viewer.window._qt_viewer.canvas

    def views_laid_out():
        # A grid's views are degenerate (10 x 10 pixels) until a draw lays them out; then they
        # tile the canvas (no grid spacing here) and the canvas has drawn at that size.
        rows, columns = viewer.canvas.grid.actual_shape(viewer.layers)
        height, width = canvas.size
        size = np.asarray(canvas._current_viewbox_size)
        return np.allclose(size * (columns, rows), (width, height), atol=1) and np.allclose(
            canvas._last_viewbox_size, size
        )

    viewer.grid.enabled = grid
    qtbot.waitUntil(views_laid_out, timeout=10_000)
    viewer.camera.center = tuple(layer.data_to_world((90, 100)))
    viewer.camera.zoom = 40.0  # screen pixels per world unit: ~30 x 38 image pixels on screen
    # Wait for the draw that shows the zoomed view: the corner pixels span what one view holds.
    on_screen = np.asarray(canvas._current_viewbox_size)[::-1] / viewer.camera.zoom / 0.5
    qtbot.waitUntil(
        lambda: np.allclose(np.ptp(ref.corner_pixels, axis=0), on_screen, atol=2),
        timeout=10_000,
    )
    seen = np.stack([ref.data_to_world(c) for c in ref.corner_pixels])
    widget = _widget(viewer, checkpoints[0], "pyr")
    widget.region.value = "current view"
    widget.level.value = 1
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "done" in widget.status.value, widget.status.value
    out = viewer.layers["pyr foreground (RAT)"]
    np.testing.assert_allclose(out.scale, (1.0, 1.0))  # level 1: twice the source's pixel
    # The result covers what was on screen, give or take a level-1 pixel, and no more.
    lo = np.asarray(out.data_to_world((-0.5, -0.5)))
    hi = np.asarray(out.data_to_world(np.asarray(out.data.shape) - 0.5))
    assert np.all(lo <= seen[0] + 1.0) and np.all(hi >= seen[1] - 1.0), (lo, hi, seen)
    assert np.all(lo > seen[0] - 2.5) and np.all(hi < seen[1] + 2.5), (lo, hi, seen)
    # And on the source's level-1 pixels as napari shows them: each result pixel is centred on
    # the 2x2 block of level-0 pixels it averages (level-0 coordinate 2 i + 0.5).
    for pixel in [(0, 0), tuple(np.asarray(out.data.shape) - 1)]:
        under = np.asarray(layer.world_to_data(out.data_to_world(pixel)))
        np.testing.assert_allclose(under % 2, 0.5, atol=1e-6)


def test_cancel_adds_no_layer(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((96, 96), seed=2)
    viewer.add_image(img, name="img")
    widget = _widget(viewer, checkpoints[0], "img")
    widget.tile.value = 16
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert [lyr.name for lyr in viewer.layers] == ["img"]
    assert "cancel" in widget.status.value
    assert widget.run_button.enabled


def test_bad_checkpoint_shows_an_error_not_a_traceback(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    widget = _widget(viewer, bad, "img")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.status.value.startswith("error:") and "bad.safetensors" in widget.status.value
    assert [lyr.name for lyr in viewer.layers] == ["img"]
    # No file chosen at all: said in the widget, nothing started.
    widget.model.checkpoint.value = tmp_path / "missing.safetensors"
    widget.run()
    assert widget.worker is None and "choose a checkpoint file" in widget.status.value


def test_source_renamed_during_the_run_keeps_its_results_in_place(
    make_napari_viewer, qtbot, checkpoints
):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((64, 60), seed=3)
    source = viewer.add_image(
        img, name="img", scale=(0.5, 0.25), translate=(4.0, 2.0), units=("um", "um")
    )
    widget = _widget(viewer, checkpoints[0], "img")
    widget.run()
    # While the model runs, the source is renamed and another layer takes its old name.
    source.name = "renamed"
    viewer.add_image(np.zeros((8, 8), np.float32), name="img", scale=(9.0, 9.0))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "done" in widget.status.value, widget.status.value
    out = viewer.layers["img foreground (RAT)"]
    assert out.data.shape == img.shape
    np.testing.assert_allclose(out.scale, source.scale)
    np.testing.assert_allclose(out.translate, source.translate)
    assert [str(u) for u in out.units] == [str(u) for u in source.units]
    # Removing the source mid-run is no error either: the results still arrive.
    viewer.layers.remove("img foreground (RAT)")
    viewer.layers.remove("img instances (RAT)")
    widget.image_layer.value = "renamed"
    widget.run()
    viewer.layers.remove("renamed")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "done" in widget.status.value, widget.status.value
    assert "renamed foreground (RAT)" in viewer.layers


def test_result_layers_arrive_one_per_event_loop_turn(make_napari_viewer, qtbot, checkpoints):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((48, 48), seed=4)
    viewer.add_image(img, name="img")
    widget = _widget(viewer, checkpoints[0], "img")
    seen = []

    def inserted(event):
        seen.append(event.value.name)
        # Posted while the layer is being added: it runs before the next layer only if the
        # dock gives the event loop a turn in between.
        QTimer.singleShot(0, lambda: seen.append("turn"))

    viewer.layers.events.inserted.connect(inserted)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert seen[:3] == ["img foreground (RAT)", "turn", "img instances (RAT)"]
    assert widget.status.value.startswith("done") and widget.run_button.enabled


def test_a_region_whose_results_cannot_fit_in_memory_is_refused(
    make_napari_viewer, qtbot, checkpoints
):
    import dask.array as da

    from napari_rat._widgets.inference_widget import RESULT_BYTES_PER_PIXEL, check_result_memory

    # A lazy pyramid whose full resolution (10^12 pixels) no machine could hold results for.
    side = 1_000_000
    pyramid = [
        da.zeros((side // 4**k,) * 2, dtype=np.float32, chunks=(1024, 1024)) for k in range(6)
    ]
    viewer = make_napari_viewer()
    viewer.add_image(pyramid, name="huge", multiscale=True, contrast_limits=(0, 1))
    widget = _widget(viewer, checkpoints[0], "huge")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    status = widget.status.value
    assert status.startswith("error:") and "1,000,000,000,000 pixels" in status, status
    assert "current view" in status and "coarser level (up to 5)" in status
    assert "--into-labels" in status
    assert [lyr.name for lyr in viewer.layers] == ["huge"] and widget.run_button.enabled
    # The same arithmetic lets a run through when it fits.
    check_result_memory((10, 100), available=1000 * RESULT_BYTES_PER_PIXEL)
    with pytest.raises(ValueError, match=r"\(1 x 7 x 143\) has 1,001 voxels"):
        check_result_memory((1, 7, 143), available=1000 * RESULT_BYTES_PER_PIXEL)


def _run(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)


def test_a_2d_model_on_a_stack_says_which_plane_and_every_plane_segments_the_stack(
    make_napari_viewer, qtbot, checkpoints
):
    """ "whole image" with a 2D model on a volume segmented the current plane alone and said
    only "done: 1 instances"."""
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((4, 40, 36), (1.0, 0.5, 0.5), seed=6)
    layer = viewer.add_image(
        img,
        name="vol",
        scale=(2.0, 0.5, 0.5),
        translate=(5.0, -3.0, 7.0),
        axis_labels=("z", "y", "x"),
    )
    viewer.dims.set_point(0, 5.0 + 2.0 * 2)
    widget = _widget(viewer, checkpoints[0], "vol")
    _run(widget, qtbot)
    plan = "2D model: plane z=2 of 4; choose 'every plane' to segment the stack"
    assert widget.plan.value == plan and plan in widget.status.value, widget.status.value
    one = viewer.layers["vol foreground (RAT)"]
    assert one.data.shape == (1, 40, 36)
    np.testing.assert_allclose(one.data_to_world((0, 3, 4)), layer.data_to_world((2, 3, 4)))
    plane2 = np.array(one.data[0])
    viewer.layers.remove(one)
    viewer.layers.remove("vol instances (RAT)")
    widget.region.value = "every plane"
    _run(widget, qtbot)
    assert "every one of the 4 planes" in widget.status.value, widget.status.value
    stack = viewer.layers["vol foreground (RAT)"]
    labels = viewer.layers["vol instances (RAT)"]
    for out in (stack, labels):
        assert out.data.shape == img.shape
        np.testing.assert_allclose(out.data_to_world((3, 1, 2)), layer.data_to_world((3, 1, 2)))
    # The same engine, plane by plane: plane 2 is the single-plane run's result.
    np.testing.assert_allclose(stack.data[2], plane2, atol=1e-6)
    # Instances are numbered on across planes and the status counts them all.
    ids = [set(np.unique(labels.data[z])) - {0} for z in range(4)]
    assert all(ids) and not set.intersection(*ids[:2])
    count = int(widget.status.value.split("done: ")[1].split(" ")[0])
    assert count == len(set.union(*ids))


def test_a_slider_outside_the_layer_is_refused_not_read_as_plane_0(
    make_napari_viewer, qtbot, checkpoints
):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((3, 32, 32), seed=7)
    viewer.add_image(img, name="vol", axis_labels=("z", "y", "x"))
    viewer.add_image(np.zeros((20, 32, 32), np.float32), name="tall")
    viewer.dims.set_point(0, 12.0)
    widget = _widget(viewer, checkpoints[0], "vol")
    _run(widget, qtbot)
    status = widget.status.value
    assert status.startswith("error:") and "outside layer 'vol' (planes 0..2)" in status, status
    assert "move the slider" in status
    assert [lyr.name for lyr in viewer.layers] == ["vol", "tall"]
    # Every plane needs no slider position.
    widget.region.value = "every plane"
    _run(widget, qtbot)
    assert viewer.layers["vol foreground (RAT)"].data.shape == img.shape


def test_nan_pixels_are_said_and_left_out(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((48, 48), seed=8)
    img = img.astype(np.float32)
    img[5:9, 5:20] = np.nan
    viewer.add_image(img, name="img")
    widget = _widget(viewer, checkpoints[0], "img")
    _run(widget, qtbot)
    status = widget.status.value
    assert status.startswith("done") and "60 NaN (or infinite) pixels" in status, status
    fg = viewer.layers["img foreground (RAT)"].data
    assert np.isfinite(fg).all() and (fg[5:9, 5:20] == 0).all() and fg.max() > 0.0
    assert np.isnan(viewer.layers["img"].data[5:9, 5:20]).all()  # the user's data untouched


def test_a_channel_axis_is_the_model_s_channels_not_a_stack(make_napari_viewer, qtbot, checkpoints):
    """A (C, Y, X) layer was read as a stack of planes and channel 0 alone was segmented."""
    viewer = make_napari_viewer()
    nuclei, _ = synthetic_nuclei((48, 40), seed=9)
    channels = np.stack([np.zeros_like(nuclei), nuclei, nuclei[::-1]])
    viewer.add_image(channels, name="cells", axis_labels=("c", "y", "x"), scale=(1, 0.5, 0.5))
    viewer.add_image(nuclei, name="plain", scale=(0.5, 0.5))
    widget = _widget(viewer, checkpoints[0], "cells")
    assert widget.channel.choices == ("all", "0", "1", "2")
    _run(widget, qtbot)
    status = widget.status.value
    assert "'cells' has 3 channels on c; the model takes 1: choose one" in status, status
    assert "cells foreground (RAT)" not in viewer.layers
    widget.channel.value = "1"
    _run(widget, qtbot)
    assert widget.status.value.startswith("done"), widget.status.value
    out = viewer.layers["cells foreground (RAT)"]
    assert out.data.shape == (1, 48, 40) and out.data.max() > 0
    # Channel 1 is the nuclei: the same result as on a plain 2D layer of them.
    widget.image_layer.value = "plain"
    assert widget.channel.choices == ("all",)
    _run(widget, qtbot)
    np.testing.assert_allclose(out.data[0], viewer.layers["plain foreground (RAT)"].data, atol=1e-6)


def test_the_bundled_choice_takes_the_3d_starter_for_volumes(make_napari_viewer, qtbot):
    """A volume gets the bundled 3D starter (a real 3D run, not plane by plane); a 2D image the
    2D one; the choice's card follows the model the run takes."""
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((6, 40, 40), spacing=(2.0, 1.0, 1.0), radius=6.0, seed=10)
    viewer.add_image(img, name="vol", scale=(2.0, 1.0, 1.0), axis_labels=("z", "y", "x"))
    widget = InferenceWidget(viewer)
    widget.image_layer.value = "vol"
    widget.tile.value = 32
    assert widget.model.selection(3) == "starter-3d" and widget.model.selection(2) == "starter"
    _run(widget, qtbot)
    status = widget.status.value
    assert status.startswith("done") and "plane" not in status, status
    assert widget.plan.value == "", widget.plan.value  # no 2D-in-3D plan
    fg = viewer.layers["vol foreground (RAT)"]
    assert fg.data.shape == img.shape  # the whole volume, placed as the image
    np.testing.assert_allclose(fg.scale, (2.0, 1.0, 1.0))


def test_resample_runs_the_starter_at_its_training_spacing(make_napari_viewer, qtbot):
    """A volume twice as coarse in z as the 3D starter's training data: "resample to the
    training spacing" gives what `predict --resample` gives (the same engine run with tiles
    resampled), not the told-spacing run, in the same place; removing the first results and
    running again with it on leaves one set of layers."""
    from napari_rat._widgets.inference_widget import result_arrays
    from napari_rat._widgets.layer_input import layer_input, snapshot_layer
    from napari_rat.inference import PredictOptions, run_prediction
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.inference.sources import predict_input
    from napari_rat.pretrained import starter_model_path

    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((5, 40, 40), spacing=(4.0, 1.0, 1.0), radius=6.0, seed=11)
    layer = viewer.add_image(img, name="vol", scale=(4.0, 1.0, 1.0), axis_labels=("z", "y", "x"))
    widget = InferenceWidget(viewer)
    widget.image_layer.value = "vol"
    widget.tile.value = 32
    assert widget.resample.value is False
    _run(widget, qtbot)
    told = np.asarray(viewer.layers["vol foreground (RAT)"].data).copy()
    for name in ("vol foreground (RAT)", "vol instances (RAT)"):
        viewer.layers.remove(name)
    widget.resample.value = True
    _run(widget, qtbot)
    assert widget.status.value.startswith("done"), widget.status.value
    fg = viewer.layers["vol foreground (RAT)"]
    assert [lay.name for lay in viewer.layers].count("vol foreground (RAT)") == 1
    assert fg.data.shape == img.shape
    np.testing.assert_allclose(fg.scale, (4.0, 1.0, 1.0))
    model = load_model_for_inference(starter_model_path(3))
    source = layer_input(snapshot_layer(layer), 3, "whole", [0, 0, 0], 0)
    options = PredictOptions(tile=(32,) * 3, resample_to_training_spacing=True)
    expected = result_arrays(run_prediction(predict_input(model, source, options=options)), source)
    np.testing.assert_allclose(fg.data, expected["foreground"], atol=1e-5)
    assert np.abs(np.asarray(fg.data) - told).max() > 0.05  # not the told-spacing run


def test_run_as_trained_uses_the_model_s_attention_and_tiles(
    make_napari_viewer, qtbot, checkpoints, tmp_path
):
    """ "run as trained": the dense model with the dense maths in tiles of its training crop
    (the tile box off meanwhile), what `predict --as-trained` runs; a checkpoint that does not
    record its crop is refused in the status line, the layers left as they were."""
    from napari_rat._widgets.inference_widget import result_arrays
    from napari_rat._widgets.layer_input import layer_input, snapshot_layer
    from napari_rat.inference import PredictOptions, run_prediction
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.inference.sources import predict_input
    from napari_rat.model import load_checkpoint

    model = load_checkpoint(checkpoints[0])
    trained = save_checkpoint(
        model,
        tmp_path / "trained.safetensors",
        model.checkpoint_info.model_config,
        extra={"crop_size": [32, 32]},
    )
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((56, 48), (0.5, 0.5), seed=12)
    layer = viewer.add_image(img, name="img", scale=(0.5, 0.5))
    widget = _widget(viewer, trained, "img")
    _run(widget, qtbot)
    default = np.asarray(viewer.layers["img foreground (RAT)"].data).copy()
    for name in ("img foreground (RAT)", "img instances (RAT)"):
        viewer.layers.remove(name)
    widget.as_trained.value = True
    assert not widget.tile.enabled
    _run(widget, qtbot)
    assert widget.status.value.startswith("done"), widget.status.value
    fg = viewer.layers["img foreground (RAT)"].data
    exact = load_model_for_inference(trained, attention="exact")
    source = layer_input(snapshot_layer(layer), 2, "whole", [0, 0], 0)
    options = PredictOptions(tile=(24, 24), halo=(4, 4))
    expected = result_arrays(run_prediction(predict_input(exact, source, options=options)), source)
    np.testing.assert_allclose(fg, expected["foreground"], atol=1e-5)
    assert np.abs(np.asarray(fg) - default).max() > 1e-3  # not the default run
    names = [lay.name for lay in viewer.layers]
    widget.model.use_checkpoint(checkpoints[0])  # no crop size recorded
    _run(widget, qtbot)
    status = widget.status.value
    assert status.startswith("error:") and "does not record the crop size" in status, status
    assert [lay.name for lay in viewer.layers] == names
    widget.as_trained.value = False
    assert widget.tile.enabled


@pytest.mark.slow
def test_run_on_the_local_cluster_gives_the_layers_of_a_run_here(
    make_napari_viewer, qtbot, checkpoints, tmp_path, monkeypatch
):
    """ "run on: local cluster" starts the local head (a real one, stopped by its pid after) and
    spreads the blocks over 2 workers; the layers equal those of a run on this machine, placed
    the same, and the scratch store is gone."""
    pytest.importorskip("ray")
    import tempfile

    from napari_rat.cluster import stop_local_head

    monkeypatch.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path / "state"))
    from pathlib import Path

    def scratch():
        return set(Path(tempfile.gettempdir()).glob("napari-rat-dock-cluster-*"))

    before = scratch()
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((96, 80), seed=5)
    viewer.add_image(img, name="img", scale=(0.5, 0.5), translate=(3.0, -2.0))
    widget = _widget(viewer, checkpoints[0], "img")
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    here = {
        name: np.asarray(viewer.layers[f"img {name} (RAT)"].data)
        for name in ("foreground", "instances")
    }
    viewer.layers.remove("img foreground (RAT)")
    viewer.layers.remove("img instances (RAT)")
    widget.run_on.value = "local cluster"
    widget.workers.value = 2
    try:
        widget.run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=300_000)
        assert widget.status.value.startswith("done"), widget.status.value
        fg = viewer.layers["img foreground (RAT)"]
        np.testing.assert_allclose(np.asarray(fg.data), here["foreground"], atol=1e-5, rtol=0)
        labels = viewer.layers["img instances (RAT)"]
        np.testing.assert_array_equal(np.asarray(labels.data), here["instances"])
        assert tuple(labels.scale) == (0.5, 0.5) and tuple(labels.translate) == (3.0, -2.0)
        assert scratch() == before
    finally:
        stopped = stop_local_head()
    assert stopped is not None  # the run had started the local head
