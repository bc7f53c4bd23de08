"""Chunked connected components and seed growth equal their whole-image versions."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_rat.inference.chunked_labels import (
    drop_small_chunked,
    grow_labels_chunked,
    label_chunked,
)
from napari_rat.inference.instances import drop_small_instances


@pytest.mark.parametrize("shape", [(130, 97), (20, 33, 41)])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_components_partition_like_scipy(shape, seed):
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random(shape), 2) > 0.52
    out = np.zeros(shape, np.int64)
    n = label_chunked(lambda s: mask[s], out, shape, [16] * len(shape))
    ref, n_ref = ndi.label(mask)
    assert n == n_ref and n > 3
    assert set(np.unique(out)) == set(range(n + 1))
    # Same partition: a one-to-one map between our labels and scipy's.
    pairs = set(zip(out[mask].tolist(), ref[mask].tolist(), strict=True))
    assert len(pairs) == n
    assert (out[~mask] == 0).all()


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
def test_dropping_small_labels_chunked_equals_whole_image(shape):
    rng = np.random.default_rng(5)
    mask = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.53
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())
    limit = float(np.median(sizes[1:]))
    expected = drop_small_instances(labels, limit)
    out = labels.astype(np.int64)
    kept = drop_small_chunked(out, sizes, shape, [16] * len(shape), limit)
    assert 0 < kept < n  # objects spanning chunks are counted whole: some kept, some dropped
    assert kept == int((sizes[1:] >= limit).sum())
    assert ((out > 0) == (expected > 0)).all()
    assert set(np.unique(out)) == set(range(kept + 1))
    pairs = set(zip(out[out > 0].tolist(), expected[out > 0].tolist(), strict=True))
    assert len(pairs) == kept
