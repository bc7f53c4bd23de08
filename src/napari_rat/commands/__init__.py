"""Subcommands of ``napari-rat``: one module per command, each with ``register(subparsers)``.

See :mod:`napari_rat.cli` for how they are discovered.
"""
