"""``napari-rat convert IN OUT.zarr``: TIFF / OME-TIFF / NumPy to a multiscale OME-Zarr."""

from __future__ import annotations

import argparse
import sys
import time


class _ProgressLine:
    """One self-overwriting progress line on stderr (a plain line per update when not a tty)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_message = ""

    def __call__(self, fraction: float, message: str) -> None:
        elapsed = time.monotonic() - self.start
        line = f"convert: {message} {fraction * 100:5.1f}% ({elapsed:.1f} s)"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif fraction >= 1.0 or message != self.last_message:
            print(line, file=sys.stderr, flush=True)
        self.last_message = message

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _units(text: str) -> str:
    """``--units``: an OME-NGFF length unit (or its symbol), checked before anything is read."""
    from napari_rat.io.units import ngff_space_unit

    try:
        return ngff_space_unit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from napari_rat.errors import CommandError
    from napari_rat.io import OmeZarrError, convert

    progress = None if args.quiet else _ProgressLine()
    try:
        out = convert(
            args.input,
            args.output,
            spacing=args.spacing,
            units=args.units,
            translation=args.translation,
            ngff_version=args.ngff,
            levels=args.levels,
            chunks=args.chunks,
            overwrite=args.overwrite,
            progress=progress,
        )
    except (OmeZarrError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        if progress is not None:
            progress.close()
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a TIFF / OME-TIFF / .npy image to a multiscale OME-Zarr (streaming)",
        description="Convert a TIFF, OME-TIFF or NumPy (.npy) image to a multiscale OME-Zarr. "
        "Physical sizes come from the OME-XML when present, from --spacing otherwise. "
        "Reads and writes chunk by chunk: memory stays bounded by the chunks.",
    )
    parser.add_argument("input", help="input .tif / .ome.tif / .npy file")
    parser.add_argument("output", help="output .zarr folder (must not exist)")
    parser.add_argument(
        "--spacing",
        nargs="+",
        type=float,
        metavar="S",
        help="voxel size per spatial axis, e.g. --spacing Z Y X (overrides the file's)",
    )
    parser.add_argument(
        "--translation",
        nargs="+",
        type=float,
        metavar="T",
        help="world position of the first voxel per spatial axis",
    )
    parser.add_argument(
        "--units",
        type=_units,
        help="spatial unit: an OME-NGFF name such as micrometer, or um, nm... (default: the "
        "file's)",
    )
    parser.add_argument("--ngff", choices=["0.4", "0.5"], default="0.5", help="OME-NGFF version")
    parser.add_argument("--levels", type=int, help="number of pyramid levels (default: auto)")
    parser.add_argument("--chunks", nargs="+", type=int, metavar="N", help="chunk shape")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=_run)
