"""One predictor: a model trained on pyramid levels ``scales: [1, 4]`` of anisotropic 3D data is
fed exactly those levels by the inference engine, and ``napari-rat evaluate`` scores what
``napari-rat predict`` writes for the same region."""

import csv

import numpy as np
import pytest
import yaml

from napari_rat.cli import main
from napari_rat.config import ExperimentConfig
from napari_rat.inference import PredictOptions, predict, run_prediction
from napari_rat.inference.model_loading import load_model_for_inference
from napari_rat.train.crops import split_regions
from napari_rat.train.datasets import build_data
from napari_rat.train.evaluation import RegionScore
from napari_rat.train.loop import train

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)

SPACING = (2.0, 0.5, 0.5)


def _config(tmp_path) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "levels3d",
            "model": {
                "spatial_dims": 3,
                "feature_dims": 8,
                "num_heads": 2,
                "num_blocks": 1,
                "sga_kernel_size": [1, 3, 3],
                "stride": [1, 2, 2],
                "proj_kernel_size": [1, 3, 3],
                "iters": 1,
                "sga_attention_type": "local",
                "spacing": list(SPACING),
                "head": {"decoder_dims": 4},
            },
            "data": {
                "source": "synthetic",
                "spacing": list(SPACING),
                "crop_size": [8, 32, 32],
                "scales": [1, 4],
                "normalization": "none",
                "num_samples": 8,
                "synthetic_images": 1,
                "synthetic_shape": [12, 64, 64],
                "val_fraction": 0.25,
                "holdout_fraction": 0.25,
            },
            "training": {
                "epochs": 1,
                "batch_size": 2,
                "learning_rate": 0.01,
                "warmup_steps": 1,
                "precision": "fp32",
                "output_dir": str(tmp_path / "runs"),
                "run_name": "levels3d",
            },
        }
    )


def _level_ratios(shapes, spacings):
    """Per level after the first: (pixel shape ratio, spacing ratio) to level 0, per axis."""
    return [
        (
            tuple(a / b for a, b in zip(shapes[0], shape, strict=True)),
            tuple(s / s0 for s, s0 in zip(spacing, spacings[0], strict=True)),
        )
        for shape, spacing in zip(shapes[1:], spacings[1:], strict=True)
    ]


def test_scales_1_4_on_anisotropic_3d_feed_the_training_levels_and_evaluate_equals_predict(
    tmp_path, capsys
):
    config = _config(tmp_path)
    path = tmp_path / "levels3d.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert train(config).kind == "finished"
    best = tmp_path / "runs" / "levels3d" / "best.safetensors"

    # What training fed: each crop and its copy 4x coarser on every axis (z too).
    data = build_data(config)
    crop = data.train[0]
    trained = _level_ratios([tuple(x.shape[1:]) for x in crop["images"]], crop["spacings"])
    assert trained == [((4.0, 4.0, 4.0), (4.0, 4.0, 4.0))]

    # What the engine feeds the checkpoint: the same levels (a plan from the level count would
    # have halved only y and x: factors (1, 2, 2) on this spacing).
    model = load_model_for_inference(best)
    assert model.checkpoint_info.level_factors == [[1, 1, 1], [4, 4, 4]]
    seen = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(
            ([tuple(x.shape[2:]) for x in args[0]], kwargs["input_spacing"])
        ),
        with_kwargs=True,
    )
    image = data.train.images[0].image
    region = data.holdout[0]
    try:
        result = run_prediction(
            predict(model, region.image, SPACING, options=PredictOptions(instances=False))
        )
    finally:
        hook.remove()
    assert result.extra["levels"] == [(1, 1, 1), (4, 4, 4)]
    assert seen and all(_level_ratios(*call) == trained for call in seen)

    # evaluate's score on the hold-out region is the score of predict's labels there.
    from napari_rat.io import open_pyramid, write_image

    zarr_image = write_image(
        tmp_path / "image.zarr", image, axes="czyx", scale=SPACING, units="micrometer"
    )
    box = split_regions(image.shape[1:], 0.25, 0.25)["holdout"]
    start, stop = box[0][-1], box[1][-1]
    assert np.array_equal(np.asarray(image)[..., start:stop], region.image)
    out = tmp_path / "prediction.zarr"
    argv = ["predict", str(zarr_image), "--checkpoint", str(best), "--output", str(out)]
    assert main([*argv, "--region", f"x={start}:{stop}"]) == 0
    labels = np.asarray(open_pyramid(str(out / "labels" / "instances")).levels[0].data)
    labels = labels.reshape(region.labels.shape)
    predicted = RegionScore()
    predicted.add(labels, region.labels)
    capsys.readouterr()
    report = tmp_path / "evaluation"
    argv = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--no-baseline"]
    assert main([*argv, "--output", str(report)]) == 0
    with open(report / "robustness.csv") as fh:
        row = next(csv.DictReader(fh))
    scores = predicted.metrics()
    assert scores["dice"] > 0  # the tiny model found something to score
    assert float(row["model_dice"]) == pytest.approx(scores["dice"], abs=1e-12)
    assert float(row["model_ap50"]) == pytest.approx(scores["ap50"], abs=1e-12)
