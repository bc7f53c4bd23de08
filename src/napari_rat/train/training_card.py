"""The model card training writes into its checkpoints (:class:`napari_rat.model_card.ModelCard`):
the data, the split, the validation scores of the saved weights and the training time."""

from __future__ import annotations

from typing import Any

from napari_rat.config import ExperimentConfig
from napari_rat.model_card import ModelCard
from napari_rat.train.crops import split_regions
from napari_rat.train.datasets import DataBundle


def data_description(config: ExperimentConfig, data: DataBundle) -> str:
    """The training data in one line: source, generated share, spacing, augmentation."""
    d = config.data
    parts = [", ".join([d.source, *d.paths])]
    if d.source != "synthetic" and d.synthetic_fraction > 0:
        parts.append(
            f"{d.synthetic_fraction:.0%} of the crops from {d.synthetic_images} generated "
            f"images (nuclei radius {d.synthetic_radius:g}"
            + (f", {d.synthetic_touching:.0%} touching another" if d.synthetic_touching else "")
            + ")"
        )
    if d.synthetic_decoy_radius is not None:
        parts.append(
            f"every second generated image holds unlabelled decoys of radius "
            f"{d.synthetic_decoy_radius:g} instead of nuclei of radius {d.synthetic_radius:g}"
        )
    if d.synthetic_z_anisotropy is not None:
        lo, hi = d.synthetic_z_anisotropy
        parts.append(f"generated volumes' z spacing {lo:g}x-{hi:g}x the config's")
    parts.append(f"spacing {[float(s) for s in data.spacing]} {d.units}")
    if d.spacing_augmentation is not None:
        lo, hi = d.spacing_augmentation
        told = (
            f"the model is not told it (spacing_blind: always told {config.model.spacing})"
            if config.model.spacing_blind
            else "the model is told it"
        )
        parts.append(f"resampled to {lo:g}x-{hi:g}x the spacing, {told}")
    if d.z_spacing_augmentation is not None:
        lo, hi = d.z_spacing_augmentation
        parts.append(f"z spacing further resampled to {lo:g}x-{hi:g}x")
    if config.model.spacing_blind and d.spacing_augmentation is None:
        parts.append(f"spacing_blind: always told {config.model.spacing}")
    return "; ".join(parts)


def split_description(config: ExperimentConfig, data: DataBundle) -> str:
    """Which part of each image trained, validated and was held out (never trained on)."""
    d = config.data
    if d.source == "in_memory":
        return "the annotated box of each image in memory; no validation or held-out part"
    out = []
    for image in data.train.images:
        if image.synthetic and d.source != "synthetic" and not d.split_synthetic:
            continue
        boxes = split_regions(image.shape, d.val_fraction, d.holdout_fraction)
        spans = [
            f"{kind} {box[0][-1]}-{box[1][-1] - 1}"
            for kind, box in (
                ("training", boxes["train"]),
                ("validation", boxes["val"]),
                ("held out", boxes["holdout"]),
            )
            if box is not None
        ]
        out.append(f"{image.name}: last axis {', '.join(spans)}")
    if d.source != "synthetic" and d.synthetic_fraction > 0 and not d.split_synthetic:
        out.append("generated images: training only")
    return "; ".join(out)


def training_card(
    config: ExperimentConfig,
    data: DataBundle,
    *,
    validation: dict[str, Any],
    step: int,
    seconds: float,
    resumed: bool = False,
) -> ModelCard:
    """The card of weights saved at ``step`` with these ``validation`` scores (empty: none)
    after ``seconds`` of training."""
    keep = ("dice", "iou", "ap50", "min_instance_size")
    scores = {k: float(validation[k]) for k in keep if k in validation}
    notes = []
    if resumed:
        notes.append("resumed: the training time counts the last session only")
    if config.training.freeze_backbone:
        notes.append("decoder and head trained, backbone frozen")
    return ModelCard(
        data=data_description(config, data),
        split=split_description(config, data),
        validation={**scores, "step": float(step)} if scores else {},
        training_time_s=round(float(seconds), 1),
        notes=notes,
    )
