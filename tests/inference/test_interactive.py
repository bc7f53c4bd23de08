"""The interactive core on real features: scribbles, clicks and commit, 2D and anisotropic 3D."""

import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_rat.config import ModelConfig
from napari_rat.inference import PredictionCancelled
from napari_rat.inference.commit import add_instances, commit_object, region_box
from napari_rat.inference.features import features_for
from napari_rat.inference.interactive import InteractiveSegmenter
from napari_rat.inference.model_loading import load_model_for_inference
from napari_rat.inference.sources import PyramidInput
from napari_rat.inference.tiled_predict import PredictOptions
from napari_rat.model import build_model
from napari_rat.synthetic import synthetic_nuclei
from napari_rat.train.metrics import foreground_scores


def _source(img, spacing):
    dims = len(spacing)
    return PyramidInput(
        img[None], spacing, (0.0,) * dims, ("z", "y", "x")[-dims:], ("micrometer",) * dims
    )


@pytest.fixture(scope="module")
def scene2d():
    """The starter model's features of generated nuclei (2D, 1 um pixels)."""
    img, truth = synthetic_nuclei((96, 96), (1.0, 1.0), radius=5.0, seed=3)
    model = load_model_for_inference("starter")
    maps = features_for(model, _source(img, (1.0, 1.0)), use_cache=False)
    return maps, truth.astype(np.int32)


@pytest.fixture(scope="module")
def scene3d():
    """A small random 3D model's features of anisotropic generated nuclei (2 x 0.5 x 0.5)."""
    spacing = (2.0, 0.5, 0.5)
    img, truth = synthetic_nuclei((8, 48, 48), spacing, radius=3.0, seed=4)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            spatial_dims=3,
            feature_dims=16,
            num_heads=2,
            num_blocks=2,
            sga_kernel_size=[1, 3, 3],
            stride=[1, 2, 2],
            iters=1,
            head={"decoder_dims": 8},
        )
    ).eval()
    options = PredictOptions(tile=(8, 32, 32), halo=(0, 8, 8))
    maps = features_for(model, _source(img, spacing), options=options, use_cache=False)
    return maps, truth.astype(np.int32)


def _strokes(truth: np.ndarray, n_objects: int, seed: int = 0) -> np.ndarray:
    """Scripted scribbles: a line through the middle of some objects (2), and lines in the
    background far from any object (1); never the masks themselves."""
    rng = np.random.default_rng(seed)
    scribbles = np.zeros(truth.shape, np.uint8)
    ids = [i for i in np.unique(truth) if i > 0]
    for i in rng.choice(ids, size=min(n_objects, len(ids)), replace=False):
        inner = ndimage.binary_erosion(truth == i, iterations=1)
        if not inner.any():
            continue
        coords = np.argwhere(inner)
        middle = coords[len(coords) // 2]
        line = coords[(coords[:, :-1] == middle[:-1]).all(axis=1)]  # one row through it
        scribbles[tuple(line.T)] = 2
    far = ndimage.distance_transform_edt(truth == 0) > 3
    # starts of 10-pixel runs along the last axis that stay far from every object
    starts = np.argwhere(ndimage.minimum_filter1d(far.astype(np.uint8), 10, axis=-1, origin=-5))
    starts = starts[starts[:, -1] <= truth.shape[-1] - 10]
    for s in starts[rng.choice(len(starts), size=min(4, len(starts)), replace=False)]:
        scribbles[(*s[:-1], slice(s[-1], s[-1] + 10))] = 1
    return scribbles


def test_scribbles_segment_the_image_2d(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    scribbles = _strokes(truth, 4)
    before = scribbles.copy()
    result = seg.predict_scribbles(scribbles)
    np.testing.assert_array_equal(scribbles, before)  # the user's strokes are left alone
    assert result.classes == [1, 2]
    assert result.probabilities.shape == (2, 96, 96)
    assert set(np.unique(result.semantic)) <= {1, 2}
    dice = foreground_scores(result.labels, truth)["dice"]
    assert dice > 0.85, dice
    # instances: more than one object, numbered from 1
    assert result.labels.max() > 3 and result.labels.min() == 0


def test_a_view_box_is_predicted_like_the_whole_image(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    scribbles = _strokes(truth, 4)
    whole = seg.predict_scribbles(scribbles)
    view = seg.predict_scribbles(scribbles, (slice(20, 70), slice(10, 60)))
    assert view.region == (slice(20, 70), slice(10, 60))
    assert view.semantic.shape == (50, 50)
    # the same classifier (same scribbles, same seed) gives the same pixels
    np.testing.assert_array_equal(view.semantic, whole.semantic[20:70, 10:60])


def test_more_classes_are_kept_apart(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    scribbles = _strokes(truth, 4)
    ids = [i for i in np.unique(truth) if i > 0]
    inner = ndimage.binary_erosion(truth == ids[-1], iterations=1)
    scribbles[inner & (scribbles == 0)] = 3
    result = seg.predict_scribbles(scribbles)
    assert result.classes == [1, 2, 3]
    assert result.probabilities.shape[0] == 3
    assert 3 in np.unique(result.semantic)


def test_mlp_head_runs_and_warm_starts(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps, classifier="mlp")
    scribbles = _strokes(truth, 4)
    first = seg.predict_scribbles(scribbles)
    head = seg._head
    second = seg.predict_scribbles(_strokes(truth, 6, seed=1) | scribbles)
    assert seg._head is head  # warm-started, not rebuilt
    assert foreground_scores(first.labels, truth)["dice"] > 0.7
    assert second.probabilities.shape == (2, 96, 96)


def test_a_cancelled_scribble_job_raises_and_a_new_one_runs(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    scribbles = _strokes(truth, 4)
    job = seg.scribble_job(scribbles)
    job.cancel()
    with pytest.raises(PredictionCancelled):
        job.run()
    # cancelled from another thread while running: it stops, or had already finished
    job = seg.scribble_job(scribbles)
    outcome = []

    def run():
        try:
            outcome.append(job.run())
        except PredictionCancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    job.cancel()
    worker.join(60)
    assert not worker.is_alive() and len(outcome) == 1
    assert seg.predict_scribbles(scribbles).labels.shape == truth.shape


@pytest.mark.parametrize(
    ("values", "message"), [((0,), "paint background"), ((1,), "paint background"), ((2,), "(1)")]
)
def test_scribbles_without_background_and_a_class_are_refused(scene2d, values, message):
    maps, _ = scene2d
    scribbles = np.zeros(maps.shape, np.uint8)
    for k, v in enumerate(values):
        scribbles[k, :10] = v
    with pytest.raises(ValueError, match=message):
        InteractiveSegmenter(maps).predict_scribbles(scribbles)


def test_scribbles_of_another_shape_or_a_bad_region_are_refused(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    with pytest.raises(ValueError, match="the image's size"):
        seg.predict_scribbles(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="one slice or index per axis"):
        seg.predict_scribbles(_strokes(truth, 2), (slice(0, 5),))
    assert region_box((4, 5), (2, slice(None))) == (slice(2, 3), slice(0, 5))


def test_scribbles_in_anisotropic_3d_predict_a_box_and_a_slice(scene3d):
    maps, truth = scene3d
    seg = InteractiveSegmenter(maps)
    scribbles = _strokes(truth, 6)
    box = (slice(2, 8), slice(8, 40), slice(0, 32))
    result = seg.predict_scribbles(scribbles, box)
    assert result.semantic.shape == (6, 32, 32) and result.labels.shape == (6, 32, 32)
    dice = foreground_scores(result.labels, truth[box])["dice"]
    # a random model's features: better than calling everything foreground, not more
    trivial = foreground_scores(np.ones_like(truth[box]), truth[box])["dice"]
    assert dice > trivial + 0.05, (dice, trivial)
    plane = seg.predict_scribbles(scribbles, (4, slice(None), slice(None)))
    assert plane.semantic.shape == (1, 48, 48)


def _model_instance_click(maps, truth):
    """A pixel deep inside a model instance that covers one true object well."""
    labels = np.asarray(maps.labels)
    for i in np.unique(truth)[1:]:
        obj = truth == i
        ids, counts = np.unique(labels[obj], return_counts=True)
        best = ids[np.argmax(counts)]
        if best == 0:
            continue
        inst = labels == best
        iou = (inst & obj).sum() / (inst | obj).sum()
        if iou > 0.8:
            d = ndimage.distance_transform_edt(inst)
            return np.unravel_index(np.argmax(d), d.shape), int(best)
    pytest.fail("no model instance matches a true object")


def test_a_positive_click_gives_the_model_instance(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    point, instance = _model_instance_click(maps, truth)
    result = seg.click_object([point])
    assert result.source == "model" and result.instance == instance
    np.testing.assert_array_equal(result.mask, np.asarray(maps.labels) == instance)


def test_a_click_where_the_model_found_nothing_grows_an_object(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    labels = np.asarray(maps.labels)
    # a true object the model missed is simulated by clicking on true foreground the model
    # left out, or else on background: the grown region holds the click and stays local
    missed = (truth > 0) & (labels == 0)
    point = tuple(np.argwhere(missed)[0]) if missed.any() else (0, 0)
    result = seg.click_object([point], grow_radius=10.0)
    assert result.source == "grown" and result.mask[point]
    ys, xs = np.nonzero(result.mask)
    assert ys.max() - ys.min() <= 21 and xs.max() - xs.min() <= 21


def test_a_negative_click_splits_the_object(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    point, instance = _model_instance_click(maps, truth)
    whole = seg.click_object([point]).mask
    coords = np.argwhere(whole)
    far = tuple(coords[np.argmax(((coords - np.array(point)) ** 2).sum(1))])
    result = seg.click_object([point], [far])
    assert result.mask[point] and not result.mask[far]
    assert 0 < result.mask.sum() < whole.sum()
    assert not (result.mask & ~whole).any()  # a split never adds pixels


def test_clicks_in_3d_and_clicks_outside_the_image(scene3d):
    maps, truth = scene3d
    seg = InteractiveSegmenter(maps)
    obj = truth == np.unique(truth)[1]
    d = ndimage.distance_transform_edt(obj, sampling=(2.0, 0.5, 0.5))
    point = np.unravel_index(np.argmax(d), d.shape)
    result = seg.click_object([point])
    assert result.mask.shape == truth.shape and result.mask[point]
    with pytest.raises(ValueError, match="outside the image"):
        seg.click_object([(8, 0, 0)])
    with pytest.raises(ValueError, match="one per axis"):
        seg.click_object([(1, 2)])
    with pytest.raises(ValueError, match="at least one positive"):
        seg.click_object([])


def test_commit_gives_new_ids_and_keeps_committed_objects():
    labels = np.zeros((10, 10), np.int32)
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    assert commit_object(labels, a) == 1
    b = np.zeros((10, 10), bool)
    b[4:8, 4:8] = True
    assert commit_object(labels, b) == 2
    assert (labels == 1).sum() == 16  # b did not take a's pixels
    assert (labels == 2).sum() == 16 - 4
    c = np.zeros((10, 10), bool)
    c[5:7, 5:7] = True
    assert commit_object(labels, c, overwrite=True) == 3
    assert (labels == 3).sum() == 4 and (labels == 1).sum() == 15
    # a mask for a region only
    assert commit_object(labels, np.ones((2, 2), bool), region=(slice(0, 2), slice(8, 10))) == 4
    assert (labels[0:2, 8:10] == 4).all()


@pytest.mark.parametrize(
    ("mask", "kwargs", "message"),
    [
        (np.ones((3, 3), bool), {}, "give a mask of that shape"),
        (np.zeros((10, 10), bool), {}, "is empty"),
        ("under", {}, "wholly under committed objects"),
        (np.ones((10, 10), bool), {"label": 300}, "convert the labels to int32"),
    ],
)
def test_bad_commits_are_refused_and_leave_the_labels_alone(mask, kwargs, message):
    labels = np.zeros((10, 10), np.uint8)
    labels[:5] = 1
    if isinstance(mask, str):
        mask = labels == 1
    before = labels.copy()
    with pytest.raises(ValueError, match=message):
        commit_object(labels, mask, **kwargs)
    np.testing.assert_array_equal(labels, before)


def test_added_instances_fill_around_committed_objects_under_new_ids():
    labels = np.zeros((10, 10), np.int32)
    labels[0:3, 0:3] = 5  # committed
    instances = np.zeros((10, 10), np.int32)
    instances[1:4, 1:4] = 7  # overlaps the committed object: only its free pixels are added
    instances[6:9, 6:9] = 2
    instances[0:2, 0:2] = 9  # wholly under the committed object: adds nothing
    assert add_instances(labels, instances) == 2
    assert (labels[0:3, 0:3] == 5).all()  # committed pixels and id kept
    assert set(np.unique(labels[1:4, 1:4])) == {5, 7}  # 7 -> 7 (after 2 -> 6)
    assert (labels[6:9, 6:9] == 6).all()
    assert (labels == 7).sum() == 9 - 4
    # a region only, and nothing to add
    sub = np.zeros((2, 2), np.int32)
    assert add_instances(labels, sub, region=(slice(8, 10), slice(0, 2))) == 0
    sub[:] = 3
    assert add_instances(labels, sub, region=(slice(8, 10), slice(0, 2))) == 1
    assert (labels[8:10, 0:2] == 8).all()


@pytest.mark.parametrize(
    ("labels", "instances", "message"),
    [
        (np.zeros((4, 4), np.int32), np.ones((3, 3), np.int32), "give instances of that shape"),
        (np.zeros((4, 4), np.float32), np.ones((4, 4), np.int32), "integer array"),
        (np.zeros((4, 4), np.int32), np.ones((4, 4), np.float32), "integer array"),
        (np.zeros((20, 20), np.uint8), np.arange(400).reshape(20, 20), "convert the labels"),
    ],
)
def test_bad_instances_are_refused_and_leave_the_labels_alone(labels, instances, message):
    before = labels.copy()
    with pytest.raises(ValueError, match=message):
        add_instances(labels, instances)
    np.testing.assert_array_equal(labels, before)


def test_a_new_view_of_the_same_strokes_reuses_the_fit_and_a_new_stroke_refits(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    scribbles = _strokes(truth, 4)
    seg.predict_scribbles(scribbles, (slice(0, 48), slice(0, 48)))
    fitted = seg._fitted[1]
    seg.predict_scribbles(scribbles, (slice(48, 96), slice(48, 96)))
    assert seg._fitted[1] is fitted  # panning costs no fit
    scribbles[0, :5] = 1
    seg.predict_scribbles(scribbles, (slice(48, 96), slice(48, 96)))
    assert seg._fitted[1] is not fitted


def test_features_too_large_for_the_memory_are_refused_with_the_way_out(scene2d):
    maps, _ = scene2d
    with pytest.raises(ValueError, match="compute them for a region"):
        InteractiveSegmenter(maps, available_memory=1_000_000)
    InteractiveSegmenter(maps, available_memory=10**10)  # fits


def test_a_grown_object_leaves_the_model_objects_and_its_sure_background_alone(scene2d):
    maps, truth = scene2d
    seg = InteractiveSegmenter(maps)
    labels = np.asarray(maps.labels)
    fg = 1.0 - np.asarray(maps.probabilities[0], np.float32)
    # clicks on pixels the model left out, next to its objects
    near = (ndimage.distance_transform_edt(labels == 0) <= 3) & (labels == 0)
    for point in map(tuple, np.argwhere(near)[::97][:5]):
        mask = seg.click_object([point]).mask
        assert mask[point]
        assert not (mask & (labels > 0)).any()  # never a pixel of a model instance
        assert (fg[mask] >= 0.5 * fg[point] - 1e-3).all()
