"""A model card: what a checkpoint was trained on, how it was split and how it scored.

The card lives in the checkpoint's safetensors metadata under ``card`` (JSON), beside the model
config (:mod:`napari_rat.model.checkpoint`). Training writes what it knows (data, split, the
best validation scores, the training time); ``napari-rat evaluate --write-card`` adds the
held-out scores. Checkpoints written before cards existed have none and load as before.

This module needs neither torch nor safetensors: a dock reads a card from the file's JSON
header on the GUI thread (:func:`read_card`) without loading the model stack.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

#: The checkpoint metadata key holding the card.
CARD_KEY = "card"
#: A checkpoint header larger than this is not read for its card (safetensors' own limit).
_MAX_HEADER_BYTES = 100_000_000


class ModelCard(BaseModel):
    """What a model was trained on and how it scored.

    Unknown fields are ignored rather than refused, so a card written by a newer napari-rat
    still loads (its known fields shown).
    """

    model_config = ConfigDict(extra="ignore")

    data: str = Field("", description="The training data: source, generated share, spacing.")
    split: str = Field("", description="Which part trained, validated and was held out.")
    validation: dict[str, float] = Field(
        default_factory=dict,
        description="The best validation scores (dice, ap50, min_instance_size) and their step.",
    )
    training_time_s: float | None = Field(None, ge=0, description="Wall time of training.")
    held_out: list[dict[str, float]] = Field(
        default_factory=list,
        description="Held-out scores, one row per spacing factor (factor, dice, iou, ap50).",
    )
    held_out_source: str = Field("", description="Where and how the held-out scores came.")
    held_out_axes: str = Field(
        "", description="The axes the held-out factors coarsened ('z': z alone); '': all."
    )
    notes: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """One or two short lines: the native hold-out (else validation) scores and the data."""
        native = [r for r in self.held_out if r.get("factor", 1.0) == 1.0]
        if native:
            first = f"held out: {_scores(native[0])}"
        elif self.validation:
            first = f"validation: {_scores(self.validation)}"
        else:
            first = "no scores recorded"
        data = self.data.split(";")[0]
        return f"{first}\ntrained on {data}" if data else first

    def text(self) -> str:
        """The card as a few lines of plain text (what the docks show)."""
        lines = []
        if self.data:
            lines.append(f"Data: {self.data}")
        if self.split:
            lines.append(f"Split: {self.split}")
        if self.validation:
            v = self.validation
            step = f" (step {int(v['step'])})" if "step" in v else ""
            scores = _scores(v)
            if "min_instance_size" in v:
                scores += f", min size {v['min_instance_size']:g}"
            lines.append(f"Validation{step}: {scores}")
        if self.training_time_s is not None:
            lines.append(f"Training time: {self.training_time_s:,.0f} s")
        if self.held_out:
            rows = "; ".join(f"{r.get('factor', 1.0):.3g}x {_scores(r)}" for r in self.held_out)
            axes = f" (factors on {self.held_out_axes} alone)" if self.held_out_axes else ""
            lines.append(f"Held out{axes}: {rows}")
            if self.held_out_source:
                lines.append(f"  ({self.held_out_source})")
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def _scores(row: dict[str, float]) -> str:
    parts = []
    if "dice" in row:
        parts.append(f"Dice {row['dice']:.3f}")
    if "ap50" in row:
        parts.append(f"AP@0.5 {row['ap50']:.3f}")
    return ", ".join(parts)


def card_from_metadata(metadata: dict[str, str]) -> ModelCard | None:
    """The card in a checkpoint's string metadata, or ``None`` when it has none.

    Raises
    ------
    ValueError
        When the card is not valid JSON or not a card.
    """
    raw = metadata.get(CARD_KEY)
    if raw is None:
        return None
    return ModelCard.model_validate_json(raw)


def read_card(path: str | os.PathLike) -> ModelCard | None:
    """The card of the checkpoint at ``path`` from its header alone (no torch, no weights);
    ``None`` for a checkpoint without a card, or a file that is not a readable checkpoint
    (loading it says what is wrong)."""
    try:
        with open(Path(path), "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER_BYTES:
                return None
            header = json.loads(fh.read(length))
        return card_from_metadata(header.get("__metadata__") or {})
    except (OSError, ValueError, AttributeError):
        return None
