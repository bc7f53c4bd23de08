"""A training set exported from an image and corrected labels, and fine-tuning on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_rat.config import load_config
from napari_rat.io import OmeZarrError, open_pyramid
from napari_rat.sample_data import nuclei_2d
from napari_rat.train.training_set import (
    TrainingSetError,
    export_training_set,
    training_config_for,
)

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(scope="module")
def crop():
    image, labels = nuclei_2d()
    return np.asarray(image)[:96, :128], np.asarray(labels)[:96, :128].astype(np.int32)


def test_export_keeps_placement_and_labels(crop, tmp_path):
    image, labels = crop
    out = export_training_set(
        tmp_path / "set.zarr",
        image,
        labels,
        axes="yx",
        spacing=(0.5, 0.25),
        units="micrometer",
        translation=(10.0, -4.0),
    )
    pyramid = open_pyramid(out)
    level = pyramid.levels[0]
    assert tuple(level.scale) == (0.5, 0.25)
    assert tuple(level.translation) == (10.0, -4.0)
    assert np.array_equal(np.asarray(level.data), image)
    stored = pyramid.labels["training"].levels[0]
    assert np.array_equal(np.asarray(stored.data), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.zarr"]  # no staging left


def test_bad_inputs_are_refused_and_leave_nothing(crop, tmp_path):
    image, labels = crop
    kwargs = {"axes": "yx", "spacing": (1.0, 1.0)}
    with pytest.raises(TrainingSetError, match="labels are empty"):
        export_training_set(tmp_path / "a.zarr", image, np.zeros_like(labels), **kwargs)
    with pytest.raises(TrainingSetError, match="not the image's spatial shape"):
        export_training_set(tmp_path / "a.zarr", image, labels[:50], **kwargs)
    with pytest.raises(TrainingSetError, match="not instance labels"):
        export_training_set(tmp_path / "a.zarr", image, labels.astype(float), **kwargs)
    # Negative values would wrap around to huge uint32 labels in the written set.
    with pytest.raises(TrainingSetError, match="negative values"):
        export_training_set(tmp_path / "a.zarr", image, labels.astype(np.int32) - 1, **kwargs)
    assert list(tmp_path.iterdir()) == []
    export_training_set(tmp_path / "a.zarr", image, labels, **kwargs)
    with pytest.raises(OmeZarrError, match="already exists"):
        export_training_set(tmp_path / "a.zarr", image, labels, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fine_tune_the_starter_on_an_exported_set(crop, tmp_path):
    from napari_rat.model import load_checkpoint
    from napari_rat.pretrained import starter_model_path
    from napari_rat.train.run import run_training

    image, labels = crop
    dataset = export_training_set(
        tmp_path / "set.zarr", image, labels, axes="yx", spacing=(1.0, 1.0)
    )
    base = load_config(CONFIGS / "starter_nuclei_2d.yaml")
    config = training_config_for(
        base, dataset, units="micrometer", spatial_shape=labels.shape, run_name="tuned"
    )
    assert config.data.source == "ome_zarr" and config.data.label_name == "training"
    raw = config.model_dump()
    raw["training"].update(
        epochs=1,
        steps_per_epoch=2,
        warmup_steps=1,
        output_dir=str(tmp_path / "runs"),
        precision="fp32",
    )
    raw["data"].update(num_samples=4, synthetic_fraction=0.0)
    config = type(config).model_validate(raw)
    lines = []
    best = run_training(config, init_from=str(starter_model_path()), log=lines.append)
    tuned = load_checkpoint(best)
    starter = load_checkpoint(starter_model_path())
    changed = [
        name
        for (name, a), b in zip(
            tuned.state_dict().items(), starter.state_dict().values(), strict=True
        )
        if not np.array_equal(a.numpy(), b.numpy())
    ]
    assert changed  # two steps moved the weights...
    # ...a little, from the starter's (a random start would be as far as the weights are large)
    import torch

    flat = [
        torch.cat([t.float().ravel() for t in m.state_dict().values()]) for m in (tuned, starter)
    ]
    assert (flat[0] - flat[1]).norm() < 0.1 * flat[1].norm()
    assert any(line.startswith("napari-rat-event ") for line in lines)
