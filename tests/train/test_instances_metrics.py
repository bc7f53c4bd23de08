import numpy as np
import pytest

from napari_rat.inference.instances import (
    boundary_from_instances,
    drop_small_instances,
    instances_from_logits,
    instances_from_probabilities,
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
        drop_small_instances(labels, 10.0, spacing=[1.0, 1.0, 1.0])
