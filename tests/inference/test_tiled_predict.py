"""The tiled prediction engine, without Qt: tiling, levels, spacing, cancel, stores."""

import threading

import numpy as np
import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.inference.tiled_predict import (
    PredictionCancelled,
    PredictOptions,
    predict,
    run_prediction,
)
from napari_rat.inference.tiling import tile_grid
from napari_rat.model import build_model
from napari_rat.synthetic import synthetic_nuclei


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize(
    ("shape", "tile", "halo"),
    [((100, 37), (32, 32), (8, 8)), ((9, 20, 31), (4, 16, 16), (2, 4, 4)), ((301,), (50,), (7,))],
)
def test_tile_cores_cover_the_image_exactly_once(shape, tile, halo, uniform):
    cover = np.zeros(shape, int)
    tiles = tile_grid(shape, tile, halo, uniform_reads=uniform)
    for t in tiles:
        cover[t.core] += 1
        for r, c, k, n, h in zip(t.read, t.core, t.crop, shape, halo, strict=True):
            assert 0 <= r.start <= c.start and c.stop <= r.stop <= n
            assert k.stop - k.start == c.stop - c.start
            assert r.start + k.start == c.start
            # at least the halo on each side, except where the image ends
            assert c.start - r.start >= min(h, c.start) and r.stop - c.stop >= min(h, n - c.stop)
    assert cover.min() == cover.max() == 1
    read_shapes = {tuple(r.stop - r.start for r in t.read) for t in tiles}
    if uniform:
        assert len(read_shapes) == 1  # one input shape for the model
    else:
        assert len(read_shapes) > 1  # reads shrink at the border


def test_single_tile_equals_the_bare_forward(model2d):
    img, _ = synthetic_nuclei((40, 36), (0.5, 0.5), seed=1)
    result = run_prediction(
        predict(
            model2d, img[None], (0.5, 0.5), options=PredictOptions(tile=(64, 64), instances=False)
        )
    )
    stats = result.extra["stats"]
    x = torch.from_numpy(stats.apply(img[None].astype(np.float32)))[None]
    with torch.no_grad():
        logits = model2d([x], input_spacing=[(0.5, 0.5)])[0][0]
    expected = torch.softmax(logits[:2], 0).numpy()
    np.testing.assert_allclose(result.probabilities[:2], expected, atol=1e-5)
    assert result.probabilities.shape == (3, 40, 36)
    assert result.spacing == (0.5, 0.5)


def test_spacing_reaches_the_model(model2d):
    img, _ = synthetic_nuclei((32, 32), (0.5, 0.5), seed=2)
    a = run_prediction(
        predict(model2d, img[None], (0.5, 0.5), options=PredictOptions(instances=False))
    )
    b = run_prediction(
        predict(model2d, img[None], (4.0, 4.0), options=PredictOptions(instances=False))
    )
    again = run_prediction(
        predict(model2d, img[None], (0.5, 0.5), options=PredictOptions(instances=False))
    )
    assert np.array_equal(a.probabilities, again.probabilities)
    # A freshly initialised model reacts weakly, but measurably, to the spacing.
    assert np.abs(a.probabilities - b.probabilities).max() > 1e-6


def test_progress_counts_tiles_and_levels_feed_the_model(model2d):
    img, _ = synthetic_nuclei((70, 50), (1.0, 1.0), seed=3)
    seen = []
    gen = predict(
        model2d, img[None], (1.0, 1.0), options=PredictOptions(tile=(32, 32), halo=(8, 8), levels=2)
    )
    result = run_prediction(gen, seen.append)
    tiles = [p for p in seen if p.stage == "tiles"]
    assert [p.done for p in tiles] == list(range(1, 7)) and tiles[-1].total == 6
    assert seen[-1].stage == "instances" and seen[-1].done == seen[-1].total
    assert result.extra["levels"] == [(1, 1), (2, 2)]
    assert result.labels.shape == (70, 50)


def test_levels_default_to_those_the_checkpoint_was_trained_with(
    model2d, tmp_path, small_model_config
):
    from napari_rat.model import load_checkpoint, save_checkpoint

    path = save_checkpoint(
        model2d,
        tmp_path / "m.safetensors",
        ModelConfig(**small_model_config),
        extra={"scales": [1, 2]},
    )
    model = load_checkpoint(path)
    img, _ = synthetic_nuclei((40, 40), (1.0, 1.0), seed=5)
    options = PredictOptions(tile=(32, 32), instances=False)
    fed = run_prediction(predict(model, img[None], (1.0, 1.0), options=options))
    assert fed.extra["levels"] == [(1, 1), (2, 2)]
    plain = run_prediction(predict(model2d, img[None], (1.0, 1.0), options=options))
    assert plain.extra["levels"] == [(1, 1)]  # no checkpoint: one level
    with pytest.raises(ValueError, match="levels must be 1 or more"):
        run_prediction(predict(model, img[None], (1.0, 1.0), options=PredictOptions(levels=0)))
    # A checkpoint with its trained levels stored gets exactly those, not a plan from a count.
    stored = load_checkpoint(
        save_checkpoint(
            model2d,
            tmp_path / "l.safetensors",
            ModelConfig(**small_model_config),
            level_factors=[[1, 1], [4, 4]],
        )
    )
    trained = run_prediction(predict(stored, img[None], (1.0, 1.0), options=options))
    assert trained.extra["levels"] == [(1, 1), (4, 4)]
    # An explicit number of levels is planned from the spacing, as before.
    two = PredictOptions(tile=(32, 32), instances=False, levels=2)
    planned = run_prediction(predict(stored, img[None], (1.0, 1.0), options=two))
    assert planned.extra["levels"] == [(1, 1), (2, 2)]


def test_instances_grow_back_over_the_checkpoint_s_boundary_band(
    model2d, tmp_path, small_model_config
):
    from napari_rat.inference.feature_cache import FeatureCache
    from napari_rat.inference.features import features_for
    from napari_rat.inference.sources import PyramidInput
    from napari_rat.model import load_checkpoint, save_checkpoint

    wide = ModelConfig(
        **{**small_model_config, "head": {**small_model_config["head"], "boundary_width": 3}}
    )
    model = load_checkpoint(save_checkpoint(model2d, tmp_path / "w.safetensors", wide))
    img, _ = synthetic_nuclei((40, 40), (1.0, 1.0), seed=5)
    options = PredictOptions(tile=(32, 32))

    def radius(m, o):
        return run_prediction(predict(m, img[None], (1.0, 1.0), options=o)).boundary_radius

    assert radius(model, options) == 5 and radius(model2d, options) == 3
    assert radius(model, PredictOptions(tile=(32, 32), boundary_radius=2)) == 2
    # Kept with the cached features, for interactive segmentation to grow its objects alike.
    cache = FeatureCache(tmp_path / "cache")
    source = PyramidInput(img[None], (1.0, 1.0), (0.0, 0.0), ("y", "x"), ("micrometer",) * 2)
    first = features_for(model, source, options=options, cache=cache)
    again = features_for(model, source, options=options, cache=cache)
    assert again.from_cache and first.boundary_radius == again.boundary_radius == 5


def test_the_bundled_starters_get_the_levels_they_were_trained_on():
    """Both starters store their trained levels (one, at full resolution): that is what they
    are fed, whatever the image's spacing."""
    from napari_rat.inference.model_loading import load_model_for_inference

    for name, dims in (("starter-2d", 2), ("starter-3d", 3)):
        model = load_model_for_inference(name)
        assert model.checkpoint_info.level_factors == [[1] * dims]
    model = load_model_for_inference("starter-2d")
    img, _ = synthetic_nuclei((40, 40), (1.0, 1.0), seed=5)
    options = PredictOptions(tile=(32, 32), instances=False)
    result = run_prediction(predict(model, img[None], (3.0, 3.0), options=options))
    assert result.extra["levels"] == [(1, 1)]


def test_predict_gives_the_model_back_in_its_mode(model2d):
    img, _ = synthetic_nuclei((24, 24), (1.0, 1.0), seed=5)
    model2d.train()
    try:
        run_prediction(
            predict(model2d, img[None], (1.0, 1.0), options=PredictOptions(instances=False))
        )
        assert model2d.training  # validation hands the training model in, and keeps training
    finally:
        model2d.eval()


def test_3d_anisotropic_levels_do_not_halve_coarse_z(small_model_config):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            spatial_dims=3,
            **{**small_model_config, "sga_kernel_size": [1, 3, 3], "stride": [1, 2, 2]},
        )
    ).eval()
    img, _ = synthetic_nuclei((6, 30, 28), (2.0, 0.5, 0.5), seed=4)
    result = run_prediction(
        predict(
            model,
            img[None],
            (2.0, 0.5, 0.5),
            (10.0, 0.0, 5.0),
            options=PredictOptions(tile=(4, 16, 16), halo=(1, 4, 4), levels=3),
        )
    )
    assert result.extra["levels"] == [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert result.probabilities.shape == (3, 6, 30, 28)
    assert result.translation == (10.0, 0.0, 5.0)


def test_cancel_leaves_no_output(model2d, tmp_path):
    img, _ = synthetic_nuclei((64, 64), seed=5)
    cancel = threading.Event()
    out = tmp_path / "pred.zarr"
    gen = predict(
        model2d,
        img[None],
        (1.0, 1.0),
        store=out,
        cancel=cancel,
        options=PredictOptions(tile=(32, 32), halo=(4, 4)),
    )
    next(gen)
    cancel.set()
    with pytest.raises(PredictionCancelled):
        next(gen)
    assert list(tmp_path.iterdir()) == []
    # Closing the generator early (the consumer stops) cleans up too.
    gen = predict(
        model2d,
        img[None],
        (1.0, 1.0),
        store=out,
        options=PredictOptions(tile=(32, 32), halo=(4, 4)),
    )
    next(gen)
    gen.close()
    assert list(tmp_path.iterdir()) == []


def test_store_is_complete_and_refuses_to_overwrite(model2d, tmp_path):
    import zarr

    img, _ = synthetic_nuclei((48, 40), seed=6)
    out = tmp_path / "pred.zarr"
    result = run_prediction(
        predict(
            model2d,
            img[None],
            (1.0, 1.0),
            store=out,
            options=PredictOptions(tile=(32, 32), halo=(4, 4)),
        )
    )
    assert result.store == out
    group = zarr.open_group(out, mode="r")
    assert sorted(group.array_keys()) == ["labels", "probabilities", "semantic"]
    probs = group["probabilities"][:]
    assert np.allclose(probs[0] + probs[1], 1.0, atol=1e-5)
    with pytest.raises(FileExistsError, match="already exists"):
        next(predict(model2d, img[None], (1.0, 1.0), store=out))


@pytest.mark.parametrize(
    ("image", "spacing", "message"),
    [
        (np.zeros((2, 16, 16), np.float32), (1.0, 1.0), "channels"),
        (np.zeros((16, 16), np.float32), (1.0, 1.0), "spatial axes"),
        (np.zeros((1, 16, 16), np.float32), (1.0, 0.0), "positive"),
    ],
)
def test_bad_input_is_named(model2d, image, spacing, message):
    with pytest.raises(ValueError, match=message):
        next(predict(model2d, image, spacing))


def test_backbone_without_head_is_refused(small_model_config):
    model = build_model(
        ModelConfig(variant="rat", **{k: v for k, v in small_model_config.items() if k != "head"})
    )
    with pytest.raises(TypeError, match="segmentation head"):
        next(predict(model, np.zeros((1, 8, 8), np.float32), (1.0, 1.0)))


def test_training_still_works_after_prediction_in_the_same_process(model2d, small_model_config):
    """RoSE caches position tensors; prediction must not leave inference tensors there."""
    img, _ = synthetic_nuclei((24, 24), seed=7)
    run_prediction(predict(model2d, img[None], (1.0, 1.0), options=PredictOptions(instances=False)))
    model = build_model(ModelConfig(**small_model_config)).train()
    x = torch.from_numpy(img[None, None])
    loss = model([x], input_spacing=[(1.0, 1.0)])[0].mean()
    loss.backward()
    assert model.backbone.init_proj.weight.grad is not None


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize(
    ("levels", "spacing"), [(1, (1.0, 1.0)), (2, (1.0, 1.0)), (1, (1.5, 0.75))]
)
def test_tiled_agrees_with_untiled_on_the_starter_model(levels, spacing):
    """Tiles with halos give the labels of one whole-image forward (Dice >= 0.95), with one or
    two pyramid levels fed and with anisotropic spacing."""
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.sample_data import nuclei_2d

    model = load_model_for_inference("starter")
    img = nuclei_2d()[0][:160, 200:360].astype(np.float32)[None]
    whole = run_prediction(
        predict(model, img, spacing, options=PredictOptions(tile=(160, 160), levels=levels))
    )
    tiled = run_prediction(
        predict(
            model,
            img,
            spacing,
            stats=whole.extra["stats"],
            options=PredictOptions(tile=(48, 48), halo=(24, 24), levels=levels),
        )
    )
    dice = _dice(whole.labels, tiled.labels)
    assert (np.asarray(whole.labels) > 0).sum() > 1000 and dice >= 0.95, dice
    assert abs(whole.num_instances - tiled.num_instances) <= max(2, whole.num_instances // 10)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.5, 0.75)])
def test_engine_instances_are_those_training_scores(spacing):
    """The engine's chunked instances equal what validation and evaluation compute from the
    same probabilities in memory (one algorithm), including the minimum size."""
    from napari_rat.inference.instances import instances_from_probabilities
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.sample_data import nuclei_2d

    model = load_model_for_inference("starter")
    img = nuclei_2d()[0][:120, 300:420].astype(np.float32)[None]
    size = 12.0
    result = run_prediction(
        predict(
            model,
            img,
            spacing,
            options=PredictOptions(tile=(40, 40), halo=(16, 16), min_instance_size=size),
        )
    )
    probs = np.asarray(result.probabilities)
    # Grown over the model's boundary band and 2 pixels more.
    width = model.checkpoint_info.model_config.head.boundary_width
    assert result.boundary_radius == width + 2
    expected = instances_from_probabilities(
        1.0 - probs[0],
        probs[-1],
        spacing=spacing,
        min_instance_size=size,
        radius=result.boundary_radius,
    )
    labels = np.asarray(result.labels)
    assert result.num_instances == expected.max() > 5
    # the same instances, numbered alike (in C order of their first pixel, whatever the chunks)
    assert np.array_equal(labels, expected)


def test_tiled_agrees_with_untiled_in_3d_anisotropic(tmp_path, small_model_config):
    """A small 3D model, trained here for a minute on generated anisotropic nuclei, gives the
    same foreground tiled (with halos, one or two levels) as in one whole-volume forward."""
    from napari_rat.config import ExperimentConfig
    from napari_rat.model import load_checkpoint
    from napari_rat.train.loop import train

    spacing = (2.0, 0.5, 0.5)
    config = ExperimentConfig.model_validate(
        {
            "name": "tiny3d",
            "model": {
                **small_model_config,
                "spatial_dims": 3,
                "feature_dims": 8,
                "num_blocks": 1,
                "sga_kernel_size": [1, 3, 3],
                "stride": [1, 2, 2],
                "proj_kernel_size": [1, 3, 3],
                "sga_attention_type": "local",
                "spacing": list(spacing),
                "head": {"decoder_dims": 4},
            },
            "data": {
                "source": "synthetic",
                "spacing": list(spacing),
                "crop_size": [8, 32, 32],
                "num_samples": 64,
                "synthetic_images": 2,
                "synthetic_shape": [12, 64, 64],
                "val_fraction": 0.0,
            },
            "training": {
                "epochs": 1,
                "batch_size": 2,
                "learning_rate": 0.01,
                "warmup_steps": 2,
                "precision": "fp32",
                "output_dir": str(tmp_path),
                "run_name": "tiny3d",
            },
        }
    )
    assert train(config).kind == "finished"
    model = load_checkpoint(tmp_path / "tiny3d" / "last.safetensors")
    img, truth = synthetic_nuclei((12, 64, 64), spacing, seed=11)
    for levels in (1, 2):
        whole = run_prediction(
            predict(
                model, img[None], spacing, options=PredictOptions(tile=(12, 64, 64), levels=levels)
            )
        )
        tiled = run_prediction(
            predict(
                model,
                img[None],
                spacing,
                stats=whole.extra["stats"],
                options=PredictOptions(tile=(6, 32, 32), halo=(3, 16, 16), levels=levels),
            )
        )
        assert _dice(whole.labels, truth) > 0.8  # the model has learnt the nuclei
        assert _dice(whole.labels, tiled.labels) >= 0.95


def test_training_normalization_settings_are_honoured():
    from napari_rat.inference import image_statistics

    rng = np.random.default_rng(0)
    image = rng.normal(5.0, 2.0, size=(1, 64, 64)).astype(np.float32)
    z = image_statistics(image, {"method": "zscore"})
    assert z.offset[0] == pytest.approx(5.0, abs=0.2) and z.scale[0] == pytest.approx(2.0, abs=0.2)
    p = image_statistics(image, {"method": "percentile", "percentiles": [10.0, 90.0]})
    assert p.offset[0] == pytest.approx(np.percentile(image, 10), rel=1e-5)


def test_small_instances_are_dropped_across_chunks_in_physical_units(tmp_path):
    """The engine's size filter counts objects across chunk faces, in physical area, and by
    default uses the size stored in the checkpoint's head (chosen on validation)."""
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.sample_data import nuclei_2d

    model = load_model_for_inference("starter")
    img = nuclei_2d()[0][:128, :128].astype(np.float32)[None]
    spacing = (0.5, 0.5)  # a pixel is 0.25 units^2
    opts = {"tile": (48, 48), "halo": (16, 16)}
    run = lambda size, name: run_prediction(  # noqa: E731
        predict(
            model,
            img,
            spacing,
            store=tmp_path / name,
            options=PredictOptions(**opts, min_instance_size=size),
        )
    )
    everything = np.asarray(run(0.0, "all.zarr").labels)
    sizes = np.bincount(everything.ravel())[1:]
    limit = float(np.percentile(sizes, 40)) * 0.25  # physical: drops about 40 % of the objects
    kept = run(limit, "kept.zarr")
    labels = np.asarray(kept.labels)
    kept_sizes = np.bincount(labels.ravel())[1:]
    assert kept.num_instances == len(kept_sizes)
    assert 0 < kept.num_instances < len(sizes)
    assert (kept_sizes * 0.25 >= limit).all()
    assert ((labels > 0) <= (everything > 0)).all()
    stored = model.checkpoint_info.model_config.head.min_instance_size or 0.0
    default = np.asarray(run(None, "default.zarr").labels)
    assert np.array_equal(default, np.asarray(run(stored, "stored.zarr").labels))


def test_nan_pixels_are_background_and_counted_not_spread_over_the_image(model2d):
    """One NaN made every tile it touched (and, through the statistics, the whole image) NaN:
    0 instances and no word. Now they are fed as the low intensity, masked to background in
    the results, and counted."""
    img, _ = synthetic_nuclei((64, 64), seed=3)
    holes = img.astype(np.float32)
    holes[10:14, 20:30] = np.nan
    holes[40, 5] = np.inf
    options = PredictOptions(tile=(32, 32), halo=(8, 8))
    result = run_prediction(predict(model2d, holes[None], (1.0, 1.0), options=options))
    assert result.nan_pixels == 41
    probs = np.asarray(result.probabilities)
    assert np.isfinite(probs).all()
    assert (probs[0, 10:14, 20:30] == 1.0).all() and probs[0, 40, 5] == 1.0
    assert (np.asarray(result.labels)[10:14, 20:30] == 0).all()
    # Elsewhere the prediction is that of the image with the holes at its low intensity.
    filled = np.where(np.isfinite(holes), holes, np.float32(result.extra["stats"].offset[0]))
    stats = result.extra["stats"]
    ref = run_prediction(predict(model2d, filled[None], (1.0, 1.0), options=options, stats=stats))
    keep = np.isfinite(holes)
    np.testing.assert_allclose(probs[:, keep], np.asarray(ref.probabilities)[:, keep], atol=1e-5)
    assert ref.nan_pixels == 0
    assert np.isnan(holes[10:14, 20:30]).all()  # the caller's image is left as it was


def test_an_image_without_any_finite_pixel_is_refused(model2d):
    with pytest.raises(ValueError, match="channel 0 of the image has no finite pixel"):
        run_prediction(predict(model2d, np.full((1, 32, 32), np.nan, np.float32), (1.0, 1.0)))
