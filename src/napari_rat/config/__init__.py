"""Validated configuration: one schema for the GUI, the CLI and cluster jobs.

``ExperimentConfig`` has the sections ``model``, ``data``, ``training``, ``deepspeed`` and
``cluster``; every model uses ``extra="forbid"`` so a misspelled key is an error. YAML goes in
through :func:`load_config` (``yaml.safe_load`` then ``model_validate``) and out through
:func:`save_config` (``model_dump(mode="json")``). :func:`check_config_file` returns each problem
with its YAML path, for ``napari-rat config check``.
"""

from napari_rat.config.cluster import ClusterConfig
from napari_rat.config.data import DataConfig
from napari_rat.config.deepspeed import DeepSpeedConfig
from napari_rat.config.experiment import (
    CONFIG_VERSION,
    ConfigFileError,
    ConfigProblem,
    ExperimentConfig,
    check_config_file,
    load_config,
    save_config,
)
from napari_rat.config.model import HeadConfig, ModelConfig
from napari_rat.config.training import TrainingConfig

__all__ = [
    "CONFIG_VERSION",
    "ClusterConfig",
    "ConfigFileError",
    "ConfigProblem",
    "DataConfig",
    "DeepSpeedConfig",
    "ExperimentConfig",
    "HeadConfig",
    "ModelConfig",
    "TrainingConfig",
    "check_config_file",
    "load_config",
    "save_config",
]
