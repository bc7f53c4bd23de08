"""Pretrained models shipped inside the package: one starter model per spatial dimension.

- ``starter_nuclei_2d.safetensors``: a small RAT segmentation model trained by napari-rat's own
  pipeline (``configs/starter_nuclei_2d.yaml``) on the bundled real 2D nuclei image (columns
  0-383; the right quarter held out) plus generated nuclei, with spacing augmentation. Its
  evaluation is in ``docs/starter_model.md``.
- ``starter_nuclei_3d.safetensors``: its 3D counterpart (``configs/starter_nuclei_3d.yaml``),
  trained on the bundled 3D nuclei volume plus generated volumes whose z spacing runs from 1x
  to 4x the lateral one, the model told the spacing. Evaluated in ``docs/starter_model_3d.md``.

Each is named for :func:`napari_rat.inference.model_loading.load_model_for_inference`:
``"starter"`` (2D; for an image, the one matching its dimensions), ``"starter-2d"`` and
``"starter-3d"``.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import TYPE_CHECKING

if (
    TYPE_CHECKING
):  # torch loads with the model, not with the path (docks read cards on the GUI thread)
    import torch

STARTER_NUCLEI_2D = "starter_nuclei_2d.safetensors"
STARTER_NUCLEI_3D = "starter_nuclei_3d.safetensors"
#: The bundled starter file per spatial dimensions.
STARTER_FILES = {2: STARTER_NUCLEI_2D, 3: STARTER_NUCLEI_3D}
#: The name of the bundled 2D starter, and for commands given an image, of the bundled
#: starter of its dimensions.
STARTER = "starter"
#: The names that load a bundled starter, with its spatial dimensions: ``"starter"`` alone is
#: the 2D one (commands given an image pick by its dimensions, :func:`starter_for`).
STARTERS = {STARTER: 2, "starter-2d": 2, "starter-3d": 3}


def starter_for(spatial_dims: int) -> str:
    """The bundled starter's name for an image with ``spatial_dims`` spatial axes: the 3D one
    for volumes, the 2D one (run plane by plane on anything else) otherwise."""
    return "starter-3d" if spatial_dims >= 3 else STARTER


def starter_model_path(spatial_dims: int = 2) -> str:
    """Filesystem path of the ``spatial_dims``-D starter checkpoint (the package is installed
    unzipped).

    Raises
    ------
    ValueError
        For dimensions without a starter (2 and 3 have one).
    """
    if spatial_dims not in STARTER_FILES:
        raise ValueError(
            f"no bundled starter model for {spatial_dims}D images (there are 2D and 3D ones)"
        )
    return str(files(__name__).joinpath(STARTER_FILES[spatial_dims]))


def starter_model(device: str | torch.device = "cpu", spatial_dims: int = 2) -> torch.nn.Module:
    """The ``spatial_dims``-D starter nuclei model, in eval mode, with its metadata in
    ``checkpoint_info``."""
    from napari_rat.model import load_checkpoint

    with as_file(files(__name__).joinpath(STARTER_FILES[spatial_dims])) as path:
        return load_checkpoint(path, device=device)
