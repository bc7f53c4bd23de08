"""The two ways the one loop steps a model: plain torch (:class:`LocalEngine`) or DeepSpeed.

Both give the loop the same small interface, :class:`Engine`: ``forward`` (one
implementation, :class:`EngineBase`), ``backward`` (returns ``True`` when an optimiser step
happened: accumulation, clipping and the schedule are inside), ``at_accumulation_boundary``,
``lr``, ``full_state_dict`` (collective under ZeRO-3), ``save_state``/``load_state`` for resuming.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from napari_rat.atomic_files import atomic_path
from napari_rat.config import ExperimentConfig
from napari_rat.inference.devices import autocast_for, precision_dtype


class Engine(Protocol):
    """What the training loop needs of an engine (:class:`LocalEngine`, ``DeepSpeedEngine``)."""

    module: torch.nn.Module
    device: torch.device
    precision: str
    last_grad_norm: float

    def train(self, mode: bool = True) -> None: ...

    def forward(
        self, images: Sequence[torch.Tensor], spacings: Sequence[Sequence[float]]
    ) -> list[torch.Tensor]: ...

    def backward(self, loss: torch.Tensor) -> bool: ...

    @property
    def at_accumulation_boundary(self) -> bool: ...

    @property
    def lr(self) -> float: ...

    def full_state_dict(self) -> dict[str, torch.Tensor]: ...

    def save_state(self, folder: Path, trainer_state: dict[str, Any], is_main: bool) -> None: ...

    def load_state(self, folder: Path) -> dict[str, Any]: ...


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases, norms or scalings."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def freeze_backbone(model: torch.nn.Module) -> None:
    """Train only what sits on top of ``model.backbone``: its parameters stop requiring
    gradients, so no optimiser sees them and their values stay bit-identical.

    Raises
    ------
    ValueError
        ``model`` has no ``backbone`` (the plain ``rat`` variant).
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no backbone to freeze; freeze_backbone needs the "
            "rat_segmentation variant"
        )
    backbone.requires_grad_(False)


class EngineBase:
    """What both engines share: mode switching and the forward step of a batch.

    A subclass sets ``model`` (what is called: the module, its DDP wrapper or the DeepSpeed
    engine), ``device``, ``precision`` and ``cast_inputs``: ``True`` when the weights themselves
    are in the reduced precision (DeepSpeed casts them), so the inputs are cast to match;
    ``False`` to run fp32 weights under autocast (the in-process loop). ``_micro`` counts the
    backward passes and ``accumulation`` the passes per optimiser step.
    """

    model: torch.nn.Module
    device: torch.device
    precision: str
    cast_inputs: bool = False
    accumulation: int = 1
    _micro: int = 0

    def train(self, mode: bool = True) -> None:
        """Switch training/eval mode."""
        self.model.train(mode)

    @property
    def at_accumulation_boundary(self) -> bool:
        """Whether no gradient is half-accumulated (safe to stop and save)."""
        return self._micro % self.accumulation == 0

    def forward(
        self, images: Sequence[torch.Tensor], spacings: Sequence[Sequence[float]]
    ) -> list[torch.Tensor]:
        """Per-level logits of a batch."""
        if self.cast_inputs:
            dtype = precision_dtype(self.precision) or torch.float32
            images = [x.to(self.device, dtype=dtype) for x in images]
        else:
            images = [x.to(self.device, non_blocking=True) for x in images]
        # Weights already in the reduced precision (cast_inputs) run without autocast.
        with autocast_for(self.device, "fp32" if self.cast_inputs else self.precision):
            return self.model(images if len(images) > 1 else images[0], list(spacings))


class LocalEngine(EngineBase):
    """AdamW, warm-up + cosine, clipping, accumulation and autocast in plain torch."""

    kind = "local"

    def __init__(
        self,
        model: torch.nn.Module,
        config: ExperimentConfig,
        total_steps: int,
        device: torch.device,
        precision: str,
        *,
        distributed: bool = False,
    ) -> None:
        t = config.training
        self.device = device
        self.module = model.to(device)
        self.model: torch.nn.Module = self.module
        if distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            param_groups(self.module, t.weight_decay), lr=t.learning_rate
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.warmup_steps, total_steps, t.min_lr_ratio)
        )
        self.grad_clip = t.grad_clip
        self.accumulation = t.accumulation_steps
        self.precision = precision
        self._scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self._micro = 0
        self.last_grad_norm = 0.0

    def backward(self, loss: torch.Tensor) -> bool:
        """Accumulate ``loss``; step (clip, optimiser, schedule) every ``accumulation_steps``."""
        scaled = loss / self.accumulation
        if self._scaler is not None:
            self._scaler.scale(scaled).backward()
        else:
            scaled.backward()
        self._micro += 1
        if self._micro % self.accumulation:
            return False
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.last_grad_norm = float(norm)
        if self._scaler is not None:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    @property
    def lr(self) -> float:
        """Current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's complete weights."""
        return self.module.state_dict()

    def save_state(self, folder: Path, trainer_state: dict[str, Any], is_main: bool) -> None:
        """Weights, optimiser and schedule into ``folder`` (only the main rank writes)."""
        if not is_main:
            return
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().cpu().contiguous().clone() for k, v in self.full_state_dict().items()
        }
        save_file(tensors, str(folder / "weights.safetensors"))
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "micro": self._micro,
            },
            folder / "optimizer.pt",
        )
        _write_json(folder / "trainer.json", trainer_state)

    def load_state(self, folder: Path) -> dict[str, Any]:
        """Restore what :meth:`save_state` wrote; returns the trainer state."""
        from safetensors.torch import load_file

        self.module.load_state_dict(load_file(str(folder / "weights.safetensors")))
        # weights_only: no pickled code runs (tensors and plain containers only).
        state = torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._micro = int(state["micro"])
        return json.loads((folder / "trainer.json").read_text())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
