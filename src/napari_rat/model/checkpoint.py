"""The single-file checkpoint: weights plus everything needed to use them.

A checkpoint is a `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors are
the model's ``state_dict``; its string metadata holds ``format`` (``napari-rat-checkpoint``),
``format_version``, the full model config (JSON), the training spacing and units, channel and
class names, the intensity normalisation, the pyramid levels the model was trained on
(``level_factors``), the package versions and, when there is one, the model card
(:mod:`napari_rat.model_card`: data, split, scores). Loading parses JSON and raw
tensors only: no pickled code ever runs. Writing is atomic (temporary file, then rename), so a
crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import platform
import struct
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from napari_rat.atomic_files import atomic_path
from napari_rat.config import ModelConfig
from napari_rat.model_card import CARD_KEY, ModelCard, card_from_metadata

FORMAT = "napari-rat-checkpoint"
FORMAT_VERSION = 1
#: safetensors refuses headers above 100 MB; a larger "length" means the file is something else.
_MAX_HEADER_BYTES = 100_000_000
_VERSIONED = ("napari-rat", "torch", "spatial-grouping-attention", "rotary-spatial-embeddings")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message names the file and the fix."""


@dataclass
class CheckpointInfo:
    """Everything in a checkpoint except the weights.

    ``level_factors`` are the pyramid levels the model was trained on: per level, its
    downsampling factor per spatial axis (level 0 is all ones), so inference feeds the same
    levels. ``None`` in checkpoints written before the field existed (their levels follow from
    the count in ``extra["scales"]``; see :mod:`napari_rat.inference.tiled_predict`).
    ``card`` is the model card (``None`` in checkpoints written without one).
    """

    model_config: ModelConfig
    training_spacing: list[float] | None = None
    units: str = "micrometer"
    channel_names: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    level_factors: list[list[int]] | None = None
    card: ModelCard | None = None

    @property
    def class_names(self) -> list[str]:
        """Semantic class names of the segmentation head."""
        return list(self.model_config.head.class_names)


def check_level_factors(level_factors: Any, spatial_dims: int) -> list[list[int]]:
    """``level_factors`` as lists of ints, or ``ValueError`` saying what is wrong with them.

    One entry per level, each ``spatial_dims`` integers >= 1, the first all ones, and each
    level at least as coarse as the one before on every axis.
    """
    ok = isinstance(level_factors, list | tuple) and len(level_factors) >= 1
    levels: list[list[int]] = []
    for level in level_factors if ok else []:
        if not isinstance(level, list | tuple) or len(level) != spatial_dims:
            ok = False
            break
        if not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in level):
            ok = False
            break
        levels.append([int(f) for f in level])
    ok = ok and bool(levels) and all(f == 1 for f in levels[0])
    ok = ok and all(
        b >= a
        for prev, cur in zip(levels, levels[1:], strict=False)
        for a, b in zip(prev, cur, strict=True)
    )
    if not ok:
        raise ValueError(
            f"level_factors must be one list of {spatial_dims} integers >= 1 per pyramid level, "
            f"the first all ones and each level at least as coarse as the one before; got "
            f"{level_factors!r}"
        )
    return levels


def package_versions() -> dict[str, str]:
    """Versions of the packages a checkpoint depends on, plus Python's."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    model_config: ModelConfig,
    *,
    training_spacing: list[float] | None = None,
    units: str = "micrometer",
    channel_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    level_factors: list[list[int]] | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model``'s weights and metadata to ``path`` atomically.

    ``level_factors``: the pyramid levels the model was trained on (see
    :class:`CheckpointInfo`; ``None``: not recorded). ``card``: the model card, if any.

    Returns
    -------
    Path
        The written file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    info = CheckpointInfo(
        model_config=model_config,
        training_spacing=None if training_spacing is None else [float(s) for s in training_spacing],
        units=units,
        channel_names=list(channel_names or []),
        normalization=dict(normalization or {}),
        versions=package_versions(),
        extra=dict(extra or {}),
        level_factors=None
        if level_factors is None
        else check_level_factors([list(v) for v in level_factors], model_config.spatial_dims),
        card=card,
    )
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": model_config.model_dump_json(),
    }
    for key, value in asdict(info).items():
        if key not in ("model_config", CARD_KEY):
            metadata[key] = json.dumps(value)
    if card is not None:
        metadata[CARD_KEY] = card.model_dump_json()
    # Detach and copy: safetensors refuses shared or non-contiguous storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _sniff(path: Path) -> None:
    """Reject what is clearly not a safetensors file, with a message saying what it is."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None
    # A safetensors file is an 8-byte little-endian header length, then the JSON header. Its
    # first byte may be 0x80 (a header of 128 + 256k bytes), like a pickle's opcode, so the
    # pickle test only applies when the bytes do not read as a safetensors header.
    looks_safetensors = (
        len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= size
    )
    if not looks_safetensors and (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: this is a PyTorch pickle (torch.save), not a napari-rat checkpoint. "
            "napari-rat never unpickles files; load its state_dict yourself with "
            "torch.load(weights_only=True) and write it with napari_rat.model.save_checkpoint"
        )
    if len(head) < 9:
        raise CheckpointError(f"{path}: file is empty or truncated ({size} bytes); copy it again")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > _MAX_HEADER_BYTES:
        # Not a truncated checkpoint: its first bytes are not a safetensors header at all.
        raise CheckpointError(
            f"{path}: not a checkpoint file (a napari-rat checkpoint is a .safetensors file; "
            f"this one starts with {head[:9]!r}); give a checkpoint written by napari-rat "
            "training or napari_rat.model.save_checkpoint, or 'starter' for the bundled model"
        )
    if header_len + 8 > size:
        raise CheckpointError(
            f"{path}: truncated checkpoint (its header says {header_len} bytes, the file has "
            f"{size}); copy the checkpoint again"
        )


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Read a checkpoint's metadata without loading its weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc}); copy it again") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file but not a napari-rat checkpoint (no '{FORMAT}' "
            "metadata); write checkpoints with napari_rat.model.save_checkpoint"
        )
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta['format_version']} is newer than this napari-rat "
            f"reads ({FORMAT_VERSION}); upgrade napari-rat"
        )
    try:
        model_config = ModelConfig.model_validate_json(meta["model_config"])
        values = {
            k: json.loads(meta[k])
            for k in meta
            if k in CheckpointInfo.__dataclass_fields__ and k not in ("model_config", CARD_KEY)
        }
        values["card"] = card_from_metadata(meta)
        if values.get("level_factors") is not None:
            values["level_factors"] = check_level_factors(
                values["level_factors"], model_config.spatial_dims
            )
    except (KeyError, ValueError, ValidationError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is invalid ({exc})") from None
    return CheckpointInfo(model_config=model_config, **values)


def write_card(path: str | os.PathLike, card: ModelCard) -> Path:
    """Put ``card`` into the checkpoint at ``path``, replacing any card it had.

    The weights are copied byte for byte and the rest of the metadata kept; the file is
    replaced atomically, so a failure leaves the old checkpoint as it was.

    Raises
    ------
    CheckpointError
        For a missing, corrupt or foreign file.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    path = Path(path)
    read_checkpoint_info(path)  # a napari-rat checkpoint, or a message saying what it is
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc}); copy it again") from None
    metadata[CARD_KEY] = card.model_dump_json()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    sga_attention_type: str | None = None,
) -> torch.nn.Module:
    """Build the model a checkpoint describes and load its weights.

    The returned model is in eval mode and carries the metadata as ``model.checkpoint_info``.
    ``sga_attention_type`` runs the same weights with another attention implementation
    (``"exact"`` gives the ``"dense"`` results at linear memory; ``"local"`` is windowed); the
    weights are interchangeable between them.

    Raises
    ------
    CheckpointError
        For a missing, truncated, corrupt or foreign file, or weights that do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from napari_rat.model.registry import build_model

    path = Path(path)
    info = read_checkpoint_info(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: corrupt checkpoint weights ({exc}); copy it again"
        ) from None
    config = info.model_config
    if sga_attention_type is not None and sga_attention_type != config.sga_attention_type:
        config = config.model_copy(update={"sga_attention_type": sga_attention_type})
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the weights do not match the model config stored with them ({exc})"
        ) from None
    model.to(device).eval()
    model.checkpoint_info = info
    return model
