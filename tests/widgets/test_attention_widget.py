"""The attention dock widget in a real napari viewer (xvfb)."""

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_rat._widgets.attention_widget import AttentionWidget  # noqa: E402
from napari_rat.config import ModelConfig  # noqa: E402
from napari_rat.model import build_model, save_checkpoint  # noqa: E402
from napari_rat.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch

    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    common = {
        "feature_dims": 16,
        "num_heads": 2,
        "num_blocks": 2,
        "iters": 1,
        "sga_attention_type": "local",
        "head": {"decoder_dims": 8},
    }
    c2 = ModelConfig(sga_kernel_size=3, stride=2, **common)
    c3 = ModelConfig(spatial_dims=3, sga_kernel_size=[1, 3, 3], stride=[1, 2, 2], **common)
    return (
        save_checkpoint(build_model(c2), tmp / "m2.safetensors", c2),
        save_checkpoint(build_model(c3), tmp / "m3.safetensors", c3),
    )


def _dock_on_nuclei(viewer, checkpoint):
    """An 80x70 nuclei image placed off the origin, and the attention dock set up on it."""
    img, _ = synthetic_nuclei((80, 70), (0.5, 0.5), seed=0)
    layer = viewer.add_image(img, name="img", scale=(0.5, 0.5), translate=(100.0, 50.0))
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.use_checkpoint(checkpoint)
    widget.image_layer.value = "img"
    widget.window.value = 32
    return layer, widget


def test_click_shows_attention_and_grouping_aligned(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    layer, widget = _dock_on_nuclei(viewer, checkpoints[0])
    world = layer.data_to_world((40, 30))
    widget.point.value = ", ".join(map(str, world))
    widget.show_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "over 2 blocks" in widget.status.value, widget.status.value
    for block in (0, 1):
        att = viewer.layers[f"attention block {block}"]
        grp = viewer.layers[f"grouping block {block}"]
        assert att.data.shape == grp.data.shape == (32, 32)
        np.testing.assert_allclose(att.scale, layer.scale)
        # The window's pixel (0, 0) is the source's pixel (24, 14).
        np.testing.assert_allclose(att.data_to_world((0, 0)), layer.data_to_world((24, 14)))
        np.testing.assert_allclose(grp.translate, att.translate)
        assert grp.data.min() >= 1  # every pixel belongs to a group token
    # Local attention: the point's block-0 token sees only pixels around the point.
    att0 = viewer.layers["attention block 0"].data
    ys, xs = np.nonzero(att0 > 0)
    assert ys.min() <= 16 <= ys.max() and xs.min() <= 16 <= xs.max()
    assert ys.max() - ys.min() < 8 and xs.max() - xs.min() < 8
    # Deeper blocks group more pixels per token.
    g0 = len(np.unique(viewer.layers["grouping block 0"].data))
    g1 = len(np.unique(viewer.layers["grouping block 1"].data))
    assert g1 < g0
    # A second click updates the same layers instead of adding new ones.
    n_layers = len(viewer.layers)
    widget.point.value = ", ".join(map(str, layer.data_to_world((20, 20))))
    widget.show_point()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert len(viewer.layers) == n_layers


def test_as_trained_shows_the_dense_attention_over_the_training_crop(
    make_napari_viewer, qtbot, checkpoints, tmp_path
):
    """ "as trained": a dense-attention model with the dense maths over a window of its
    training crop (the window box off meanwhile), the maps the core computes on that crop; a
    dense checkpoint that does not record its crop is refused, the layers left as they were."""
    import torch

    from napari_rat._widgets.layer_input import layer_input, snapshot_layer
    from napari_rat.inference.attention_at_point import attention_at_point
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.model import read_checkpoint_info

    config = read_checkpoint_info(checkpoints[0]).model_config
    config = config.model_copy(update={"sga_attention_type": "dense"})
    torch.manual_seed(1)
    model = build_model(config)
    trained = save_checkpoint(
        model, tmp_path / "dense.safetensors", config, extra={"crop_size": [48, 48]}
    )
    viewer = make_napari_viewer()
    layer, widget = _dock_on_nuclei(viewer, trained)  # window 32
    widget.point.value = ", ".join(map(str, layer.data_to_world((40, 30))))
    widget.show_point()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    windowed = np.asarray(viewer.layers["attention block 1"].data).copy()
    assert windowed.shape == (32, 32)

    widget.as_trained.value = True
    assert not widget.window.enabled
    widget.show_point()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "over 2 blocks" in widget.status.value, widget.status.value
    box = np.array([[40 - 24, 30 - 24], [40 + 23, 30 + 23]], float)  # the 48-pixel crop
    source = layer_input(snapshot_layer(layer), 2, "view", [40, 30], 0, box)
    exact = load_model_for_inference(trained, attention="exact")
    expected = attention_at_point(exact, source, layer.data_to_world((40, 30)))
    for block in (0, 1):
        shown = viewer.layers[f"attention block {block}"]
        assert shown.data.shape == (48, 48)
        want = expected.attention[block]
        np.testing.assert_allclose(shown.data, want / want.max(), atol=1e-5)
        np.testing.assert_allclose(shown.data_to_world((0, 0)), layer.data_to_world((16, 6)))
    # dense over the crop: the deepest block's point sees far beyond the windowed one
    assert (np.asarray(viewer.layers["attention block 1"].data) > 1e-3).sum() > (
        windowed > 1e-3
    ).sum()

    bare = save_checkpoint(model, tmp_path / "bare.safetensors", config)  # no crop recorded
    names = [lay.name for lay in viewer.layers]
    widget.model.use_checkpoint(bare)
    widget.show_point()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    status = widget.status.value
    assert status.startswith("error:") and "does not record the crop size" in status, status
    assert [lay.name for lay in viewer.layers] == names
    widget.as_trained.value = False
    assert widget.window.enabled


def _mouse(viewer, press, release=None, button=1):
    """Press ``button`` (1: left) at canvas pixel ``press`` (x, y) and release it at
    ``release``, moving there first: real vispy events through napari's mouse handling."""
    from vispy.app.canvas import MouseEvent

    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    canvas.events.mouse_press(pos=press, modifiers=(), button=button)
    if release is not None:
        canvas.events.mouse_move(
            pos=release,
            modifiers=(),
            button=button,
            press_event=MouseEvent(pos=press, type="mouse_press", button=button),
        )
    canvas.events.mouse_release(pos=release or press, modifiers=(), button=button)


def _centre(viewer):
    height, width = viewer.window._qt_viewer.canvas.size
    return (width / 2, height / 2)


def test_a_click_on_the_canvas_shows_its_attention_a_drag_does_not(
    make_napari_viewer, qtbot, checkpoints
):
    viewer = make_napari_viewer(show=True)
    layer, widget = _dock_on_nuclei(viewer, checkpoints[0])
    target = layer.data_to_world((40, 30))
    viewer.camera.center = tuple(target)
    # A drag (panning) shows nothing.
    x, y = _centre(viewer)
    _mouse(viewer, (x, y), (x + 40, y + 25))
    assert widget.worker is None and "attention block 0" not in viewer.layers
    viewer.camera.center = tuple(target)
    # Nor does a right click.
    _mouse(viewer, _centre(viewer), button=2)
    assert widget.worker is None and "attention block 0" not in viewer.layers
    # A click at the centre of the canvas: the point there.
    _mouse(viewer, _centre(viewer))
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "over 2 blocks" in widget.status.value, widget.status.value
    clicked = [float(v) for v in widget.point.value.split(",")]
    np.testing.assert_allclose(clicked, target, atol=layer.scale[0])
    att = viewer.layers["attention block 0"]
    centre = np.asarray(att.world_to_data(target))
    np.testing.assert_allclose(centre, (16, 16), atol=1)
    # A click while painting labels is the labels layer's.
    labels = viewer.add_labels(np.zeros((80, 70), np.uint8), scale=(0.5, 0.5))
    labels.mode = "paint"
    status = widget.status.value
    _mouse(viewer, _centre(viewer))
    assert widget.worker is None and widget.status.value == status


def test_a_3d_click_picks_the_brightest_voxel_on_its_ray(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    volume = rng.random((8, 40, 40)).astype(np.float32)
    volume[5, 22, 17] = 10.0
    layer = viewer.add_image(volume, name="vol", scale=(2.0, 0.5, 0.5), translate=(4.0, 0, 0))
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.use_checkpoint(checkpoints[1])
    widget.image_layer.value = "vol"
    widget.window.value = 16
    viewer.dims.ndisplay = 3
    target = np.asarray(layer.data_to_world((5, 22, 17)))
    viewer.camera.angles = (0, 20, 80)  # an oblique view: the ray crosses z, y and x
    # The view centred 3 units in front of the bright voxel, on the ray through it.
    viewer.camera.center = tuple(target - 3.0 * np.asarray(viewer.camera.view_direction))
    _mouse(viewer, _centre(viewer))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "over 2 blocks" in widget.status.value, widget.status.value
    picked = [float(v) for v in widget.point.value.split(",")]
    np.testing.assert_allclose(picked, target)
    assert viewer.layers["attention block 0"].data.ndim == 3
    # A ray that misses the volume computes nothing and says so.
    viewer.camera.center = tuple(target + (0.0, 500.0, 500.0))
    _mouse(viewer, _centre(viewer))
    assert widget.worker is None and "missed" in widget.status.value


def test_a_3d_click_in_a_4d_viewer_picks_in_the_current_time_point(
    make_napari_viewer, qtbot, checkpoints
):
    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(1)
    movie = rng.random((4, 8, 40, 40)).astype(np.float32)
    movie[2, 5, 22, 17] = 10.0  # bright at t = 2 only
    movie[1, 2, 22, 17] = 20.0  # brighter on the same ray, at another time point
    placement = {"scale": (2.0, 0.5, 0.5), "translate": (4.0, 0.0, 0.0)}
    layer = viewer.add_image(
        movie, name="movie", scale=(5.0, *placement["scale"]), translate=(100.0, 4.0, 0.0, 0.0)
    )
    # A 3D layer too: fewer axes than the viewer.
    vol = viewer.add_image(movie[2], name="vol", **placement)
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.use_checkpoint(checkpoints[1])
    widget.window.value = 16
    viewer.dims.ndisplay = 3
    viewer.dims.set_current_step(0, 2)
    target = np.asarray(layer.data_to_world((2, 5, 22, 17)))
    viewer.camera.angles = (0, 20, 80)
    viewer.camera.center = tuple(target[1:] - 3.0 * np.asarray(viewer.camera.view_direction))
    for name, expected in (("movie", target), ("vol", target)):
        widget.image_layer.value = name
        _mouse(viewer, _centre(viewer))
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        assert "over 2 blocks" in widget.status.value, (name, widget.status.value)
        picked = [float(v) for v in widget.point.value.split(",")]
        np.testing.assert_allclose(picked, expected, atol=1e-3, err_msg=name)
    assert vol.ndim == 3


def test_3d_volume_point(make_napari_viewer, qtbot, checkpoints):
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((8, 40, 40), (2.0, 0.5, 0.5), seed=1)
    layer = viewer.add_image(img, name="vol", scale=(2.0, 0.5, 0.5), translate=(4.0, 0.0, 0.0))
    widget = AttentionWidget(viewer)
    widget.model.use_checkpoint(checkpoints[1])
    widget.image_layer.value = "vol"
    widget.window.value = 16
    widget.point.value = ", ".join(map(str, layer.data_to_world((4, 20, 20))))
    widget.show_point()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    att = viewer.layers["attention block 1"]
    assert att.data.ndim == 3 and att.data.shape[1:] == (16, 16)
    np.testing.assert_allclose(att.scale, layer.scale)


def test_point_outside_or_malformed_is_reported(make_napari_viewer, checkpoints):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((20, 20), np.float32), name="img")
    widget = AttentionWidget(viewer)
    widget.model.use_checkpoint(checkpoints[0])
    widget.image_layer.value = "img"
    widget.point.value = "500, 500"
    widget.show_point()
    assert widget.worker is None and "outside" in widget.status.value
    widget.point.value = "1, 2, 3"
    widget.show_point()
    assert "needs 2 coordinates" in widget.status.value
    assert [lyr.name for lyr in viewer.layers] == ["img"]


def test_an_rgb_layer_is_refused_with_a_message_from_show_and_from_a_click(
    make_napari_viewer, qtbot, checkpoints
):
    """It aborted napari: the point (2 coordinates) was compared with the RGB data's shape
    (3 numbers) in a Qt slot."""
    viewer = make_napari_viewer(show=True)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    viewer.add_image(rgb, name="photo", rgb=True)
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.use_checkpoint(checkpoints[0])
    widget.image_layer.value = "photo"
    widget.point.value = "20, 25"
    widget.show_button.native.click()
    assert widget.worker is None
    assert "'photo' is RGB" in widget.status.value and "Split RGB" in widget.status.value
    widget.point.value = ""
    _mouse(viewer, _centre(viewer))
    assert widget.worker is None and "'photo' is RGB" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["photo"]


def test_maps_update_in_place_through_napari_s_plugin_entry_point(
    make_napari_viewer, qtbot, checkpoints, dock_checkpoints
):
    """Opened from the plugin menu, the dock holds a ``PublicOnlyProxy`` of the viewer: every
    click added four new layers ("attention block 0 [1]", ...). And a model with fewer blocks
    leaves no maps of the previous model's extra blocks behind, removing them one per
    event-loop turn in a shown viewer (two in one turn crash napari's next draw)."""
    viewer = make_napari_viewer(show=True)
    img, _ = synthetic_nuclei((80, 70), (0.5, 0.5), seed=0)
    layer = viewer.add_image(img, name="img", scale=(0.5, 0.5))
    _, widget = viewer.window.add_plugin_dock_widget("napari-rat", "RAT attention maps")
    assert type(widget.viewer).__name__ == "PublicOnlyProxy"
    widget.model.use_checkpoint(checkpoints[0])
    widget.image_layer.value = "img"
    widget.window.value = 16
    maps = ["attention block 0", "grouping block 0", "attention block 1", "grouping block 1"]
    shown = {}
    for pixel in [(40, 30), (20, 20), (60, 50)]:
        widget.point.value = ", ".join(map(str, layer.data_to_world(pixel)))
        widget.show_button.native.click()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        assert "over 2 blocks" in widget.status.value, widget.status.value
        assert sorted(lyr.name for lyr in viewer.layers) == sorted(["img", *maps])
        for name in maps:
            shown.setdefault(name, viewer.layers[name])
            assert viewer.layers[name] is shown[name]  # the same layer, new data
        np.testing.assert_allclose(
            shown["attention block 0"].data_to_world((0, 0)),
            layer.data_to_world(np.asarray(pixel) - 8),
        )
    widget.model.use_checkpoint(dock_checkpoints["2d-1"])
    widget.show_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "over 1 blocks" in widget.status.value, widget.status.value
    assert sorted(lyr.name for lyr in viewer.layers) == sorted(["img", *maps[:2]])


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("abc", "'abc' in the point is not a number; give 2 numbers, e.g. '12.5, 30'"),
        ("3, 4x", "'4x' in the point is not a number"),
        ("", "type a point (2 numbers"),
        ("1 2 3", "the point needs 2 coordinates, got 3"),
    ],
)
def test_a_typed_point_that_is_not_numbers_is_explained(
    make_napari_viewer, checkpoints, typed, expected
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((20, 20), np.float32), name="img")
    widget = AttentionWidget(viewer)
    widget.model.use_checkpoint(checkpoints[0])
    widget.image_layer.value = "img"
    widget.point.value = typed
    widget.show_button.native.click()
    assert widget.worker is None
    assert expected in widget.status.value and "could not convert" not in widget.status.value


def test_the_bundled_choice_shows_the_3d_starter_s_attention_on_the_3d_sample(
    make_napari_viewer, qtbot
):
    """File > Open Sample > nuclei 3D, then the dock's bundled model: the 3D starter's maps
    (3D, not one plane's), placed on the anisotropic volume's grid."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-rat", "nuclei_3d")
    layer = viewer.layers["nuclei 3D"]
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = "nuclei 3D"
    widget.window.value = 24
    widget.point.value = ", ".join(map(str, layer.data_to_world((15, 30, 28))))
    widget.show_point()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert widget.status.value == "attention of the point over 2 blocks", widget.status.value
    att = viewer.layers["attention block 0"]
    assert att.data.ndim == 3 and att.data.shape[0] > 1 and att.data.shape[1:] == (24, 24)
    np.testing.assert_allclose(att.scale, (2.0, 1.0, 1.0))
    assert att.data.max() > 0
