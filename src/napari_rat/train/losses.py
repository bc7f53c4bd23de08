"""The segmentation loss: cross-entropy + soft Dice on the classes, BCE on the boundary (each
pixel where two instances touch weighted ``contact_weight`` times, as merges of touching
objects are the usual instance error)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(
    logits: torch.Tensor,
    classes: torch.Tensor,
    boundary: torch.Tensor | None,
    num_classes: int,
    *,
    dice_weight: float = 1.0,
    boundary_weight: float = 1.0,
    contact: torch.Tensor | None = None,
    contact_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one level's logits ``[B, K(+1), *spatial]``; ``classes`` ``-1`` is ignored, and
    so is ``boundary`` ``-1`` (unknown there, e.g. under a scribble).

    ``contact`` (bool, like ``boundary``): the boundary pixels where two instances touch; their
    boundary BCE counts ``contact_weight`` times (a weighted mean over the known pixels).

    Returns the loss and its parts (floats, for logging).
    """
    logits = logits.float()
    class_logits = logits[:, :num_classes]
    valid = classes >= 0
    ce = F.cross_entropy(class_logits, classes.clamp(min=0), reduction="none")
    n_valid = valid.sum().clamp(min=1)
    ce = (ce * valid).sum() / n_valid
    probs = class_logits.softmax(1)
    onehot = F.one_hot(classes.clamp(min=0), num_classes).movedim(-1, 1).float()
    mask = valid.unsqueeze(1).float()
    dims = (0, *range(2, logits.dim()))
    inter = (probs * onehot * mask).sum(dims)
    total = ((probs + onehot) * mask).sum(dims)
    dice = 1 - ((2 * inter + 1) / (total + 1))[1:].mean()
    loss = ce + dice_weight * dice
    parts = {"ce": float(ce.detach()), "dice_loss": float(dice.detach())}
    if boundary is not None and logits.shape[1] > num_classes:
        known = valid & (boundary >= 0)
        bce = F.binary_cross_entropy_with_logits(
            logits[:, num_classes], boundary.float().clamp(min=0), reduction="none"
        )
        weight = known.float()
        if contact is not None and contact_weight != 1.0:
            weight = weight * (1.0 + (contact_weight - 1.0) * contact.float())
        bce = (bce * weight).sum() / weight.sum().clamp(min=1)
        loss = loss + boundary_weight * bce
        parts["boundary_bce"] = float(bce.detach())
    return loss, parts
