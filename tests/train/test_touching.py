"""Touching nuclei: generated ones (``synthetic_touching``), their contact targets, and the
boundary loss weighted there (``training.contact_weight``)."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_rat.inference.instances import boundary_from_instances, contact_pixels
from napari_rat.synthetic import synthetic_nuclei
from napari_rat.train.datasets import build_data, collate, targets_from_labels
from napari_rat.train.losses import segmentation_loss


def test_contact_pixels_are_the_boundary_between_instances_only():
    labels = np.zeros((10, 24), dtype=np.int32)
    labels[2:8, 2:8] = 1
    labels[2:8, 8:14] = 2  # touches 1
    labels[2:8, 17:22] = 3  # apart
    labels[0, 0] = -1
    contact = contact_pixels(labels)
    assert contact[4, 7] and contact[4, 8]  # both sides of the contact face
    assert not contact[4, 6] and not contact[2, 4]  # inside, or against background
    assert not contact[:, 15:].any()  # the lone nucleus has none
    assert not (contact & ~boundary_from_instances(labels)).any()


def test_touching_nuclei_share_faces_and_leave_the_default_unchanged():
    default = synthetic_nuclei((96, 96), radius=6.0, seed=3)
    zero = synthetic_nuclei((96, 96), radius=6.0, seed=3, touching=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(default, zero, strict=True))
    assert not contact_pixels(default[1]).any()  # apart: a one-pixel gap

    image, labels = synthetic_nuclei((96, 96), radius=6.0, seed=3, touching=0.6)
    contact = contact_pixels(labels)
    assert contact.any()
    # Every nucleus inside the image is whole enough to be one: no sliver instances.
    edge = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel()]))
    sizes = np.bincount(labels.ravel())
    inner = np.setdiff1d(np.unique(labels), np.r_[0, edge])
    assert len(inner) > 10 and sizes[inner].min() > 0.4 * np.pi * (0.7 * 6.0) ** 2
    # The seam is dimmer than the nuclei's inside, brighter than the background.
    inside = (labels > 0) & ~boundary_from_instances(labels)
    assert image[contact].mean() < image[inside].mean()
    assert image[contact].mean() > image[labels == 0].mean()
    again = synthetic_nuclei((96, 96), radius=6.0, seed=3, touching=0.6)
    assert np.array_equal(again[1], labels)


def test_touching_share_is_checked():
    with pytest.raises(ValueError, match="touching is a share"):
        synthetic_nuclei((32, 32), touching=1.5)


def test_targets_and_batches_carry_the_contacts(tiny):
    labels = np.zeros((8, 12), dtype=np.int32)
    labels[1:7, 1:6], labels[1:7, 6:11] = 1, 2
    painted = np.full(labels.shape, -1)
    painted[:, 6:] = 1  # a scribble over nucleus 2 says nothing of its boundary
    classes, boundary, contact = targets_from_labels(labels, painted)
    assert contact[3, 5] and not contact[3, 6]
    assert boundary[3, 6] == -1 and classes[3, 6] == 1

    config = tiny(data={"synthetic_touching": 0.8, "synthetic_radius": 4.0})
    batch = collate([build_data(config).train[i] for i in range(2)])
    contact, boundary = batch["contact"][0], batch["boundary"][0]
    assert contact.dtype == torch.bool and contact.shape == boundary.shape
    assert contact.any() and bool((boundary[contact] == 1).all())


def test_contact_weight_scales_the_boundary_loss_where_instances_touch():
    labels = np.zeros((1, 8, 12), dtype=np.int32)
    labels[0, 1:7, 1:6], labels[0, 1:7, 6:11] = 1, 2
    classes, boundary, contact = (torch.from_numpy(a) for a in targets_from_labels(labels))
    logits = torch.zeros(1, 3, 8, 12)
    logits[:, 1] = torch.from_numpy(labels > 0).float() * 4  # classes right
    logits[:, 2] = torch.from_numpy(boundary_from_instances(labels)).float() * 8 - 4
    logits[:, 2][contact] = -4.0  # the boundary missed exactly where the two touch

    def bce(weight):
        return segmentation_loss(
            logits, classes, boundary, 2, contact=contact, contact_weight=weight
        )[1]["boundary_bce"]

    plain, weighted = bce(1.0), bce(5.0)
    assert weighted > 2 * plain
    # Where the boundary is right at the contacts, the weight changes little.
    logits[:, 2][contact] = 4.0
    assert bce(5.0) < plain / 3


def test_a_wider_boundary_band_stays_inside_each_instance_and_splits_it_back():
    from napari_rat.inference.instances import instances_from_probabilities
    from napari_rat.train.metrics import segmentation_metrics

    labels = np.zeros((14, 26), dtype=np.int32)
    labels[2:12, 2:12], labels[2:12, 12:24] = 1, 2
    thin, wide = boundary_from_instances(labels), boundary_from_instances(labels, 2)
    assert not (thin & ~wide).any() and wide.sum() > 1.5 * thin.sum()
    assert not (wide & (labels == 0)).any()
    assert wide[6, 10] and wide[6, 12 + 1] and not wide[6, 9]  # two pixels deep, no more
    contact = contact_pixels(labels, 2)
    assert contact[6, 10:14].all() and not contact[6, 9] and not contact[6, 14]
    # The instance algorithm grows the cores back over the band: both nuclei, whole.
    inst = instances_from_probabilities(labels > 0, wide)
    assert segmentation_metrics(inst, labels)["ap50"] == 1.0
    assert np.array_equal(inst > 0, labels > 0)
    with pytest.raises(ValueError, match="1 to 3 pixels"):
        boundary_from_instances(labels, 4)


def test_the_head_s_boundary_width_reaches_the_training_targets(tiny):
    thin = build_data(tiny()).train[0]["boundary"][0]
    wide = build_data(tiny(model={"head": {"decoder_dims": 4, "boundary_width": 2}}))
    wide = wide.train[0]["boundary"][0]
    assert bool(((wide == 1) | (thin != 1)).all())  # the thin band lies in the wide one
    assert (wide == 1).sum() > (thin == 1).sum()


def test_the_band_never_eats_a_small_object_s_core():
    """A nucleus seen at a coarse spacing is a few pixels across: its band narrows to at most
    half its depth, so it keeps a core (a seed) and is not left all boundary."""
    labels = np.zeros((16, 30), dtype=np.int32)
    labels[2:14, 2:14] = 1  # 12 px: depth 6, the full 3-pixel band
    labels[4:8, 18:22], labels[4:8, 22:26] = 2, 3  # 4 px, touching: depth 2, a 1-pixel band
    band = boundary_from_instances(labels, 3)
    assert band[7, 4] and not band[7, 5]  # three deep in the large one
    for small in (2, 3):
        inside = labels == small
        assert (inside & ~band).any()  # a core is left
        np.testing.assert_array_equal(band & inside, boundary_from_instances(labels) & inside)
    contact = contact_pixels(labels, 3)
    assert contact[5, 21] and contact[5, 22] and not contact[5, 20]


def _reference_band(labels, width, spacing):
    """The band by its definition, with a shortest-path solver: instance pixels whose cheapest
    path of face steps (a step costs its axis' spacing over the finest one) from their
    instance's contour, inside the instance, is at most the capped width minus one; the cap
    is half the depth (the cheapest path to a pixel off the instance's core, plus one)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    costs = np.asarray(spacing, float) / min(spacing)
    shape, n = labels.shape, labels.size
    index = np.arange(n).reshape(shape)
    inside = labels > 0
    contour = boundary_from_instances(labels)
    rows, cols, weights = [], [], []
    for axis, cost in enumerate(costs):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        rows += [index[tuple(a)].ravel(), index[tuple(b)].ravel()]
        cols += [index[tuple(b)].ravel(), index[tuple(a)].ravel()]
        weights += [np.full(index[tuple(a)].size, cost)] * 2
    graph = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), (n, n)
    ).tocsr()
    off_core = np.flatnonzero(~(inside & ~contour))
    depth = dijkstra(graph, indices=off_core, min_only=True).reshape(shape) + 1
    band = np.zeros(shape, bool)
    for label in np.unique(labels[inside]):
        own = labels == label
        cap = np.clip(np.floor(depth[own].max() / 2), 1, width)
        keep = own.ravel()
        sub = graph[keep][:, keep]
        seeds = np.flatnonzero(contour.ravel()[keep])
        dist = dijkstra(sub, indices=seeds, min_only=True)
        band[own] = (dist <= cap - 1).reshape(-1)
    return band


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.6, 1.0, 1.0), (4.0, 1.0, 1.0)]
)
def test_the_band_is_measured_in_physical_units_on_anisotropic_crops(spacing):
    """On a volume whose z planes lie farther apart than its pixels, the band grows along z
    only as far as its width reaches physically: 2 pixels wide stays one plane thick when
    planes lie 1.6, 2 or 4 pixels apart (the plain band stepped a plane in), and it matches
    the definition (a shortest-path reference) at every spacing."""
    _, labels = synthetic_nuclei((12, 32, 32), radius=7, spacing=spacing, seed=1, touching=0.5)[:2]
    assert labels.max() > 2
    for width in (2, 3):
        band = boundary_from_instances(labels, width, spacing)
        np.testing.assert_array_equal(band, _reference_band(labels, width, spacing))
    band = boundary_from_instances(labels, 2, spacing)
    plain = boundary_from_instances(labels, 2)
    if spacing[0] == 1.0:
        np.testing.assert_array_equal(band, plain)
    else:
        # a 2-pixel band takes one step in from the contour: laterally only, as a z step costs
        # more than a pixel; the plain band also stepped in along z
        contour = boundary_from_instances(labels)
        lateral = ndi.binary_dilation(
            contour,
            structure=np.array([[[0] * 3] * 3, [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0] * 3] * 3]),
        )
        assert not (band & ~contour & ~lateral).any()
        if spacing[0] < 3:  # at 4, nuclei 3-4 planes deep: the depth cap kept the plain band
            assert (plain & ~contour & ~lateral).any()  # to the contour too
    with pytest.raises(ValueError, match="3 positive values"):
        boundary_from_instances(labels, 2, (1.0, 1.0))
