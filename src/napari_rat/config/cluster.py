"""The ``cluster`` section: where a training job runs (Ray Train workers, Ray Jobs)."""

from __future__ import annotations

from pydantic import Field, field_validator

from napari_rat.config._base import StrictModel


class ClusterConfig(StrictModel):
    """A Ray cluster: ``address`` ``None`` means the embedded head on 127.0.0.1.

    The token is never stored in the config: ``token_env`` names the environment variable that
    holds it (sent as an ``Authorization: Bearer`` header).
    """

    address: str | None = Field(None, description="Ray dashboard URL, e.g. http://head:8265.")
    token_env: str = "RAY_AUTH_TOKEN"
    num_workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    storage_path: str = "ray_results"
    max_failures: int = Field(1, ge=0)
    num_to_keep: int = Field(2, ge=1)

    @field_validator("address")
    @classmethod
    def _no_wildcard(cls, value: str | None) -> str | None:
        if value is not None and "0.0.0.0" in value:
            raise ValueError(
                f"address {value!r} binds every interface; use 127.0.0.1 or the head's host name"
            )
        return value
