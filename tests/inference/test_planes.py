"""``predict_planes``: a model run on every plane of a stack, through the one engine."""

import threading

import numpy as np
import pytest

from napari_rat.inference.planes import predict_planes
from napari_rat.inference.tiled_predict import (
    PredictionCancelled,
    PredictOptions,
    predict,
    run_prediction,
)
from napari_rat.synthetic import synthetic_nuclei

OPTIONS = PredictOptions(tile=(32, 32), halo=(4, 4), threshold=0.4)


@pytest.fixture(scope="module")
def stack():
    """A (t=2, z=3) stack of 2D planes, each its own nuclei image."""
    planes = [synthetic_nuclei((40, 36), (0.5, 0.5), radius=3.0, seed=s)[0] for s in range(6)]
    return np.stack(planes).reshape(2, 3, 40, 36)[None]


def test_each_plane_is_the_engine_s_run_of_that_plane_placed_in_the_stack(model2d, stack, tmp_path):
    spacing, translation = (1.0, 2.0, 0.5, 0.5), (0.0, 5.0, -3.0, 7.0)
    stages = []
    result = run_prediction(
        predict_planes(model2d, stack, spacing, translation, options=OPTIONS, units="micrometer"),
        lambda p: stages.append(p.stage),
    )
    assert result.probabilities.shape == (3, 2, 3, 40, 36)
    assert result.spacing == spacing and result.translation == translation
    assert stages[0] == "plane 1/6, tiles" and stages[-1].startswith("plane 6/6, ")
    count = 0
    seen: set = set()
    for t in range(2):
        for z in range(3):
            alone = run_prediction(
                predict(model2d, stack[:, t, z], (0.5, 0.5), (-3.0, 7.0), options=OPTIONS)
            )
            np.testing.assert_allclose(result.probabilities[:, t, z], alone.probabilities)
            np.testing.assert_array_equal(result.semantic[t, z], alone.semantic)
            # The same instances, numbered on after the planes before.
            lab = result.labels[t, z]
            np.testing.assert_array_equal(lab > 0, alone.labels > 0)
            ids = set(np.unique(lab)) - {0}
            assert len(ids) == alone.num_instances and not ids & seen
            seen |= ids
            count += alone.num_instances
    assert count > 6 and result.num_instances == count == len(seen)
    # Into a store: the same results, on disk, placed.
    import zarr

    out = tmp_path / "planes.zarr"
    stored = run_prediction(
        predict_planes(model2d, stack, spacing, translation, options=OPTIONS, store=out)
    )
    assert stored.store == out
    group = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(group["labels"][:], result.labels)
    np.testing.assert_allclose(group["probabilities"][:], result.probabilities)
    assert group.attrs["napari_rat"]["translation"] == list(translation)


def test_cancel_and_bad_input_leave_nothing(model2d, stack, tmp_path):
    cancel = threading.Event()
    out = tmp_path / "planes.zarr"
    gen = predict_planes(
        model2d, stack, (1.0, 1.0, 0.5, 0.5), options=OPTIONS, store=out, cancel=cancel
    )
    for p in gen:
        if p.stage.startswith("plane 2/6"):
            cancel.set()
            break
    with pytest.raises(PredictionCancelled):
        next(gen)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="more spatial axes than the 2D model"):
        next(predict_planes(model2d, stack[:, 0, 0], (0.5, 0.5)))
    with pytest.raises(ValueError, match="4 spatial axes but 3 spacings"):
        next(predict_planes(model2d, stack, (1.0, 0.5, 0.5)))
    with pytest.raises(ValueError, match="features"):
        next(
            predict_planes(
                model2d, stack, (1.0, 1.0, 0.5, 0.5), options=PredictOptions(features=True)
            )
        )
