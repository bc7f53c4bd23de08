"""Quick fine-tuning of the decoder and head on an image in memory, through the one loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_rat.config import ExperimentConfig
from napari_rat.inference.model_loading import load_model_for_inference
from napari_rat.inference.tiled_predict import PredictOptions, predict, run_prediction
from napari_rat.model import build_model, read_checkpoint_info, save_checkpoint
from napari_rat.pretrained import starter_model
from napari_rat.sample_data import nuclei_2d
from napari_rat.synthetic import synthetic_nuclei
from napari_rat.train.data_sources import DatasetError, InMemoryImage
from napari_rat.train.datasets import build_data
from napari_rat.train.loop import train_events
from napari_rat.train.losses import segmentation_loss
from napari_rat.train.quick_tune import quick_tune, quick_tune_config, quick_tune_events, save_tuned
from napari_rat.train.training_set import (
    base_config_for_checkpoint,
    export_training_set,
    training_config_for,
    with_training_options,
)

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)

#: Training box and a box of other nuclei to score on, in the bundled real 2D image.
TRAIN_2D = (slice(96, 192), slice(0, 96))
SCORE_2D = (slice(0, 128), slice(256, 384))


def _decoder_reset(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its decoder and head re-initialised: a deliberately bad start."""
    torch.manual_seed(0)
    for name, module in model.named_modules():
        if not name.startswith("backbone") and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def _foreground_dice(model, image, spacing, labels) -> float:
    """Foreground Dice of the inference engine's prediction of ``image`` against ``labels``."""
    options = PredictOptions(device="cpu", precision="fp32", instances=False)
    result = run_prediction(predict(model, image[None], spacing, options=options))
    fg = np.asarray(result.probabilities)[0] < 0.5
    truth = labels > 0
    return 2 * float((fg & truth).sum()) / float(fg.sum() + truth.sum())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tuned_2d():
    """The starter with a re-initialised decoder and head, quick-tuned on real nuclei."""
    image, labels = nuclei_2d()
    bad = _decoder_reset(starter_model())
    before = _state(bad)
    events = []
    tuned = quick_tune(
        bad,
        image[TRAIN_2D],
        (1.0, 1.0),
        labels=labels[TRAIN_2D],
        steps=40,
        learning_rate=3e-3,
        crop_size=(64, 64),
        progress=events.append,
        name="nuclei[96:192, 0:96]",
    )
    return bad, before, tuned, events


def test_quick_tune_improves_a_bad_start_2d(tuned_2d):
    bad, _, tuned, events = tuned_2d
    image, labels = nuclei_2d()
    args = (image[SCORE_2D], (1.0, 1.0), labels[SCORE_2D])
    start, after = _foreground_dice(bad, *args), _foreground_dice(tuned, *args)
    assert after > 0.8 and after > start + 0.2, (start, after)
    # The loop's own events: start, one progress report per step, finished.
    kinds = [e.kind for e in events]
    assert "start" in kinds
    assert [e.step for e in events if e.kind == "progress"] == list(range(1, 41))
    assert kinds[-1] == "finished"


def test_quick_tune_freezes_the_backbone_and_trains_the_decoder(tuned_2d):
    bad, before, tuned, _ = tuned_2d
    after = tuned.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    decoder = [k for k in before if not k.startswith("backbone.")]
    assert backbone and decoder
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    changed = [k for k in decoder if not torch.equal(before[k], after[k])]
    assert {k.split(".")[0] for k in changed} == {"lateral", "mix", "out"}
    # The model it started from is left as it was.
    assert all(torch.equal(before[k], v) for k, v in bad.state_dict().items())


def test_quick_tuned_model_card_save_and_inference(tuned_2d, tmp_path):
    _, _, tuned, _ = tuned_2d
    path = save_tuned(tuned, tmp_path / "tuned.safetensors")
    info = read_checkpoint_info(path)
    assert info.extra["trained"] == "decoder and head (backbone frozen)"
    assert info.extra["init_from"] == "model in memory (starter_nuclei_2d)"
    (card,) = info.extra["trained_on"]
    assert card["name"] == "nuclei[96:192, 0:96]" and card["shape"] == [96, 96]
    assert card["objects"] == len(np.unique(nuclei_2d()[1][TRAIN_2D])) - 1
    # Stored with the start's attention type; tuned with what prediction runs.
    assert info.model_config.sga_attention_type == "dense"
    assert info.extra["tuned_with_attention"] == "local"
    assert info.model_config.head.min_instance_size == 32.0
    # The tuning run's own model card, not the starter's (whose scores are not the tuned ones).
    assert info.card.data.startswith("in_memory") and info.card.held_out == []
    assert "annotated box" in info.card.split and info.card.training_time_s > 0
    # The inference dock's loader reads the file and predicts what the returned model does.
    loaded = load_model_for_inference(path)
    image = nuclei_2d()[0][SCORE_2D][None]
    options = PredictOptions(device="cpu", precision="fp32")
    a = run_prediction(predict(loaded, image, (1.0, 1.0), options=options))
    b = run_prediction(predict(tuned, image, (1.0, 1.0), options=options))
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))


def test_quick_tuned_checkpoint_starts_a_full_fine_tune(tuned_2d, tmp_path):
    """The train-on-cluster workflow: export the layers, config from the checkpoint,
    ``init_from`` the quick-tuned file (run in-process here: the same loop)."""
    _, _, tuned, _ = tuned_2d
    path = save_tuned(tuned, tmp_path / "tuned.safetensors")
    image, labels = nuclei_2d()
    box = (slice(0, 64), slice(0, 96))
    dataset = export_training_set(
        tmp_path / "set.zarr", image[box], labels[box], axes="yx", spacing=(1.0, 1.0)
    )
    base = base_config_for_checkpoint(path)
    config = training_config_for(base, dataset, spatial_shape=image[box].shape, run_name="full")
    config = with_training_options(config, epochs=1, steps_per_epoch=1, batch_size=1)
    config = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={"output_dir": str(tmp_path / "runs"), "precision": "fp32"}
            )
        }
    )
    events = list(train_events(config, init_from=str(path)))
    assert events[-1].kind == "finished"
    info = read_checkpoint_info(events[-1].path)
    assert info.extra["init_from"] == str(path)
    assert "trained" not in info.extra  # a full fine-tune trains the backbone too


def _tiny_3d_checkpoint(tmp_path) -> str:
    """A random (untrained) small 3D model saved as a checkpoint: the worst start."""
    model_config = ExperimentConfig.model_validate(
        {
            "model": {
                "spatial_dims": 3,
                "feature_dims": 16,
                "num_heads": 2,
                "num_blocks": 1,
                "proj_kernel_size": 3,
                "sga_kernel_size": 3,
                "stride": 2,
                "iters": 1,
                "sga_attention_type": "local",
                "head": {"decoder_dims": 8},
            },
            "data": {"crop_size": [16, 32, 32]},
        }
    ).model
    torch.manual_seed(0)
    model = build_model(model_config)
    path = tmp_path / "random3d.safetensors"
    save_checkpoint(
        model,
        path,
        model_config,
        training_spacing=[2.0, 0.5, 0.5],
        extra={"crop_size": [8, 32, 32]},
    )
    return str(path)


def test_quick_tune_improves_a_random_model_anisotropic_3d(tmp_path):
    spacing = (2.0, 0.5, 0.5)
    image, labels = synthetic_nuclei((12, 48, 48), spacing, radius=3.0, seed=1)
    other, other_labels = synthetic_nuclei((12, 48, 48), spacing, radius=3.0, seed=2)
    checkpoint = _tiny_3d_checkpoint(tmp_path)
    start = _foreground_dice(load_model_for_inference(checkpoint), other, spacing, other_labels)
    tuned = quick_tune(
        checkpoint, image, spacing, labels=labels, steps=40, learning_rate=5e-3, batch_size=2
    )
    after = _foreground_dice(tuned, other, spacing, other_labels)
    assert after > 0.7 and after > start + 0.2, (start, after)
    assert tuned.checkpoint_info.extra["trained_on"][0]["spacing"] == list(spacing)


def _strokes(labels: np.ndarray) -> np.ndarray:
    """Scribbles from ground truth, as a user draws them: a short line through the middle of
    every other object (value 2) and lines in the background away from objects (value 1);
    the masks themselves are never painted."""
    from scipy import ndimage as ndi

    scribbles = np.zeros(labels.shape, np.uint8)
    objects = ndi.find_objects(labels)
    for index, box in enumerate(objects):
        if box is None or index % 2:
            continue
        row = (box[0].start + box[0].stop) // 2
        cols = np.arange(box[1].start, box[1].stop)
        inside = cols[labels[row, cols] == index + 1]
        scribbles[row, inside[len(inside) // 4 : len(inside) - len(inside) // 4]] = 2
    far = ~ndi.binary_dilation(labels > 0, iterations=4)
    lines = np.zeros(labels.shape, bool)
    lines[::12, :] = True
    scribbles[far & lines] = 1
    return scribbles


def test_scribble_targets_leave_unpainted_pixels_out_of_the_loss(tiny):
    """Through the loop's own data and loss: the gradient is exactly zero at every pixel left
    unpainted, and the boundary is learnt only where a scribble says background."""
    image, labels = nuclei_2d()
    scribbles = _strokes(labels[TRAIN_2D])
    config = tiny(
        data={"source": "in_memory", "val_fraction": 0.0, "crop_size": [96, 96]},
        model={"head": {"class_names": ["background", "nucleus"], "decoder_dims": 4}},
    )
    source = InMemoryImage(image[TRAIN_2D], (1.0, 1.0), scribbles=scribbles)
    item = build_data(config, in_memory=[source]).train[0]
    classes, boundary = item["classes"][0], item["boundary"][0]
    painted = classes >= 0
    assert painted.any() and (~painted).any()
    assert set(np.unique(classes[painted].numpy())) == {0, 1}
    logits = torch.randn(1, 3, *classes.shape, requires_grad=True)
    loss, _ = segmentation_loss(logits, classes[None], boundary[None], 2)
    loss.backward()
    grad = logits.grad[0].abs()
    assert float(grad[:, ~painted].max()) == 0.0
    assert bool((grad[:2, painted].sum(0) > 0).all())
    # Painted objects say nothing about boundaries; painted background says "none here".
    assert float(grad[2, classes == 1].max()) == 0.0
    assert bool((grad[2, classes == 0] > 0).all())


def test_scribble_only_quick_tune_improves_a_bad_start():
    image, labels = nuclei_2d()
    bad = _decoder_reset(starter_model())
    scribbles = _strokes(labels[TRAIN_2D])
    assert (scribbles > 0).mean() < 0.1  # sparse: most pixels are unpainted
    args = (image[SCORE_2D], (1.0, 1.0), labels[SCORE_2D])
    start = _foreground_dice(bad, *args)
    tuned = quick_tune(
        bad,
        image[TRAIN_2D],
        (1.0, 1.0),
        scribbles=scribbles,
        steps=40,
        learning_rate=3e-3,
        crop_size=(64, 64),
    )
    after = _foreground_dice(tuned, *args)
    assert after > 0.8 and after > start + 0.15, (start, after)
    card = tuned.checkpoint_info.extra["trained_on"][0]
    assert card["scribbled_pixels"] == {
        "background": int((scribbles == 1).sum()),
        "nucleus": int((scribbles == 2).sum()),
    }


def test_cancel_stops_promptly_and_leaves_the_model_untouched():
    image, labels = nuclei_2d()
    model = starter_model()
    before = _state(model)
    cancel = threading.Event()
    steps = []

    def progress(event):
        if event.kind == "progress":
            steps.append(event.step)
            cancel.set()

    out = quick_tune(
        model,
        image[TRAIN_2D],
        (1.0, 1.0),
        labels=labels[TRAIN_2D],
        steps=50,
        cancel=cancel,
        progress=progress,
    )
    assert out is None
    assert steps == [1]  # no step after the one during which it was cancelled
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.ones((90, 96), np.int32)}, "not the image's spatial shape"),
        ({"labels": np.zeros((96, 96), np.int32)}, "labels are empty"),
        ({"labels": np.ones((96, 96), np.float32)}, "not instance labels"),
        ({"labels": np.full((96, 96), -1, np.int32)}, "negative values"),
        ({"scribbles": np.zeros((96, 96), np.uint8)}, "scribbles are empty"),
        ({"scribbles": np.full((96, 96), 3, np.uint8)}, "value 3 but the model has 2 classes"),
        ({}, "nothing to learn from"),
    ],
    ids=[
        "shape",
        "empty-labels",
        "float-labels",
        "negative",
        "empty-scribbles",
        "class",
        "nothing",
    ],
)
def test_bad_input_is_refused_before_training(kwargs, message):
    image = nuclei_2d()[0][TRAIN_2D]
    copies = {k: v.copy() for k, v in kwargs.items()}
    events = quick_tune_events("starter", image, (1.0, 1.0), **kwargs)
    with pytest.raises(DatasetError, match=message):
        next(events)
    for key, value in kwargs.items():
        np.testing.assert_array_equal(value, copies[key])


def test_freeze_backbone_is_a_training_option_of_the_loop(tiny, tmp_path):
    """``training.freeze_backbone`` in a plain config: the backbone as it started, the rest
    trained."""
    from napari_rat.model import load_checkpoint

    config = tiny(training={"epochs": 1, "freeze_backbone": True}, data={"val_fraction": 0.0})
    start = save_checkpoint(build_model(config.model), tmp_path / "start.safetensors", config.model)
    initial = load_checkpoint(start).state_dict()
    events = list(train_events(config, init_from=str(start)))
    trained = load_checkpoint(events[-1].path).state_dict()
    assert all(torch.equal(initial[k], trained[k]) for k in initial if k.startswith("backbone."))
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if k.startswith("out."))


def test_quick_tune_config_follows_the_checkpoint():
    info = starter_model().checkpoint_info
    config = quick_tune_config(info, (40, 300), steps=7)
    assert config.data.source == "in_memory" and config.training.freeze_backbone
    # The checkpoint's 64^2 crops enlarged to 128^2, no larger than the image.
    assert config.data.crop_size == [40, 128]
    assert config.training.steps_per_epoch == 7 and config.training.epochs == 1
    assert config.model.sga_attention_type == "local"
    assert config.model.model_dump(exclude={"sga_attention_type"}) == info.model_config.model_dump(
        exclude={"sga_attention_type"}
    )


def test_scribbles_win_over_labels_where_painted():
    from napari_rat.train.datasets import targets_from_labels

    labels = np.zeros((6, 6), np.int32)
    labels[1:4, 1:4] = 1
    painted = np.full((6, 6), -1, np.int32)
    painted[2, 2] = 0  # "this pixel is background", against the labels
    painted[5, 5] = 1  # "this pixel is the object class", against the labels
    classes, boundary, _ = targets_from_labels(labels, painted)
    expected = (labels > 0).astype(np.int64)
    expected[2, 2], expected[5, 5] = 0, 1
    np.testing.assert_array_equal(classes, expected)
    assert boundary[2, 2] == 0 and boundary[5, 5] == -1  # objects painted: boundary unknown
    assert boundary[1, 1] == 1 and boundary[0, 0] == 0  # elsewhere from the labels


def test_spacing_in_other_units_reaches_the_model_in_its_unit():
    image, labels = nuclei_2d()
    events = quick_tune_events(
        "starter",
        image[TRAIN_2D],
        (1000.0, 1000.0),
        units="nanometer",
        labels=labels[TRAIN_2D],
        steps=1,
        crop_size=(32, 32),
    )
    while True:
        try:
            next(events)
        except StopIteration as stop:
            tuned = stop.value
            break
    assert tuned.checkpoint_info.extra["trained_on"][0]["spacing"] == [1.0, 1.0]
    assert tuned.checkpoint_info.training_spacing == [1.0, 1.0]


def test_a_model_without_its_checkpoint_is_refused(tiny):
    model = build_model(tiny().model)
    image, labels = nuclei_2d()
    with pytest.raises(ValueError, match="load it with napari_rat.model.load_checkpoint"):
        quick_tune(model, image[TRAIN_2D], (1.0, 1.0), labels=labels[TRAIN_2D])
