"""The ``training`` section: the one training loop's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from napari_rat.config._base import StrictModel


class TrainingConfig(StrictModel):
    """Optimiser, schedule, precision and checkpointing of the training loop."""

    backend: Literal["local", "deepspeed", "ray"] = "local"
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="Gradient clipping is always on.")
    accumulation_steps: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "runs"
    run_name: str = "napari-rat"
    val_every: int = Field(1, ge=1, description="Validate every N epochs.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    seed: int = 0
    dice_weight: float = Field(1.0, ge=0, description="Weight of the Dice loss beside CE.")
    boundary_weight: float = Field(1.0, ge=0, description="Weight of the boundary BCE.")
    contact_weight: float = Field(
        1.0,
        ge=1,
        description="How many times a boundary pixel where two instances touch counts in the "
        "boundary BCE (merged touching objects are the usual instance error).",
    )
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="Cosine floor, x learning_rate.")
    time_limit_minutes: float | None = Field(
        None, gt=0, description="Stop (and save) after this long; the schedule is unchanged."
    )
    log_every: int = Field(10, ge=1, description="Steps between progress reports.")
    freeze_backbone: bool = Field(
        False,
        description="Train only the decoder and head: the RAT backbone's weights stay as they "
        "were loaded (quick fine-tuning on a few corrected labels or scribbles).",
    )
