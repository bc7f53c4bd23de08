import numpy as np
import pytest

from napari_rat.inference.instances import (
    boundary_from_instances,
    instances_from_logits,
    instances_from_probabilities,
    min_instance_pixels,
)
from napari_rat.train.metrics import segmentation_metrics


def _two_touching():
    labels = np.zeros((12, 20), dtype=np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2
    return labels


def test_boundary_is_inner_contour_and_separates_touching():
    labels = _two_touching()
    b = boundary_from_instances(labels)
    assert b[2, 5] and b[5, 9] and b[5, 10]
    assert not b[5, 5] and not b[0, 0]
    inst = instances_from_probabilities(labels > 0, b)
    assert inst.max() == 2
    assert segmentation_metrics(inst, labels)["ap50"] == 1.0


def test_instances_from_logits_and_orphans():
    labels = _two_touching()
    fg = (labels > 0).astype(np.float32)
    b = boundary_from_instances(labels).astype(np.float32)
    logits = np.stack([-(fg * 8 - 4), fg * 8 - 4, b * 8 - 4])
    inst = instances_from_logits(logits, 2)
    assert inst.max() == 2
    # a foreground blob that is all boundary becomes an instance of its own
    tiny = np.zeros((5, 5), bool)
    tiny[2, 2] = True
    assert instances_from_probabilities(tiny, tiny).max() == 1


def test_instances_3d_anisotropic():
    labels = np.zeros((6, 10, 10), dtype=np.int32)
    labels[1:5, 1:5, 1:5] = 1
    labels[1:5, 5:9, 1:5] = 2
    inst = instances_from_probabilities(
        labels > 0, boundary_from_instances(labels), spacing=[3.0, 1.0, 1.0]
    )
    assert segmentation_metrics(inst, labels)["tp"] == 2


def test_metrics_counts_and_ignore():
    truth = _two_touching()
    pred = truth.copy()
    pred[pred == 2] = 1  # merged
    m = segmentation_metrics(pred, truth)
    assert m["dice"] == 1.0 and m["tp"] == 0 and m["fp"] == 1 and m["fn"] == 2
    truth_ignored = truth.copy()
    truth_ignored[:, 10:] = -1
    assert segmentation_metrics(pred, truth_ignored)["tp"] == 1


def test_min_instance_size_is_physical_and_drops_only_small_objects():
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[2:12, 2:12] = 1  # 100 px
    labels[15:17, 20:23] = 2  # 6 px
    fg = labels > 0
    kept = instances_from_probabilities(fg, None, min_instance_size=10.0)
    assert kept.max() == 1 and (kept > 0).sum() == 100
    # The same objects at a coarser physical spacing are larger: 6 px x 4 units^2 = 24 > 10.
    coarse = instances_from_probabilities(fg, None, spacing=[2.0, 2.0], min_instance_size=10.0)
    assert coarse.max() == 2
    assert instances_from_probabilities(fg, None).max() == 2  # default keeps everything
    with pytest.raises(ValueError, match="axes"):
        min_instance_pixels(10.0, [1.0, 1.0, 1.0], labels.ndim)


def _ball(shape, spacing, centre, radius):
    grid = np.indices(shape).astype(float)
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing, strict=True))
    return dist2 <= radius**2


def test_seeds_reach_the_next_plane_however_far_apart_the_planes_lie():
    # Two nuclei of radius 7 on planes 4 units apart (4 planes each, 3.5 times the lateral
    # pixel): their contours cover the top and bottom planes whole, so the cores are the middle
    # planes, and the seeds must cross one plane to take the caps back.
    shape, spacing = (8, 24, 40), (4.0, 1.0, 1.0)
    labels = np.zeros(shape, np.int32)
    labels[_ball(shape, spacing, (3.5, 12, 10), 7.5)] = 1
    labels[_ball(shape, spacing, (3.5, 12, 28), 7.5)] = 2
    boundary = boundary_from_instances(labels)
    planes = np.flatnonzero((labels > 0).any(axis=(1, 2)))
    assert len(planes) == 4
    for z in (planes[0], planes[-1]):
        assert boundary[z][labels[z] > 0].all()
    inst = instances_from_probabilities(labels > 0, boundary, spacing=spacing, radius=3)
    assert inst.max() == 2
    assert segmentation_metrics(inst, labels)["tp"] == 2
    # each instance is a whole nucleus: no cap left over as an instance of its own
    inside = labels > 0
    assert len(set(zip(inst[inside].tolist(), labels[inside].tolist(), strict=True))) == 2


def test_specks_of_the_boundary_map_seed_no_instance():
    # A nucleus with a 3-pixel band, and four one-pixel holes in the band (a boundary map's
    # specks): with a minimum instance size they seed nothing and the nucleus comes back
    # whole; without one (every core seeds) they cut fragments off it.
    labels = _ball((40, 40), (1.0, 1.0), (20, 20), 12).astype(np.int32)
    boundary = boundary_from_instances(labels, width=3)
    for y, x in ((9, 20), (31, 20), (20, 9), (20, 31)):
        assert boundary[y, x] and labels[y, x]
        boundary[y, x] = False
    whole = instances_from_probabilities(labels > 0, boundary, radius=5, min_instance_size=20)
    assert whole.max() == 1 and np.array_equal(whole > 0, labels > 0)
    fragments = instances_from_probabilities(labels > 0, boundary, radius=5)
    assert fragments.max() == 5
    # the fragments are smaller than the minimum size: dropping them (the former step) would
    # have cut pixels out of the nucleus
    sizes = np.bincount(fragments.ravel())[1:]
    assert sorted(sizes)[:4] == sorted(sizes[sizes < 20]) and (sizes < 20).sum() == 4
