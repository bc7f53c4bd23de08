import json

import numpy as np
import pytest

from napari_rat.inference.normalization import image_statistics
from napari_rat.train.normalization import Normalization


def _two_channels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.normal(100.0, 10.0, (40, 50)), rng.uniform(0.0, 4000.0, (40, 50))]).astype(
        np.uint16
    )


@pytest.mark.parametrize("method", ["percentile", "zscore", "none"])
def test_training_normalises_as_inference_does_from_the_checkpoint(method):
    image = _two_channels()
    norm = Normalization(method, (2.0, 98.0))
    trained = norm.apply(image)
    stored = json.loads(json.dumps(norm.to_dict()))  # as the checkpoint holds it
    inferred = image_statistics(image, stored).apply(image)
    assert trained.dtype == np.float32
    np.testing.assert_array_equal(trained, inferred)
    if method == "percentile":  # per channel: each channel's 2nd/98th percentile at 0/1
        lo, hi = np.percentile(trained.reshape(2, -1), [2.0, 98.0], axis=1)
        np.testing.assert_allclose(lo, 0.0, atol=1e-5)
        np.testing.assert_allclose(hi, 1.0, atol=1e-5)
    elif method == "zscore":
        np.testing.assert_allclose(trained.reshape(2, -1).mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_allclose(trained.reshape(2, -1).std(axis=1), 1.0, atol=1e-4)
    else:
        np.testing.assert_array_equal(trained, image.astype(np.float32))


def test_a_constant_image_stays_finite():
    out = Normalization().apply(np.full((1, 8, 8), 7, dtype=np.uint8))
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ({}, ("percentile", (1.0, 99.8))),
        ({"method": "zscore"}, ("zscore", (1.0, 99.8))),
        ({"mode": "none", "method": "zscore"}, ("none", (1.0, 99.8))),
        ({"method": "percentile", "percentiles": [3, 97]}, ("percentile", (3.0, 97.0))),
        ({"mode": "percentile", "low": 2, "high": 98}, ("percentile", (2.0, 98.0))),
        ({"percentiles": [5, 95], "low": 2}, ("percentile", (5.0, 95.0))),
    ],
)
def test_checkpoint_keys_are_read_like_inference_reads_them(stored, expected):
    norm = Normalization.from_dict(stored)
    assert (norm.method, norm.percentiles) == expected
    image = _two_channels()
    np.testing.assert_array_equal(norm.apply(image), image_statistics(image, stored).apply(image))


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown normalization mode 'minmax'"):
        Normalization.from_dict({"method": "minmax"})
