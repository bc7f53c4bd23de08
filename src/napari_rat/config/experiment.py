"""The whole experiment: ``version`` plus the five sections, and YAML in and out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from napari_rat.atomic_files import atomic_path
from napari_rat.config._base import StrictModel
from napari_rat.config.cluster import ClusterConfig
from napari_rat.config.data import DataConfig
from napari_rat.config.deepspeed import DeepSpeedConfig
from napari_rat.config.model import ModelConfig
from napari_rat.config.training import TrainingConfig
from napari_rat.spelling import did_you_mean

CONFIG_VERSION = 1

#: Above this many backbone parameters, training without DeepSpeed draws a warning.
LARGE_MODEL_PARAMETERS = 50_000_000


class ExperimentConfig(StrictModel):
    """One experiment or job recipe: what the GUI builds, the CLI reads and a cluster job gets."""

    version: int = Field(CONFIG_VERSION, description="Schema version of this file.")
    name: str = "experiment"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        if self.version != CONFIG_VERSION:
            raise ValueError(
                f"config version {self.version} is not supported by this napari-rat "
                f"(expects {CONFIG_VERSION}); update the file or napari-rat"
            )
        if len(self.data.crop_size) != self.model.spatial_dims:
            raise ValueError(
                f"data.crop_size {self.data.crop_size} has {len(self.data.crop_size)} values but "
                f"model.spatial_dims is {self.model.spatial_dims}"
            )
        if self.data.spacing is not None and len(self.data.spacing) != self.model.spatial_dims:
            raise ValueError(
                f"data.spacing {self.data.spacing} has {len(self.data.spacing)} values but "
                f"model.spatial_dims is {self.model.spatial_dims}"
            )
        if self.model.spacing_blind and self.data.spacing is not None:
            told = self.model.spacing
            told = told if isinstance(told, list) else [told] * self.model.spatial_dims
            if [float(s) for s in told] != [float(s) for s in self.data.spacing]:
                raise ValueError(
                    f"model.spacing_blind tells the model model.spacing {self.model.spacing}, "
                    f"which must be the training data's native spacing data.spacing "
                    f"{self.data.spacing}; set model.spacing: {self.data.spacing}"
                )
        if self.training.backend == "deepspeed" and not self.deepspeed.enabled:
            raise ValueError(
                "training.backend is 'deepspeed' but deepspeed.enabled is false; "
                "set deepspeed.enabled: true"
            )
        if self.training.freeze_backbone and self.model.variant != "rat_segmentation":
            raise ValueError(
                f"training.freeze_backbone trains the decoder and head, but model.variant "
                f"{self.model.variant!r} has none; use variant: rat_segmentation or set "
                "freeze_backbone: false"
            )
        if self.training.precision == "fp16" and self.training.device == "cpu":
            raise ValueError("fp16 is not supported on the CPU; use precision: bf16 or fp32")
        return self

    def warnings(self) -> list[str]:
        """Advice that does not make the config invalid."""
        out = []
        n = self.model.estimated_parameters()
        if n > LARGE_MODEL_PARAMETERS and not self.deepspeed.enabled:
            out.append(
                f"the model has about {n / 1e6:.0f}M parameters and deepspeed is disabled; "
                "training may run out of memory: set deepspeed.enabled: true (ZeRO 2 or 3)"
            )
        return out


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: where (file and YAML path) and what."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigFileError(ValueError):
    """A config file that cannot be used; ``problems`` lists each problem with its YAML path."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _keys_at(loc: tuple) -> list[str]:
    """The keys the config section at YAML path ``loc`` accepts (none known: empty)."""
    section: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = section.model_fields.get(str(part))
        kind = field.annotation if field is not None else None
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return []
        section = kind
    return list(section.model_fields)


def _problems_from_validation(file: str, exc: ValidationError) -> list[ConfigProblem]:
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            valid = _keys_at(err["loc"][:-1])
            hint = did_you_mean(key, valid) or (
                f"; valid keys: {', '.join(sorted(valid))}" if valid else " (misspelled?)"
            )
            message = f"unknown key {key!r}{hint}"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in ("missing",):
                received = err["input"]
                if not isinstance(received, dict):
                    message += f" (got {received!r})"
        problems.append(ConfigProblem(file, path, message))
    return problems


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigFileError([ConfigProblem(str(path), "", "no such file")]) from None
    except OSError as exc:
        raise ConfigFileError([ConfigProblem(str(path), "", f"cannot read: {exc}")]) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError([ConfigProblem(str(path), "", f"not valid YAML: {exc}")]) from None


def load_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML file.

    Raises
    ------
    ConfigFileError
        With every problem and its YAML path (for example ``model.feture_dims``).
    """
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigFileError(
            [
                ConfigProblem(
                    str(path), "", f"expected a mapping at the top, got {type(raw).__name__}"
                )
            ]
        )
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigFileError(_problems_from_validation(str(path), exc)) from None


def config_from_yaml_text(text: str, source: str = "<yaml>") -> ExperimentConfig:
    """Validate an experiment given as YAML text (as a cluster job receives it)."""
    raw = yaml.safe_load(text) or {}
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigFileError(_problems_from_validation(source, exc)) from None


def dump_config(config: ExperimentConfig) -> str:
    """The config as YAML text (every field, JSON-compatible values)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: ExperimentConfig, path: str | os.PathLike) -> Path:
    """Write the config as YAML, atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(config))
    return path


def check_config_file(path: str | os.PathLike) -> tuple[list[ConfigProblem], list[str]]:
    """Validate a file; return ``(problems, warnings)`` instead of raising."""
    try:
        config = load_config(path)
    except ConfigFileError as exc:
        return exc.problems, []
    return [], config.warnings()
