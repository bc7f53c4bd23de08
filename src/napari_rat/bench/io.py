"""``napari-rat bench io``: OME-Zarr opening cost and ``convert`` peak memory.

Cases, each measured in a fresh child process (:func:`napari_rat.bench._measure.measure`):

- **open**: a 5-level 3D pyramid whose level 0 is 512 x 2048 x 2048 (uint16, 4 GiB nominal),
  written as metadata only (no chunk exists). Opening it must cost metadata time only and read
  no chunk; a key-recording store counts the keys read.
- **convert**: a ~1 GiB uint16 volume as ``.npy`` and as TIFF, converted to OME-Zarr 0.5 with
  its pyramid; the peak memory above the child's baseline must stay under 1 GiB.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

OPEN_SHAPE = (512, 2048, 2048)
OPEN_SPACING = (4.0, 1.0, 1.0)


def make_sparse_pyramid(path: str | Path, version: str = "0.5", levels: int = 5) -> Path:
    """Write the metadata of a 5-level pyramid (no chunks): level 0 is ``OPEN_SHAPE``."""
    import zarr
    from zarr.storage import LocalStore

    from napari_rat.io.downsampling import level_shape, level_transform, plan_factors
    from napari_rat.io.ngff_formats import format_for
    from napari_rat.io.ome_zarr_writer import make_axes

    axes = make_axes("zyx", "micrometer")
    factors = plan_factors(OPEN_SHAPE, OPEN_SPACING, [0, 1, 2], levels)
    transforms = [level_transform(OPEN_SPACING, (10.0, 0.0, 0.0), f, "mean") for f in factors]
    fmt = format_for(version)
    ms = fmt.multiscale(axes, [t[0] for t in transforms], [t[1] for t in transforms])
    group = zarr.open_group(
        LocalStore(path),
        mode="w",
        zarr_format=fmt.zarr_format,
        attributes=fmt.image_attributes(ms),
    )
    for i, f in enumerate(factors):
        group.create_array(
            str(i),
            shape=level_shape(OPEN_SHAPE, f),
            dtype="uint16",
            chunks=(64, 256, 256),
            fill_value=0,
            **fmt.array_options(axes),
        )
    return Path(path)


def case_open(path: str, record: bool) -> tuple[Any, str]:
    """Measured case: open the sparse pyramid (optionally through a key-recording store)."""
    # Imports happen in set-up so the measurement is the opening itself.
    import dask.array  # noqa: F401
    import ome_zarr_models.v04.image  # noqa: F401
    import ome_zarr_models.v05.image  # noqa: F401
    import zarr  # noqa: F401
    from zarr.storage import LocalStore

    from napari_rat.io import open_pyramid
    from napari_rat.io.store_wrappers import KeyRecordingStore

    def run() -> dict[str, Any]:
        source: Any = path
        if record:
            source = KeyRecordingStore(LocalStore(path, read_only=True))
        pyramid = open_pyramid(source)
        out: dict[str, Any] = {
            "levels": len(pyramid.levels),
            "shape0": pyramid.levels[0].shape,
        }
        if record:
            out["keys_read"] = len(source.reads)
            out["chunk_reads"] = len(source.chunk_reads)
        return out

    return run, "cpu"


def write_volume(path: Path, shape: tuple[int, ...], kind: str) -> Path:
    """Write a uint16 volume slab by slab (never whole in memory) as ``.npy`` or TIFF."""
    z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x]
    pattern = ((yy // 7 + xx // 5) % 2048).astype(np.uint16)

    def slab(k: int) -> np.ndarray:
        return (pattern + np.uint16(k * 3)) % np.uint16(4096)

    if kind == "npy":
        # Header then slabs with plain writes: a memory map would inflate this process's RSS,
        # and a child forked from it would inherit that high-water mark.
        with open(path, "wb") as fh:
            header = {"descr": "<u2", "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(fh, header)
            for k in range(z):
                slab(k).astype("<u2").tofile(fh)
        return path
    import tifffile

    tifffile.imwrite(
        path,
        (slab(k) for k in range(z)),
        shape=shape,
        dtype=np.uint16,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0},
    )
    return path


def case_convert(src: str, dest: str, spacing: list[float] | None) -> tuple[Any, str]:
    """Measured case: ``convert`` one file to OME-Zarr 0.5."""
    from napari_rat.io import convert

    def run() -> dict[str, Any]:
        out = convert(src, dest, spacing=spacing, ngff_version="0.5", overwrite=True)
        return {"levels": len(list(Path(out).glob("[0-9]*")))}

    return run, "cpu"


def _row(name: str, res: Any, note: str) -> str:
    from napari_rat.bench._measure import format_bytes

    secs = f"{res.seconds:.3f} s" if res.seconds is not None else "-"
    return f"{name:<34} {secs:>10} {format_bytes(res.peak_bytes):>10} {note}"


def _run(args: argparse.Namespace) -> int:
    from napari_rat.bench._measure import measure

    work = Path(tempfile.mkdtemp(prefix="napari-rat-bench-io-", dir=args.workdir))
    rows = [f"{'case':<34} {'time':>10} {'peak mem':>10} notes", "-" * 90]
    failed = False
    try:
        for version in ("0.4", "0.5"):
            path = make_sparse_pyramid(work / f"sparse-{version}.zarr", version)
            res = measure(f"{__name__}:case_open", path=str(path), record=False)
            note = res.error or f"{res.result['levels']} levels, level 0 {res.result['shape0']}"
            rows.append(_row(f"open 5-level pyramid v{version}", res, note))
            rec = measure(f"{__name__}:case_open", path=str(path), record=True)
            if rec.error:
                note = rec.error
            else:
                note = f"{rec.result['keys_read']} keys read, {rec.result['chunk_reads']} chunks"
                failed |= rec.result["chunk_reads"] != 0
            rows.append(_row("  same, counting store reads", rec, note))
            failed |= res.error is not None or rec.error is not None
        z = max(1, int(args.size_gb * 1024**3 / (2 * 1024 * 1024)))
        shape = (z, 1024, 1024)
        gib = np.prod(shape) * 2 / 1024**3
        for kind in args.sources:
            src = write_volume(
                work / f"volume.{'npy' if kind == 'npy' else 'ome.tif'}", shape, kind
            )
            spacing = [3.0, 1.0, 1.0] if kind == "npy" else None
            res = measure(
                f"{__name__}:case_convert",
                src=str(src),
                dest=str(work / f"out-{kind}.zarr"),
                spacing=spacing,
            )
            if res.error:
                note = res.error
            else:
                ok = res.peak_bytes is not None and res.peak_bytes < 1024**3
                failed |= not ok
                note = f"{gib:.2f} GiB in, {res.result['levels']} levels, peak < 1 GiB: {ok}"
            failed |= res.error is not None
            rows.append(_row(f"convert {kind} {'x'.join(map(str, shape))}", res, note))
            src.unlink()
            shutil.rmtree(work / f"out-{kind}.zarr", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(rows))
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench io``."""
    parser = subparsers.add_parser(
        "io", help="OME-Zarr: open cost of a big sparse pyramid, convert peak memory"
    )
    parser.add_argument(
        "--size-gb", type=float, default=1.0, help="size of the volume to convert (GiB)"
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=["npy", "tiff"],
        default=["npy", "tiff"],
        help="input formats to convert",
    )
    parser.add_argument("--workdir", help="folder for the temporary files (default: system temp)")
    parser.set_defaults(func=_run)
