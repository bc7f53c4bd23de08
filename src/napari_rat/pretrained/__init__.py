"""Pretrained models shipped inside the package.

``starter_nuclei_2d.safetensors``: a small RAT segmentation model trained by napari-rat's own
pipeline (``configs/starter_nuclei_2d.yaml``) on the bundled real 2D nuclei image (columns
0-383; the right quarter held out) plus generated nuclei, with spacing augmentation. Its
evaluation is in ``docs/starter_model.md``.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import TYPE_CHECKING

if (
    TYPE_CHECKING
):  # torch loads with the model, not with the path (docks read cards on the GUI thread)
    import torch

STARTER_NUCLEI_2D = "starter_nuclei_2d.safetensors"


def starter_model_path() -> str:
    """Filesystem path of the starter checkpoint (the package is installed unzipped)."""
    return str(files(__name__).joinpath(STARTER_NUCLEI_2D))


def starter_model(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The starter 2D nuclei model, in eval mode, with its metadata in ``checkpoint_info``."""
    from napari_rat.model import load_checkpoint

    with as_file(files(__name__).joinpath(STARTER_NUCLEI_2D)) as path:
        return load_checkpoint(path, device=device)
