"""A training set from what the user has in napari: an image and its (corrected) instance labels
written as one OME-Zarr with NGFF ``labels/``, and the ``data.source: ome_zarr`` config that
trains on it.

The image keeps its spacing, units and translation, so a model fine-tuned on it is told the same
physical sizes it will see at prediction. The set is built in a staging folder and moved into
place complete: an interrupted export leaves nothing at the destination.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_rat.config import ExperimentConfig
from napari_rat.io import write_image, write_labels
from napari_rat.io.ome_zarr_writer import staged_store
from napari_rat.train.data_sources import check_label_array

DEFAULT_LABEL_NAME = "training"


class TrainingSetError(ValueError):
    """The image and labels cannot make a training set; the message says what to change."""


def export_training_set(
    dest: str | os.PathLike,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    axes: str,
    spacing: Sequence[float],
    units: str | Sequence[str | None] | None = "micrometer",
    translation: Sequence[float] | None = None,
    label_name: str = DEFAULT_LABEL_NAME,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` (axes ``axes``, e.g. ``"yx"``, ``"zyx"`` or ``"cyx"``) and its instance
    ``labels`` (the image's spatial shape) as a new OME-Zarr at ``dest``.

    Raises
    ------
    TrainingSetError
        Shapes that do not match, labels that are not integers, or no labelled object at all.
    napari_rat.io.OmeZarrError
        ``dest`` exists (without ``overwrite``) or cannot be written.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if len(axes) != image.ndim:
        raise TrainingSetError(
            f"the image has {image.ndim} axes but axes {axes!r} name {len(axes)}"
        )
    spatial_shape = tuple(s for s, a in zip(image.shape, axes, strict=True) if a in "zyx")
    check_label_array(labels, spatial_shape, error=TrainingSetError)
    dest = Path(dest).expanduser().absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staged_store(dest, overwrite) as staged:
        write_image(staged, image, axes=axes, scale=spacing, translation=translation, units=units)
        write_labels(staged, labels.astype(np.uint32, copy=False), label_name)
    return dest


def training_config_for(
    base: ExperimentConfig,
    dataset: str | os.PathLike,
    *,
    label_name: str = DEFAULT_LABEL_NAME,
    units: str | None = None,
    spatial_shape: Sequence[int] | None = None,
    val_fraction: float | None = None,
    run_name: str | None = None,
) -> ExperimentConfig:
    """``base`` trained on an exported set: ``data.source: ome_zarr`` on ``dataset``'s
    ``labels/<label_name>``, the set's own spacing (``data.spacing`` cleared), crops no larger
    than the image, no held-out part (the user's labels all teach)."""
    raw = base.model_dump(mode="json")
    data = raw["data"]
    data.update(
        source="ome_zarr",
        paths=[str(dataset)],
        label_paths=[],
        label_name=label_name,
        spacing=None,
        holdout_fraction=0.0,
    )
    if units:
        data["units"] = units
    if val_fraction is not None:
        data["val_fraction"] = val_fraction
    if spatial_shape is not None:
        data["crop_size"] = [
            min(int(c), int(s)) for c, s in zip(data["crop_size"], spatial_shape, strict=True)
        ]
    if run_name:
        raw["training"]["run_name"] = run_name
    return type(base).model_validate(raw)


def base_config_for_checkpoint(checkpoint: str | os.PathLike) -> ExperimentConfig:
    """A recipe to fine-tune ``checkpoint`` (a file or ``"starter"``): its stored model config,
    its training spacing and units, and the schema's defaults for the rest."""
    from napari_rat.inference.model_loading import checkpoint_path
    from napari_rat.model import read_checkpoint_info

    path = checkpoint_path(checkpoint)
    info = read_checkpoint_info(path)
    model = info.model_config
    return ExperimentConfig.model_validate(
        {
            "name": f"fine-tune {path.stem}",
            "model": model.model_dump(mode="json"),
            "data": {
                "spacing": info.training_spacing,
                "units": info.units,
                "crop_size": [64] * model.spatial_dims,
            },
        }
    )


def with_training_options(config: ExperimentConfig, **options) -> ExperimentConfig:
    """``config`` with the options a training form offers, validated together.

    Keys: ``epochs``, ``learning_rate``, ``batch_size``, ``steps_per_epoch``, ``precision``,
    ``run_name`` (training); ``crop_size`` (data); ``num_workers``, ``gpus_per_worker``
    (cluster); ``zero_stage``, ``offload_optimizer`` (DeepSpeed, turned on by a stage > 0).
    ``None`` values keep the config's.

    Raises
    ------
    pydantic.ValidationError
        An option out of range, or options that contradict each other.
    """
    sections = {
        "training": (
            "epochs",
            "learning_rate",
            "batch_size",
            "steps_per_epoch",
            "precision",
            "run_name",
        ),
        "data": ("crop_size",),
        "cluster": ("num_workers", "gpus_per_worker"),
        "deepspeed": ("zero_stage", "offload_optimizer"),
    }
    known = {key for keys in sections.values() for key in keys}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
    raw = config.model_dump(mode="json")
    for section, keys in sections.items():
        for key in keys:
            if options.get(key) is not None:
                raw[section][key] = options[key]
    if options.get("zero_stage") is not None:
        raw["deepspeed"]["enabled"] = int(options["zero_stage"]) > 0
    return type(config).model_validate(raw)
