"""napari-rat: the Resolution Aware Transformer (RAT) as a napari plugin with a training backend.

Layers (each imports only those below it): ``config`` → ``model`` → ``io`` → ``inference`` →
``train`` → ``cli`` / ``_widgets``. Importing the package, ``model``, ``io``, ``inference`` or
``config`` never imports Qt, napari, ray or deepspeed.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
