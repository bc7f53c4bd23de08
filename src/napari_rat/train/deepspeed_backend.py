"""DeepSpeed: its JSON config from the ``deepspeed`` section, an engine for the one loop, and
consolidation of ZeRO shards into the single-file checkpoint.

Measured pitfalls: on the CPU the process group must be ``gloo`` and only bf16 (not fp16) is
supported by DeepSpeed, and the RoSE layers do not run in bf16 on the CPU at all (so the run falls
back to fp32 there, see :mod:`napari_rat.train.precision`); the first initialisation JIT-builds
a small op (about a minute, cached in ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch

from napari_rat.config import ExperimentConfig
from napari_rat.train.distributed import DistEnv, communication_backend, free_port
from napari_rat.train.engines import EngineBase, lr_lambda, param_groups

_MISSING = 'DeepSpeed is not installed; install the training extra: pip install "napari-rat[train]"'


def import_deepspeed():
    """Import DeepSpeed, or raise ``ImportError`` naming the extra to install."""
    try:
        import deepspeed
    except ImportError as exc:  # pragma: no cover - the train extra is installed in CI
        raise ImportError(_MISSING) from exc
    return deepspeed


def deepspeed_config(
    config: ExperimentConfig, *, world_size: int, precision: str, device_type: str
) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``config`` (ZeRO stage, offload, precision, clipping...)."""
    t, ds = config.training, config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage, "contiguous_gradients": True}
    if ds.zero_stage >= 2:
        zero["overlap_comm"] = device_type == "cuda"
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.accumulation_steps,
        "train_batch_size": t.batch_size * t.accumulation_steps * world_size,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # The client optimiser (torch AdamW) is what the in-process loop uses too.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's CPU Adam, built from the config.
        out["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": t.learning_rate, "weight_decay": t.weight_decay},
        }
    if ds.activation_checkpointing:
        out["activation_checkpointing"] = {
            "partition_activations": False,
            "contiguous_memory_optimization": False,
            "cpu_checkpointing": False,
        }
    return out


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpoint_rat_blocks(model: torch.nn.Module) -> int:
    """Recompute every SGA layer and multi-resolution block in backward (activation checkpointing).

    Wraps each block's ``forward`` on the instance, so parameter names (and checkpoints) do not
    change. Returns the number of blocks wrapped.
    """
    backbone = getattr(model, "backbone", model)
    n = 0
    for layers in (backbone.sga_layers, backbone.mr_attn_layers):
        for layer in layers:
            layer.forward = functools.partial(_checkpointed, layer.forward)
            n += 1
    return n


def init_process_group(dist: DistEnv, device_type: str, requested: str = "auto") -> None:
    """Initialise ``torch.distributed`` for DeepSpeed (gloo on CPU, NCCL on GPUs) if needed."""
    deepspeed = import_deepspeed()
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if dist.world_size > 1:
            raise RuntimeError("MASTER_PORT is not set for a multi-process DeepSpeed run")
        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("RANK", str(dist.rank))
    os.environ.setdefault("WORLD_SIZE", str(dist.world_size))
    os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
    deepspeed.init_distributed(
        dist_backend=communication_backend(requested, device_type),
        rank=dist.rank,
        world_size=dist.world_size,
        verbose=False,
    )


class DeepSpeedEngine(EngineBase):
    """The loop's engine interface over ``deepspeed.initialize``."""

    kind = "deepspeed"
    # DeepSpeed holds the weights in the run's precision: inputs are cast, no autocast.
    cast_inputs = True

    def __init__(
        self,
        model: torch.nn.Module,
        config: ExperimentConfig,
        total_steps: int,
        device: torch.device,
        precision: str,
        dist: DistEnv,
    ) -> None:
        deepspeed = import_deepspeed()
        init_process_group(dist, device.type, config.deepspeed.communication_backend)
        t = config.training
        self.device = device
        self.precision = precision
        self.zero_stage = config.deepspeed.zero_stage
        self.is_main = dist.is_main
        if config.deepspeed.activation_checkpointing:
            checkpoint_rat_blocks(model)
        ds_config = deepspeed_config(
            config, world_size=dist.world_size, precision=precision, device_type=device.type
        )
        self.ds_config = ds_config
        schedule = lr_lambda(t.warmup_steps, total_steps, t.min_lr_ratio)
        optimizer = None
        if "optimizer" not in ds_config:
            optimizer = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.learning_rate)
            parameters = None
        else:
            parameters = param_groups(model, t.weight_decay)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(device),
            optimizer=optimizer,
            model_parameters=parameters,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=ds_config,
            dist_init_required=False,
        )
        self.model = self.engine
        self.module = self.engine.module
        self.accumulation = t.accumulation_steps
        self._micro = 0
        self.last_grad_norm = 0.0

    def backward(self, loss: torch.Tensor) -> bool:
        """DeepSpeed's backward and step (it accumulates, clips and schedules)."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()
        self._micro += 1
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.last_grad_norm = float(norm) if norm is not None else 0.0
        return boundary

    @property
    def lr(self) -> float:
        """Current learning rate."""
        return float(self.engine.get_lr()[0])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Complete fp32-or-16-bit weights (collective under ZeRO-3; rank 0 gets them)."""
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
            return {k: v.float() for k, v in (state or {}).items()}
        return {k: v.float() for k, v in self.module.state_dict().items()}

    def save_state(self, folder: Path, trainer_state: dict[str, Any], is_main: bool) -> None:
        """DeepSpeed shards (every rank) plus ``trainer.json`` (rank 0) into ``folder``."""
        self.engine.save_checkpoint(
            str(folder.parent),
            tag=folder.name,
            client_state={"micro": self._micro},
            save_latest=False,
        )
        if is_main:
            (folder / "trainer.json").write_text(json.dumps(trainer_state, indent=1))

    def load_state(self, folder: Path) -> dict[str, Any]:
        """Restore shards, optimiser and schedule; returns the trainer state."""
        path, client = self.engine.load_checkpoint(str(folder.parent), tag=folder.name)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
        self._micro = int((client or {}).get("micro", 0))
        return json.loads((folder / "trainer.json").read_text())


def consolidate_zero_checkpoint(state_folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed state folder (ZeRO 0-3 shards), without a process group.

    The shard files are DeepSpeed's own pickles, written by this run; the result is then saved
    in the single-file safetensors format.
    """
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(state_folder)
    if not any(folder.glob("*optim_states.pt")):
        # ZeRO stage 0: the model file holds full weights.
        model_file = next(folder.glob("mp_rank_00_model_states.pt"))
        state = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
        return {k: v.float() for k, v in state.items()}
    state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    return {k: v.float().contiguous() for k, v in state.items()}
