"""napari-rat: the Resolution Aware Transformer (RAT) as a napari plugin with a training backend.

Layers (each imports only those below it; import-linter holds them, ``[tool.importlinter]`` in
``pyproject.toml``): ``config`` → ``model`` / ``io`` → ``inference`` → ``train`` → ``cluster`` →
``_widgets`` → ``bench`` → ``commands`` → ``cli``. Importing the package, ``model``, ``io``,
``inference`` or ``config`` never imports Qt, napari, ray or deepspeed.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
