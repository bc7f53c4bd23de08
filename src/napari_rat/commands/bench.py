"""``napari-rat bench KIND``: benchmarks measured side by side in one run.

Each benchmark lives in :mod:`napari_rat.bench` as a module exposing ``register(subparsers)``;
they are discovered like the top-level commands.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_rat import bench

    parser = subparsers.add_parser(
        "bench", help="run a benchmark (speed and memory, as ratios measured in one run)"
    )
    sub = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{bench.__name__}.{info.name}").register(sub)
