"""The ``data`` section: where images and labels come from and how crops are sampled."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from napari_rat.config._base import StrictModel


class DataConfig(StrictModel):
    """Training and evaluation data.

    ``source`` chooses the dataset: ``synthetic`` (generated nuclei with a known spacing),
    ``ome_zarr`` (images with a ``labels/`` group), ``tiff`` (image/label file pairs) or
    ``stardist_nuclei_2d`` (the bundled real 2D nuclei image, see the README).
    """

    source: Literal["synthetic", "ome_zarr", "tiff", "stardist_nuclei_2d"] = "synthetic"
    paths: list[str] = Field(default_factory=list, description="Images (OME-Zarr or TIFF).")
    label_paths: list[str] = Field(default_factory=list, description="Label TIFFs (tiff source).")
    label_name: str | None = Field(None, description="Which labels/<name> of an OME-Zarr.")
    spacing: list[float] | None = Field(None, description="Physical voxel size when files lack it.")
    units: str = "micrometer"
    crop_size: list[int] = Field(default_factory=lambda: [64, 64], min_length=1, max_length=3)
    multi_scale: bool = Field(False, description="Feed several pyramid levels to the model.")
    scales: list[int] = Field(
        default_factory=lambda: [1], description="Downsampling factors of the levels fed."
    )
    spacing_augmentation: tuple[float, float] | None = Field(
        None, description="Random rescale range (e.g. [0.5, 2.0]); the new spacing goes to RAT."
    )
    flips: bool = True
    rotations: bool = True
    normalization: Literal["percentile", "zscore", "none"] = "percentile"
    val_fraction: float = Field(0.25, ge=0, lt=1, description="Share of the region held out.")
    num_samples: int = Field(64, ge=1, description="Crops per epoch (synthetic: images made).")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source in ("ome_zarr", "tiff") and not self.paths:
            raise ValueError(f"data.source is {self.source!r} but data.paths is empty; list files")
        if self.source == "tiff" and len(self.label_paths) != len(self.paths):
            raise ValueError(
                f"data.source 'tiff' needs one label file per image: {len(self.paths)} images, "
                f"{len(self.label_paths)} label_paths"
            )
        if self.spacing_augmentation is not None:
            lo, hi = self.spacing_augmentation
            if not 0 < lo <= hi:
                raise ValueError(
                    f"spacing_augmentation must be [low, high] with 0 < low <= high, got "
                    f"{list(self.spacing_augmentation)}"
                )
        if any(s < 1 for s in self.scales) or sorted(self.scales) != self.scales:
            raise ValueError(f"scales must be increasing factors >= 1, got {self.scales}")
        if self.multi_scale and len(self.scales) < 2:
            raise ValueError("multi_scale needs at least two scales, e.g. scales: [1, 2]")
        return self
