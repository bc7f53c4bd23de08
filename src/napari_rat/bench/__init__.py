"""Benchmarks behind ``napari-rat bench``: one module per kind, each with ``register(subparsers)``.

Benchmarks report ratios measured side by side in one run; tests never assert timings.
"""
