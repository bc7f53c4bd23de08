"""The ``data`` section: where images and labels come from and how crops are sampled."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, model_validator

from napari_rat.config._base import StrictModel


class DataConfig(StrictModel):
    """Training and evaluation data.

    ``source`` chooses the dataset: ``synthetic`` (generated nuclei with a known spacing),
    ``ome_zarr`` (images with a ``labels/`` group), ``tiff`` (image/label file pairs) or
    ``stardist_nuclei_2d`` (the bundled real 2D nuclei image, see the README),
    ``stardist_nuclei_3d`` (the bundled 3D nuclei volume, z spacing twice the lateral) or
    ``in_memory``
    (arrays handed to the training loop in code, e.g. by
    :func:`napari_rat.train.quick_tune.quick_tune`; a YAML file cannot hold them).

    ``scales`` are the pyramid levels fed to the model: ``[1]`` one level, ``[1, 2]`` the crop
    and its 2x downsampled copy (the same factor on every axis). The former ``multi_scale``
    switch only repeated ``len(scales) > 1``: it is still read, checked against ``scales``
    and dropped, with a ``FutureWarning``.
    """

    source: Literal[
        "synthetic", "ome_zarr", "tiff", "stardist_nuclei_2d", "stardist_nuclei_3d", "in_memory"
    ] = "synthetic"
    paths: list[str] = Field(default_factory=list, description="Images (OME-Zarr or TIFF).")
    label_paths: list[str] = Field(default_factory=list, description="Label TIFFs (tiff source).")
    label_name: str | None = Field(None, description="Which labels/<name> of an OME-Zarr.")
    spacing: list[float] | None = Field(None, description="Physical voxel size when files lack it.")
    units: str = "micrometer"
    crop_size: list[int] = Field(default_factory=lambda: [64, 64], min_length=1, max_length=3)
    scales: list[int] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="Downsampling factors of the pyramid levels fed to the model ([1]: one).",
    )
    spacing_augmentation: tuple[float, float] | None = Field(
        None, description="Random rescale range (e.g. [0.5, 2.0]); the new spacing goes to RAT."
    )
    z_spacing_augmentation: tuple[float, float] | None = Field(
        None,
        description="3D only: a further random factor on the first (z) axis's spacing alone, "
        "per batch (e.g. [0.7, 2.0]), so the model sees many z anisotropies; told to RAT too.",
    )
    flips: bool = True
    rotations: bool = True
    normalization: Literal["percentile", "zscore", "none"] = "percentile"
    normalization_percentiles: tuple[float, float] = Field(
        (1.0, 99.8), description="Low and high percentiles mapped to 0 and 1 (percentile)."
    )
    val_fraction: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Share of each image's last axis (a band before the hold-out) for validation.",
    )
    holdout_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of each image's last axis (its far end) never trained or validated "
        "on; `napari-rat evaluate` reports on it.",
    )
    num_samples: int = Field(64, ge=1, description="Training crops per epoch.")
    synthetic_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of training crops drawn from generated nuclei (for sources other "
        "than synthetic).",
    )
    synthetic_images: int = Field(4, ge=1, description="How many nuclei images are generated.")
    synthetic_shape: list[int] | None = Field(
        None, description="Pixel shape of each generated image (default: 4 crops per axis)."
    )
    synthetic_radius: float = Field(4.0, gt=0, description="Mean generated nucleus radius.")
    synthetic_touching: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the generated nuclei pressed against another (touching, with a "
        "faint seam) instead of apart.",
    )
    synthetic_decoy_radius: float | None = Field(
        None,
        gt=0,
        description="Resolution probe: every second generated image holds objects of this "
        "physical radius instead of nuclei, drawn exactly alike but left unlabelled "
        "(background). Under spacing augmentation a decoy at a fine spacing looks like a "
        "nucleus at a coarse one, so only the told spacing tells them apart "
        "(docs/starter_model.md, 'A task that needs the spacing').",
    )
    synthetic_z_anisotropy: tuple[float, float] | None = Field(
        None,
        description="3D only: generated volumes get z spacing from low to high times the "
        "config's z spacing, spread log-evenly over the images (e.g. [0.5, 2.0]).",
    )
    split_synthetic: bool = Field(
        False,
        description="Split generated images into train / validation / hold-out bands like the "
        "real ones (otherwise, mixed into another source, they are all for training).",
    )
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _drop_multi_scale(cls, data: Any) -> Any:
        """Accept the deprecated ``multi_scale`` key when it agrees with ``scales``."""
        if not isinstance(data, dict) or "multi_scale" not in data:
            return data
        data = dict(data)
        multi = data.pop("multi_scale")
        scales = data.get("scales", [1])
        levels = len(scales) if isinstance(scales, list) else None
        if multi is True and levels is not None and levels < 2:
            raise ValueError(
                f"multi_scale: true but scales is {scales}; list the levels in scales "
                "(e.g. scales: [1, 2]) and remove multi_scale"
            )
        if multi is False and levels is not None and levels > 1:
            raise ValueError(
                f"multi_scale: false but scales is {scales}, which feeds {levels} levels; write "
                "scales: [1] for one level (or keep the scales) and remove multi_scale"
            )
        if multi not in (True, False):
            raise ValueError(f"multi_scale must be true or false, got {multi!r}; remove it")
        warnings.warn(
            "data.multi_scale is deprecated and ignored: scales alone says which levels are fed "
            f"(here {scales}); remove multi_scale from the config",
            FutureWarning,
            stacklevel=2,
        )
        return data

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source in ("ome_zarr", "tiff") and not self.paths:
            raise ValueError(f"data.source is {self.source!r} but data.paths is empty; list files")
        if self.source == "in_memory" and (self.val_fraction or self.holdout_fraction):
            raise ValueError(
                "data.source 'in_memory' trains on every annotation it is given; set "
                "val_fraction: 0 and holdout_fraction: 0"
            )
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
        for key in ("z_spacing_augmentation", "synthetic_z_anisotropy"):
            value = getattr(self, key)
            if value is None:
                continue
            if not 0 < value[0] <= value[1]:
                raise ValueError(
                    f"{key} must be [low, high] with 0 < low <= high, got {list(value)}"
                )
            if len(self.crop_size) != 3:
                raise ValueError(
                    f"{key} varies the z spacing of 3D data, but crop_size {self.crop_size} is "
                    f"{len(self.crop_size)}D; remove {key}"
                )
        lo, hi = self.normalization_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(
                "normalization_percentiles must be [low, high] with 0 <= low < high <= 100, got "
                f"{list(self.normalization_percentiles)}"
            )
        if self.val_fraction + self.holdout_fraction >= 0.95:
            raise ValueError(
                f"val_fraction ({self.val_fraction}) + holdout_fraction ({self.holdout_fraction}) "
                "leave almost nothing to train on; keep their sum below 0.95"
            )
        if self.synthetic_shape is not None and len(self.synthetic_shape) != len(self.crop_size):
            raise ValueError(
                f"synthetic_shape {self.synthetic_shape} and crop_size {self.crop_size} have "
                "different numbers of axes"
            )
        if any(s < 1 for s in self.scales) or sorted(self.scales) != self.scales:
            raise ValueError(f"scales must be increasing factors >= 1, got {self.scales}")
        return self
