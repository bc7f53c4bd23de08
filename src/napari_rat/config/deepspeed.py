"""The ``deepspeed`` section: how the DeepSpeed engine is configured."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from napari_rat.config._base import StrictModel


class DeepSpeedConfig(StrictModel):
    """DeepSpeed settings; turned into a DeepSpeed JSON config by the training backend."""

    enabled: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="ZeRO optimizer state on the CPU.")
    offload_params: bool = Field(False, description="ZeRO-3 parameters on the CPU.")
    activation_checkpointing: bool = False
    communication_backend: Literal["auto", "nccl", "gloo"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage 3 (got {self.zero_stage}); "
                "set zero_stage: 3 or offload_params: false"
            )
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError(f"offload_optimizer needs zero_stage 2 or 3 (got {self.zero_stage})")
        return self
