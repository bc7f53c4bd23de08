"""Model registry: a config names a variant and gets it built.

>>> from napari_rat.config import ModelConfig
>>> model = build_model(ModelConfig(variant="rat", feature_dims=16, num_heads=2, num_blocks=1))
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from napari_rat.config import ModelConfig
from napari_rat.model.rat import ResolutionAwareTransformer
from napari_rat.model.segmentation import RATSegmentation

_REGISTRY: dict[str, Callable[[ModelConfig], torch.nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator registering a builder ``f(config) -> nn.Module`` under ``name``."""

    def deco(builder: Callable[[ModelConfig], torch.nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model variant {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return deco


def available_models() -> list[str]:
    """Names of the registered model variants."""
    return sorted(_REGISTRY)


def build_model(config: ModelConfig) -> torch.nn.Module:
    """Build the model named by ``config.variant``."""
    if config.variant not in _REGISTRY:
        raise ValueError(
            f"unknown model variant {config.variant!r}; available: {available_models()}"
        )
    return _REGISTRY[config.variant](config)


@register_model("rat")
def _build_rat(config: ModelConfig) -> torch.nn.Module:
    return ResolutionAwareTransformer(**config.rat_kwargs())


@register_model("rat_segmentation")
def _build_rat_segmentation(config: ModelConfig) -> torch.nn.Module:
    return RATSegmentation(
        config.rat_kwargs(),
        class_names=config.head.class_names,
        boundary=config.head.boundary,
        decoder_dims=config.head.decoder_dims,
    )
