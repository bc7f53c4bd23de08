"""Chunked connected components and seed growth equal their whole-image versions."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_rat.inference.chunked_labels import (
    grow_labels_chunked,
    instances_chunked,
    label_chunked,
    merge_small_chunked,
)


@pytest.mark.parametrize("shape", [(130, 97), (20, 33, 41)])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_components_partition_like_scipy(shape, seed):
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random(shape), 2) > 0.52
    out = np.zeros(shape, np.int64)
    n = label_chunked(lambda s: mask[s], out, shape, [16] * len(shape))
    ref, n_ref = ndi.label(mask)
    assert n == n_ref and n > 3
    # the same labels as scipy's, numbered as scipy numbers them (first pixel in C order)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("shape", [(130, 97), (20, 33, 41)])
def test_chunked_components_leave_out_the_small_ones(shape):
    rng = np.random.default_rng(2)
    mask = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.53
    ref, n_ref = ndi.label(mask)
    sizes = np.bincount(ref.ravel())
    limit = float(np.median(sizes[1:]))
    big = np.isin(ref, np.flatnonzero(sizes >= limit)) & mask
    out = np.zeros(shape, np.int64)
    n = label_chunked(lambda s: mask[s], out, shape, [16] * len(shape), min_size=limit)
    assert 0 < n < n_ref and n == int((sizes[1:] >= limit).sum())
    assert np.array_equal(out > 0, big)  # components spread over chunks are counted whole
    # scipy's components of the kept objects, renumbered 1..n in scipy's order
    kept = np.flatnonzero(sizes >= limit)
    kept = kept[kept > 0]
    number = np.zeros(len(sizes), np.int64)
    number[kept] = np.arange(1, n + 1)
    assert np.array_equal(out, number[ref])


def test_growth_is_independent_of_chunking():
    rng = np.random.default_rng(3)
    seeds_mask = ndi.gaussian_filter(rng.random((90, 70)), 3) > 0.55
    seeds, _ = ndi.label(seeds_mask)
    fg = ndi.binary_dilation(seeds_mask, iterations=3)
    small = np.zeros_like(seeds)
    whole = np.zeros_like(seeds)
    sizes = grow_labels_chunked(seeds, lambda s: fg[s], small, seeds.shape, (16, 16), radius=4)
    grow_labels_chunked(seeds, lambda s: fg[s], whole, seeds.shape, (90, 70), radius=4)
    assert np.array_equal(small, whole)
    assert ((small > 0) == fg).all()
    # the sizes counted while writing the chunks are those of the grown labels
    assert np.array_equal(sizes, np.bincount(small.ravel()))


@pytest.mark.parametrize("shape", [(130, 97), (20, 33, 41)])
def test_small_labels_touching_none_are_dropped_chunked_as_whole_image(shape):
    rng = np.random.default_rng(5)
    mask = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.53
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())
    limit = float(np.median(sizes[1:]))
    expected = np.where(np.isin(labels, np.flatnonzero(sizes < limit)), 0, labels)
    out = labels.astype(np.int64)
    kept = merge_small_chunked(out, sizes, shape, [16] * len(shape), limit)
    assert 0 < kept < n  # objects spanning chunks are counted whole: some kept, some dropped
    assert kept == int((sizes[1:] >= limit).sum())
    assert ((out > 0) == (expected > 0)).all()
    assert set(np.unique(out)) == set(range(kept + 1))
    pairs = set(zip(out[out > 0].tolist(), expected[out > 0].tolist(), strict=True))
    assert len(pairs) == kept


def test_small_labels_join_the_kept_label_they_touch_most():
    labels = np.zeros((12, 20), np.int64)
    labels[1:11, 1:11] = 1  # kept: 100 pixels
    labels[1:11, 11:14] = 2  # kept: 30 pixels
    labels[4:6, 14] = 3  # 2 pixels touching label 2 only
    labels[0, 1:4] = 4  # 3 pixels along label 1's top (3 faces)
    labels[10:12, 0] = 5  # 2 pixels: 1 face with label 1
    labels[11, 11] = 6  # 1 pixel: 1 face with label 2
    labels[6, 17:19] = 7  # alone
    sizes = np.bincount(labels.ravel())
    out = labels.copy()
    assert merge_small_chunked(out, sizes, labels.shape, (5, 5), 10) == 2
    expected = np.where(np.isin(labels, [1, 4, 5]), 1, np.where(np.isin(labels, [2, 3, 6]), 2, 0))
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("shape", [(130, 97), (20, 33, 41)])
def test_merging_small_labels_does_not_depend_on_the_chunks(shape):
    rng = np.random.default_rng(9)
    seeds, _ = ndi.label(ndi.gaussian_filter(rng.random(shape), 1.5) > 0.55)
    fg = ndi.gaussian_filter(rng.random(shape), 3) > 0.5
    labels = np.zeros(shape, np.int64)
    sizes = grow_labels_chunked(seeds, lambda s: fg[s], labels, shape, shape, radius=3)
    limit = float(np.percentile(sizes[1:][sizes[1:] > 0], 40))
    results = []
    for chunk in ([16] * len(shape), list(shape)):
        out = labels.copy()
        kept = merge_small_chunked(out, sizes, shape, chunk, limit)
        assert set(np.unique(out)) == set(range(kept + 1))
        results.append(out)
    assert np.array_equal(*results)
    out = results[0]
    big = (sizes >= limit) & (np.arange(len(sizes)) > 0)
    assert kept == int(big.sum())
    # every kept label is still there whole; small ones became background or joined one
    assert all(len(np.unique(out[labels == k])) == 1 for k in np.flatnonzero(big))
    assert ((out > 0) <= (labels > 0)).all()
    joined = (out > 0) & ~np.isin(labels, np.flatnonzero(big))
    dropped = (labels > 0) & (out == 0)
    assert joined.any() and dropped.any()


def test_a_piece_touching_two_objects_equally_joins_the_same_one_whatever_the_chunks():
    # A small piece (S) between two objects with the same contact (2 faces each): the tie goes
    # to the object numbered first, and the numbers do not depend on the chunks.
    shape = (20, 20)
    a = np.zeros(shape, bool)
    a[0:10, 12:20] = True
    b = np.zeros(shape, bool)
    b[1:10, 0:10] = True
    piece = np.zeros(shape, bool)
    piece[3:5, 10:12] = True
    fg, cores = a | b | piece, a | b
    joined = []
    for chunk in ((20, 20), (10, 10), (7, 6)):
        out, n, _ = _instances(fg, cores, chunk, radius=0, min_pixels=10)
        assert n == 2
        joined.append("a" if out[3, 10] == out[0, 12] else "b")
        assert (out[piece] == out[3, 10]).all()
    assert joined == ["a"] * 3  # a's first pixel, (0, 12), comes before b's, (1, 0)


def _run(steps):
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as stop:
            return stop.value, seen


def _instances(fg, cores, chunk, **kwargs):
    """``instances_chunked`` over NumPy arrays: ``(labels, count, passes seen)``."""
    out = np.zeros(fg.shape, np.int32)
    n, seen = _run(
        instances_chunked(
            lambda s: fg[s],
            lambda s: cores[s],
            np.zeros(fg.shape, np.int32),
            out,
            fg.shape,
            chunk,
            **kwargs,
        )
    )
    return out, n, seen


@pytest.mark.parametrize(("shape", "spacing"), [((120, 90), None), ((16, 40, 36), (3.0, 1.0, 1.0))])
@pytest.mark.parametrize("min_pixels", [0.0, 20.0])
def test_the_instance_algorithm_does_not_depend_on_the_chunks(shape, spacing, min_pixels):
    rng = np.random.default_rng(7)
    fg = ndi.gaussian_filter(rng.random(shape), 2) > 0.52
    # Cores: the foreground eroded (split in places), and some objects with no core at all
    # (predicted all boundary).
    cores = ndi.binary_erosion(fg)
    objects, n_objects = ndi.label(fg)
    coreless = np.isin(objects, np.arange(1, n_objects + 1, 3))
    cores &= ~coreless
    assert coreless.any() and cores.any()
    results = []
    for chunk in ([16] * len(shape), list(shape)):
        out, n, seen = _instances(
            fg, cores, chunk, radius=3, spacing=spacing, min_pixels=min_pixels
        )
        assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
        assert set(np.unique(out)) == set(range(n + 1))
        results.append(out)
    assert np.array_equal(*results)  # the same labels, numbered alike
    out = results[0]
    if min_pixels == 0:
        # No foreground pixel is lost: a coreless object out of the seeds' reach is one
        # instance of its own (one nearer may be partly grown into by a neighbour).
        assert ((out > 0) == fg).all()
        reach = 3 * min(spacing or (1.0,))
        far = ndi.distance_transform_edt(~cores, sampling=spacing) > reach
        alone = [k for k in np.unique(objects[coreless]) if far[objects == k].all()]
        assert alone
        for k in alone:
            (value,) = np.unique(out[objects == k])
            assert ((out == value) == (objects == k)).all()
    else:
        assert np.bincount(out.ravel())[1:].min() >= min_pixels
        assert ((out > 0) & ~fg).sum() == 0
