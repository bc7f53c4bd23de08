"""The ``model`` section: which network to build and its hyper-parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from napari_rat.config._base import StrictModel
from napari_rat.label_faces import MAX_BOUNDARY_WIDTH

IntOrTuple = int | list[int]


class HeadConfig(StrictModel):
    """The segmentation head on top of the RAT backbone.

    Outputs per pixel: one logit per semantic class (``class_names``, background first) plus,
    when ``boundary`` is on, one boundary logit from which instances are derived.
    """

    class_names: list[str] = Field(
        default_factory=lambda: ["background", "foreground"],
        min_length=2,
        description="Semantic classes, background first.",
    )
    boundary: bool = Field(True, description="Predict instance boundaries (for instance labels).")
    decoder_dims: int = Field(32, ge=4, le=1024, description="Channels of the upsampling decoder.")
    boundary_width: int = Field(
        1,
        ge=1,
        le=MAX_BOUNDARY_WIDTH,
        description="Width of the boundary band the head learns, inside each instance, in pixels "
        "of the finest axis (1: the inner contour; on anisotropic crops the band is measured in "
        "physical units, so it stays thinner along a coarser axis). A wider band is easier to "
        "learn from coarse tokens; instances grow back over it and 2 pixels more "
        "(napari_rat.inference.instances.grow_radius).",
    )
    min_instance_size: float | None = Field(
        None,
        ge=0,
        description=(
            "The smallest instance kept, a physical area (2D) or volume (3D) in the spacing's "
            "units squared or cubed: smaller cores seed no instance, and smaller instances join "
            "the instance they touch most or are dropped. None: training picks it on the "
            "validation split (napari_rat.train.evaluation) and stores it in the checkpoint; 0 "
            "at inference."
        ),
    )

    @model_validator(mode="after")
    def _unique_classes(self) -> HeadConfig:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(
                f"class_names must be unique, got {self.class_names}; rename the duplicates"
            )
        return self


class ModelConfig(StrictModel):
    """The RAT hyper-parameters (names as in the reference constructor) and the model variant.

    ``variant`` names an entry of :mod:`napari_rat.model.registry`.
    """

    variant: Literal["rat", "rat_segmentation"] = "rat_segmentation"
    spatial_dims: Literal[1, 2, 3] = 2
    input_features: int = Field(1, ge=1, description="Input channels.")
    proj_kernel_size: IntOrTuple = 7
    feature_dims: int = Field(128, ge=2)
    num_blocks: int = Field(4, ge=1, le=16)
    sga_attention_type: Literal["dense", "exact", "local", "sparse"] = Field(
        "dense",
        description="dense: the package layer; exact: same maths at O(N) memory; "
        "local: windowed, linear in pixels; sparse: the package's natten layer.",
    )
    sga_kernel_size: IntOrTuple = 7
    stride: IntOrTuple | None = None
    num_heads: int = Field(16, ge=1)
    iters: int = Field(3, ge=1, le=16)
    mlp_ratio: float = Field(4.0, gt=0)
    mlp_dropout: float = Field(0.0, ge=0, lt=1)
    mlp_bias: bool = True
    qkv_bias: bool = True
    base_theta: float = Field(1e4, gt=0)
    learnable_rose: bool = True
    learnable_rose_scaling: bool = True
    rose_initial_scaling: Literal["log", "rope", "identity", "linear", "power"] | None = "log"
    init_jitter_std: float = Field(0.02, ge=0)
    rotary_ratio: float = Field(0.5, ge=0, le=1)
    frequency_scaling: Literal["none", "linear", "sqrt", "adaptive"] = "sqrt"
    leading_tokens: int = Field(0, ge=0)
    spacing: float | list[float] | None = Field(
        None,
        description="The default physical spacing, told to the model when a call gives none "
        "(and always, under spacing_blind).",
    )
    spacing_blind: bool = Field(
        False,
        description="A resolution-blind baseline: the model is always told the constant "
        "`spacing` (the training data's native spacing; required) whatever the data's real "
        "spacing, in training, validation and inference. Data are still resampled as usual; "
        "the levels of a pyramid keep their spacing ratios to level 0. The flag is part of the "
        "model config, so it travels in the checkpoint.",
    )
    head: HeadConfig = Field(default_factory=HeadConfig)

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.feature_dims % self.num_heads:
            raise ValueError(
                f"feature_dims ({self.feature_dims}) must be divisible by num_heads "
                f"({self.num_heads}); for example feature_dims: {self.num_heads * 8}"
            )
        if (self.feature_dims // self.num_heads) % 2:
            raise ValueError(
                f"feature_dims / num_heads = {self.feature_dims // self.num_heads} must be even "
                "(rotary embeddings rotate pairs of features)"
            )
        for name in ("proj_kernel_size", "sga_kernel_size", "stride", "spacing"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) != self.spatial_dims:
                raise ValueError(
                    f"{name} has {len(value)} values but spatial_dims is {self.spatial_dims}; "
                    f"give one value or {self.spatial_dims}"
                )
        if self.spacing_blind and self.spacing is None:
            raise ValueError(
                "spacing_blind tells the model one constant spacing, but model.spacing is not "
                "set; set model.spacing to the training data's native spacing (for example "
                "spacing: [1.0, 1.0])"
            )
        return self

    def rat_kwargs(self) -> dict:
        """Keyword arguments for :class:`napari_rat.model.ResolutionAwareTransformer`."""
        return self.model_dump(exclude={"variant", "head"})

    def estimated_parameters(self) -> int:
        """Parameter count of the backbone, computed from the hyper-parameters (no torch)."""
        d = self.feature_dims
        dims = self.spatial_dims
        k = self.sga_kernel_size
        k_vol = 1
        for v in k if isinstance(k, list) else [k] * dims:
            k_vol *= v
        p = self.proj_kernel_size
        p_vol = 1
        for v in p if isinstance(p, list) else [p] * dims:
            p_vol *= v
        hidden = int(d * self.mlp_ratio)
        mlp = 2 * d * hidden + hidden + d
        rotary_dim = int(d * self.rotary_ratio) // (d // self.num_heads) * (d // self.num_heads)
        rose = (
            (rotary_dim // 2 + 4) * dims if self.learnable_rose_scaling else rotary_dim // 2 * dims
        )
        if not self.learnable_rose:
            rose -= rotary_dim // 2 * dims
        sga = d * d * k_vol + d + 3 * d * d + 3 * d + mlp + 7 * d + 1 + rose
        mr = 4 * d * d + 4 * d + mlp + 4 * d + rose
        return self.input_features * d * p_vol + d + self.num_blocks * (sga + mr)
