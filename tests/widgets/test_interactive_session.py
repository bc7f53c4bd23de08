"""What the interactive dock's workers compute, without Qt: the region a scribble update
predicts, and the mapping between the features and the image layer."""

import math
from types import SimpleNamespace

import numpy as np

from napari_rat._widgets.interactive_session import MAX_3D_BOX_VOXELS, Session, prediction_box


def _session(layer_shape, where, sliced=()):
    shape = tuple(w.stop - w.start for a, w in enumerate(where) if a not in sliced)
    return Session(
        model=None,
        checkpoint="starter",
        device="cpu",
        source=SimpleNamespace(sliced_axes=tuple(sliced)),
        maps=None,
        segmenter=SimpleNamespace(shape=shape),
        where=tuple(where),
        layer_shape=tuple(layer_shape),
        placement={"scale": (1.0,) * len(layer_shape), "translate": (0.0,) * len(layer_shape)},
        image_name="img",
        seconds=0.0,
    )


def test_a_2d_view_predicts_what_the_canvas_shows_and_the_current_slice_of_a_volume():
    session = _session((20, 300, 400), [slice(0, 20), slice(0, 300), slice(0, 400)])
    view = np.array([[0, -10.4, 50.2], [19, 120.6, 999.0]])  # partly off the image
    box = prediction_box(session, view, [1, 2], (7.2, 0, 0), 2, None)
    assert box == (slice(7, 8), slice(0, 122), slice(50, 400))
    # a 2D image: the view only
    flat = _session((300, 400), [slice(0, 300), slice(0, 400)])
    assert prediction_box(flat, view[:, 1:], [0, 1], (0, 0), 2, None) == (
        slice(0, 122),
        slice(50, 400),
    )


def test_a_3d_view_predicts_a_bounded_box_around_the_camera_centre():
    small = _session((16, 64, 64), [slice(0, 16), slice(0, 64), slice(0, 64)])
    whole = prediction_box(small, None, [0, 1, 2], (0, 0, 0), 3, (8, 30, 30))
    assert whole == (slice(0, 16), slice(0, 64), slice(0, 64))
    big = _session((128, 512, 512), [slice(0, 128), slice(0, 512), slice(0, 512)])
    box = prediction_box(big, None, [0, 1, 2], (0, 0, 0), 3, (64, 500, 100))
    sizes = [b.stop - b.start for b in box]
    assert math.prod(sizes) <= MAX_3D_BOX_VOXELS
    assert math.prod(sizes) > 0.9 * MAX_3D_BOX_VOXELS
    assert sizes[1] == sizes[2] and abs(sizes[1] / sizes[0] - 4) < 0.1  # shrunk alike
    assert box[1].stop == 512  # clipped at the edge, not shrunk
    assert box[2].start <= 100 < box[2].stop and box[0].start <= 64 < box[0].stop


def test_a_plane_session_maps_clicks_boxes_and_results_to_its_plane():
    session = _session((5, 30, 40), [slice(2, 3), slice(0, 30), slice(0, 40)], sliced=(0,))
    assert session.shape == (30, 40) and session.session_axes == [1, 2]
    points = np.array([[2.0, 3.0, 4.0], [1.0, 5.0, 6.0], [2.2, 7.0, 8.0]])
    positive, negative, elsewhere = session.clicks(points, ["positive", "positive", "negative"])
    assert positive == [[3.0, 4.0]] and negative == [[7.0, 8.0]] and elsewhere == 1
    assert session.layer_box((slice(1, 4), slice(5, 9))) == (slice(2, 3), slice(1, 4), slice(5, 9))
    out = session.to_layer(np.ones((3, 4), np.uint8), (slice(1, 4), slice(5, 9)))
    assert out.shape == (5, 30, 40) and out.sum() == 12 and out[2, 1:4, 5:9].all()
    full = np.arange(5 * 30 * 40).reshape(5, 30, 40)
    np.testing.assert_array_equal(session.cut(full), full[2])
