"""Per-pixel features from the tiled engine, and their on-disk cache (no Qt)."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.inference import PredictionCancelled
from napari_rat.inference.feature_cache import CACHE_DIR_ENV, FeatureCache, default_cache_dir
from napari_rat.inference.features import compute_features, feature_key, features_for
from napari_rat.inference.sources import PyramidInput, input_from_pyramid
from napari_rat.inference.tiled_predict import PredictOptions, predict, run_prediction
from napari_rat.model import build_model
from napari_rat.synthetic import synthetic_nuclei

TILES = PredictOptions(tile=(32, 32), halo=(8, 8))


@pytest.fixture(scope="module")
def model3d(small_model_config):
    torch.manual_seed(1)
    cfg = {
        **small_model_config,
        "sga_kernel_size": [1, 3, 3],
        "stride": [1, 2, 2],
        "spatial_dims": 3,
    }
    return build_model(ModelConfig(**cfg)).eval()


def _source(shape=(48, 40), spacing=(0.5, 0.5), seed=1, **kwargs) -> PyramidInput:
    img, _ = synthetic_nuclei(shape, spacing, seed=seed)
    axes = ("z", "y", "x")[-len(shape) :]
    return PyramidInput(
        img[None], spacing, (0.0,) * len(shape), axes, ("micrometer",) * len(shape), **kwargs
    )


def test_features_come_from_the_same_forward_and_leave_the_probabilities_alone(model2d):
    src = _source((40, 36))
    options = PredictOptions(tile=(64, 64), instances=False)
    plain = run_prediction(predict(model2d, src.image, src.spacing, options=options))
    options.features = True
    with_features = run_prediction(predict(model2d, src.image, src.spacing, options=options))
    np.testing.assert_array_equal(with_features.probabilities, plain.probabilities)
    assert plain.features is None
    feats = with_features.features
    assert feats.shape == (model2d.num_features, 40, 36) == (8 + 2 * 16, 40, 36)
    assert feats.dtype == np.float16
    stats = with_features.extra["stats"]
    x = torch.from_numpy(stats.apply(src.image.astype(np.float32)))[None]
    with torch.no_grad():
        ((_, expected),) = model2d.forward_features([x], input_spacing=[src.spacing])
    np.testing.assert_allclose(feats, expected[0].numpy(), atol=2e-2, rtol=1e-2)
    # the first channels are the decoder's last features: the output conv of them is the logits
    with torch.no_grad():
        logits = model2d.out(torch.from_numpy(feats[:8].astype(np.float32))[None])[0]
    probs = torch.softmax(logits[:2], 0)[1].numpy()
    np.testing.assert_allclose(probs, with_features.probabilities[1], atol=2e-2)


def test_tiled_features_match_the_untiled_ones_inside_the_image(model2d):
    src = _source((64, 64))
    whole = features_for(model2d, src, options=PredictOptions(tile=(64, 64)), use_cache=False)
    tiled = features_for(
        model2d, src, options=PredictOptions(tile=(32, 32), halo=(16, 16)), use_cache=False
    )
    a = np.asarray(whole.features, np.float32)[:8]
    b = np.asarray(tiled.features, np.float32)[:8]
    # the decoder's features agree where the halo gives the tiles their context
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert corr > 0.95


def test_3d_anisotropic_features_keep_spacing_and_levels(model3d, tmp_path):
    src = _source((6, 24, 20), (2.0, 0.5, 0.5), seed=3)
    cache = FeatureCache(tmp_path / "cache")
    options = PredictOptions(tile=(4, 16, 16), halo=(1, 4, 4), levels=2)
    maps = features_for(model3d, src, options=options, cache=cache)
    assert maps.features.shape == (model3d.num_features, 6, 24, 20)
    assert maps.spacing == (2.0, 0.5, 0.5)
    assert maps.labels.shape == (6, 24, 20)
    key = feature_key(model3d, src, options)
    assert key.levels == ((1, 1, 1), (1, 2, 2))  # coarse z is not halved
    assert np.isfinite(np.asarray(maps.features, np.float32)).all()


def test_cache_hit_reads_back_without_running_the_model(model2d, tmp_path):
    src = _source()
    cache = FeatureCache(tmp_path / "cache")
    steps = []
    gen = compute_features(model2d, src, options=TILES, cache=cache)
    first = run_prediction(gen, steps.append)
    assert not first.from_cache and steps  # the model ran, tile by tile
    steps.clear()
    again = run_prediction(compute_features(model2d, src, options=TILES, cache=cache), steps.append)
    assert again.from_cache and not steps
    assert again.path == first.path and again.path.parent == tmp_path / "cache"
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_in_memory_arrays_are_keyed_by_content(model2d, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    a = features_for(model2d, _source(seed=1), options=TILES, cache=cache)
    same = features_for(model2d, _source(seed=1), options=TILES, cache=cache)  # a new array
    other = features_for(model2d, _source(seed=2), options=TILES, cache=cache)
    assert not a.from_cache and same.from_cache and not other.from_cache
    assert len(cache.entries()) == 2


@pytest.mark.parametrize(
    "change", ["spacing", "checkpoint", "region", "tile", "halo", "attention", "rewritten"]
)
def test_any_changed_key_part_misses(model2d, tmp_path, change, small_model_config):
    from napari_rat.io import write_image

    img, _ = synthetic_nuclei((48, 48), (0.5, 0.5), seed=5)
    path = write_image(tmp_path / "img.zarr", img, axes="yx", scale=(0.5, 0.5), units="micrometer")
    from napari_rat.io import open_pyramid

    pyramid = open_pyramid(path)
    cache = FeatureCache(tmp_path / "cache")
    src = input_from_pyramid(pyramid, region={"y": (0, 40), "x": (0, 40)})
    model, options = model2d, TILES
    base = features_for(model, src, options=options, cache=cache)
    assert not base.from_cache
    assert features_for(model, src, options=options, cache=cache).from_cache
    if change == "spacing":
        src = PyramidInput(
            src.image,
            (1.0, 1.0),
            src.translation,
            src.axis_names,
            src.units,
            region=src.region,
            uri=src.uri,
        )
    elif change == "checkpoint":
        model = build_model(ModelConfig(**small_model_config)).eval()
        model.load_state_dict(model2d.state_dict())
        with torch.no_grad():
            model.out.bias += 0.1
    elif change == "region":
        src = input_from_pyramid(pyramid, region={"y": (8, 48), "x": (0, 40)})
    elif change == "tile":
        options = PredictOptions(tile=(24, 24), halo=(8, 8))
    elif change == "halo":
        options = PredictOptions(tile=(32, 32), halo=(4, 4))
    elif change == "attention":
        model = build_model(
            ModelConfig(**{**small_model_config, "sga_attention_type": "exact"})
        ).eval()
        model.load_state_dict(model2d.state_dict())
    elif change == "rewritten":  # another image written at the same path
        other, _ = synthetic_nuclei((48, 48), (0.5, 0.5), seed=6)
        write_image(path, other, axes="yx", scale=(0.5, 0.5), units="micrometer", overwrite=True)
        src = input_from_pyramid(open_pyramid(path), region={"y": (0, 40), "x": (0, 40)})
    changed = features_for(model, src, options=options, cache=cache)
    assert not changed.from_cache
    assert changed.path != base.path
    assert len(cache.entries()) == 2


def test_least_recently_used_entries_are_evicted_under_the_bound(model2d, tmp_path):
    probe = FeatureCache(tmp_path / "probe")
    features_for(model2d, _source(seed=1), options=TILES, cache=probe)
    one = probe.size_bytes()
    cache = FeatureCache(tmp_path / "cache", max_bytes=int(2.5 * one))
    a = features_for(model2d, _source(seed=1), options=TILES, cache=cache)
    time.sleep(0.05)  # distinct use times
    b = features_for(model2d, _source(seed=2), options=TILES, cache=cache)
    time.sleep(0.05)
    assert features_for(model2d, _source(seed=1), options=TILES, cache=cache).from_cache  # a used
    time.sleep(0.05)
    c = features_for(model2d, _source(seed=3), options=TILES, cache=cache)
    kept = {p for p, _, _ in cache.entries()}
    assert kept == {a.path, c.path}  # b was the least recently used
    assert not b.path.exists()
    assert cache.size_bytes() <= cache.max_bytes
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".")]  # no scratch left


def test_an_entry_larger_than_the_bound_is_kept_alone(model2d, tmp_path):
    cache = FeatureCache(tmp_path / "cache", max_bytes=1)
    a = features_for(model2d, _source(seed=1), options=TILES, cache=cache)
    b = features_for(model2d, _source(seed=2), options=TILES, cache=cache)
    assert [p for p, _, _ in cache.entries()] == [b.path]
    assert not a.path.exists()


def test_a_cancelled_computation_caches_nothing(model2d, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    cancel = threading.Event()
    gen = compute_features(model2d, _source((64, 64)), options=TILES, cache=cache, cancel=cancel)
    next(gen)
    cancel.set()
    with pytest.raises(PredictionCancelled):
        run_prediction(gen)
    assert not cache.root.exists() or not list(cache.root.iterdir())


def test_closing_the_generator_caches_nothing(model2d, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    gen = compute_features(model2d, _source((64, 64)), options=TILES, cache=cache)
    next(gen)
    gen.close()
    assert not cache.root.exists() or not list(cache.root.iterdir())


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    assert FeatureCache().root == tmp_path / "here"
    monkeypatch.setenv("NAPARI_RAT_CACHE_MAX_BYTES", "ten")
    with pytest.raises(ValueError, match="NAPARI_RAT_CACHE_MAX_BYTES"):
        FeatureCache()


_SECOND_PROCESS = """
import sys, numpy as np
from napari_rat.inference.features import features_for
from napari_rat.inference.model_loading import load_model_for_inference
from napari_rat.inference.sources import PyramidInput
from napari_rat.inference.tiled_predict import PredictOptions
from napari_rat.synthetic import synthetic_nuclei
img, _ = synthetic_nuclei((64, 64), (1.0, 1.0), seed=7)
src = PyramidInput(img[None], (1.0, 1.0), (0.0, 0.0), ("y", "x"), ("micrometer", "micrometer"))
maps = features_for(load_model_for_inference("starter"), src,
                    options=PredictOptions(tile=(64, 64), halo=(0, 0)))
print("FROM_CACHE", maps.from_cache, float(np.asarray(maps.features, np.float64).sum()))
"""


def test_a_second_process_reuses_the_cache(tmp_path):
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
        for _ in range(2)
    ]
    first, second = (r[r.index("FROM_CACHE") :] for r in runs)
    assert first[1] == "False" and second[1] == "True"
    assert first[2] == second[2]  # the same features
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_moved_image_reuses_the_entry_at_its_own_place(model2d, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    src = _source(seed=1)
    first = features_for(model2d, src, options=TILES, cache=cache)
    moved = PyramidInput(src.image, src.spacing, (5.0, -2.0), src.axis_names, src.units)
    again = features_for(model2d, moved, options=TILES, cache=cache)
    assert again.from_cache and again.path == first.path
    assert first.translation == (0.0, 0.0) and again.translation == (5.0, -2.0)


def test_missing_pixels_have_zero_features_in_halo_tiles(model2d):
    """Non-finite pixels are background in the probabilities and zero in the features, with
    tiles whose halo is cropped (the mask must be cropped like the outputs)."""
    src = _source((48, 40))
    image = src.image.astype(np.float32).copy()
    image[0, 20:26, 10:30] = np.nan
    options = PredictOptions(tile=(32, 32), halo=(8, 8), instances=False, features=True)
    result = run_prediction(predict(model2d, image, src.spacing, options=options))
    assert result.nan_pixels == 6 * 20
    feats = np.asarray(result.features, np.float32)
    assert (feats[:, 20:26, 10:30] == 0).all()
    assert np.abs(feats[:, :20]).sum() > 0 and np.isfinite(feats).all()
    assert (np.asarray(result.probabilities)[0, 20:26, 10:30] == 1).all()


def test_an_abandoned_computation_leaves_its_thread_able_to_train(model2d, tmp_path):
    """Grad mode is per thread: a features run suspended at its progress (or abandoned on
    cancel) must not leave the (pooled) thread without gradients for the next job, a tune."""
    import threading

    result = {}

    def job():
        run = compute_features(model2d, _source(), options=TILES, use_cache=False)
        for progress in run:  # suspended after a tile, as a dock's worker between progresses
            if progress.stage == "tiles":
                break
        result["grad while suspended"] = torch.is_grad_enabled()
        result["thread"] = run  # abandoned: never resumed nor closed here

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert result["grad while suspended"]
