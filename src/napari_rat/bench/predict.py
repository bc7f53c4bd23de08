"""``napari-rat bench predict``: the tiled engine against the bare model, and memory vs size.

Cases, each in a fresh child process (:func:`napari_rat.bench._measure.measure`):

- **engine**: :func:`napari_rat.inference.predict` over a synthetic OME-Zarr image read lazily
  from disk, writing its results to a zarr store (instances included).
- **bare**: the model's forward alone on random tensors shaped like the same tiles (halo
  included), no IO, no normalisation, no stitching: the floor the engine is compared with.

Reported: time, pixels per second, peak memory above the child's baseline; the engine/bare
throughput ratio (IO, halo and blending overhead) and the peak-memory ratio between an image
and one with 8x the pixels (flat memory means a ratio near 1).

The model (``--model``): ``config`` builds it from a config (``configs/nuclei_2d.yaml`` by
default: local attention) with random weights (speed does not depend on the weights);
``starter`` is the bundled 2D starter model, loaded as the inference dock loads it (local
attention), small enough for the full-size 2D run on 2 CPU cores. ``--no-bare-at-large`` runs
the bare forward at the first size only: the throughput ratio is then measured there and the
memory ratio between all sizes.

``--cluster local --workers 1 2`` adds the engine across a Ray cluster with 1 and 2 workers
sharing ``--cores`` CPUs, against the single-process engine on as many threads
(:mod:`napari_rat.bench._predict_cluster`), at 512x512 and 2048x2048 unless ``--sizes`` says
otherwise: throughput ratio (the 15% target is judged at the larger size, where a run's fixed
costs are spread over 64 tiles), peak memory per worker between sizes, the scheduling overhead
per block, the workers' CPU time against the engine's, and the head's and the workers' start
apart.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.bench._measure import format_bytes, measure

DEFAULT_CONFIG = Path(__file__).parents[3] / "configs" / "nuclei_2d.yaml"
SIZES_2D = [(2048, 2048), (5792, 5792)]
SIZES_3D = [(64, 512, 512), (128, 1024, 1024)]
QUICK_2D = [(512, 512), (1448, 1448)]
#: ``--cluster``'s default sizes: a small image, where a run's fixed costs show, and one 16x
#: larger, where they are spread over 64 tiles as they are over a whole slide's thousands (the
#: 15% overhead target is judged there).
CLUSTER_2D = [(512, 512), (2048, 2048)]


MODELS = ("config", "starter")


def _model(config_path: str, dims: int, attention: str | None, model: str = "config"):
    import torch

    from napari_rat.config import ModelConfig, load_config
    from napari_rat.model import build_model

    if model == "starter":  # the bundled one of these dimensions
        from napari_rat.inference.model_loading import load_model_for_inference, starter_for

        return load_model_for_inference(starter_for(dims), attention=attention).eval()
    if model != "config":
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if config_path:
        cfg = load_config(config_path).model
    else:
        cfg = ModelConfig(spatial_dims=dims, input_features=1)
    if cfg.spatial_dims != dims:
        cfg = cfg.model_copy(
            update={
                "spatial_dims": dims,
                "sga_kernel_size": 5,
                "stride": 2,
                "proj_kernel_size": 5,
                "spacing": None,
            }
        )
    if attention:
        cfg = cfg.model_copy(update={"sga_attention_type": attention})
    torch.manual_seed(0)
    return build_model(cfg).eval()


def make_image(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Path:
    """A synthetic nuclei OME-Zarr of ``shape``, tiled from a small generated patch."""
    import dask.array as da

    from napari_rat.io import write_image
    from napari_rat.synthetic import synthetic_nuclei

    patch_shape = tuple(min(n, 256 if len(shape) == 2 else 64) for n in shape)
    patch, _ = synthetic_nuclei(patch_shape, spacing, seed=0)
    reps = tuple(math.ceil(n / p) for n, p in zip(shape, patch_shape, strict=True))
    chunks = tuple(min(n, 512 if len(shape) == 2 else 128) for n in shape)
    image = da.tile(da.from_array((patch * 1000).astype(np.uint16)), reps)
    image = image[tuple(slice(0, n) for n in shape)].rechunk(chunks)
    axes = "yx" if len(shape) == 2 else "zyx"
    return write_image(path, image, axes=axes, scale=spacing, levels=1, chunks=chunks)


def case_engine(
    image: str,
    config: str,
    dims: int,
    tile: int,
    halo: int,
    store: str,
    device: str,
    attention: str | None,
    precision: str = "auto",
    model: str = "config",
    threads: int | None = None,
):
    """Set-up of the engine case: returns ``(run, device)``; ``threads``: torch's CPU threads
    (the cores the cluster cases share among their workers)."""
    import torch

    from napari_rat.inference import PredictOptions, predict, run_prediction

    if threads:
        torch.set_num_threads(threads)
    from napari_rat.inference.sources import input_from_pyramid
    from napari_rat.io import open_pyramid

    model = _model(config, dims, attention, model)
    source = input_from_pyramid(open_pyramid(image))
    options = PredictOptions(
        tile=(tile,) * dims, halo=(halo,) * dims, device=device, precision=precision
    )

    def run():
        cpu = time.process_time()
        result = run_prediction(
            predict(model, source.image, source.spacing, options=options, store=store)
        )
        return {"instances": result.num_instances, "cpu": time.process_time() - cpu}

    return run, device


def case_bare(
    shape: list[int],
    config: str,
    dims: int,
    tile: int,
    halo: int,
    device: str,
    attention: str | None,
    precision: str = "auto",
    model: str = "config",
):
    """Set-up of the bare-forward case on tiles shaped like the engine's."""
    import torch

    from napari_rat.inference.devices import autocast_for
    from napari_rat.inference.tiling import tile_grid

    model = _model(config, dims, attention, model).to(device)
    tiles = tile_grid(shape, (tile,) * dims, (halo,) * dims, uniform_reads=True)
    shapes = [tuple(s.stop - s.start for s in t.read) for t in tiles]

    def run():
        with torch.no_grad(), autocast_for(torch.device(device), precision):
            for s in shapes:
                x = torch.randn(1, 1, *s, device=device)
                model([x], input_spacing=[(1.0,) * dims])
        return {"tiles": len(shapes)}

    return run, device


def _row(name, shape, runs) -> dict[str, Any]:
    """One table row from the runs of a case: the fastest time and its run's result, the
    highest peak memory."""
    px = math.prod(shape)
    failed = [r for r in runs if r.error]
    seconds = min(r.seconds for r in runs) if not failed else None
    return {
        "case": name,
        "shape": "x".join(map(str, shape)),
        "seconds": seconds,
        "px_per_s": px / seconds if seconds else None,
        "peak": max((r.peak_bytes for r in runs if r.peak_bytes is not None), default=None),
        "error": failed[0].error if failed else None,
        "runs": len(runs),
        # the fastest run's own figures, so that a row's details match its time
        "result": min(runs, key=lambda r: r.seconds).result if not failed else None,
    }


def bench_sizes(args: argparse.Namespace) -> list[tuple[int, ...]]:
    """The image shapes of the run: ``--sizes``, else the quick, cluster or full pair."""
    dims = 3 if args.dims == 3 else 2
    if args.sizes:
        return [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    if dims == 3:
        return SIZES_3D
    if args.quick:
        return QUICK_2D
    return CLUSTER_2D if getattr(args, "cluster", None) else SIZES_2D


def plan_cases(args: argparse.Namespace) -> list[tuple[str, tuple[int, ...]]]:
    """``(case, shape)`` in run order: the engine at every size; the bare forward at every size,
    at the first only (``--no-bare-at-large``) or nowhere (``--skip-bare``)."""
    plan = []
    for i, shape in enumerate(bench_sizes(args)):
        plan.append(("engine", shape))
        if getattr(args, "cluster", None):
            plan += [(f"cluster {w}", shape) for w in args.workers]
        if not args.skip_bare and (i == 0 or not args.no_bare_at_large):
            plan.append(("bare forward", shape))
    return plan


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every case and return the rows of the table."""
    dims = 3 if args.dims == 3 else 2
    spacing = (2.0, 0.5, 0.5) if dims == 3 else (0.5, 0.5)
    tile = args.tile or (256 if dims == 2 else 64)
    halo = args.halo if args.halo is not None else (32 if dims == 2 else 12)
    common = {
        "config": args.config,
        "dims": dims,
        "tile": tile,
        "halo": halo,
        "device": args.device,
        "attention": args.attention,
        "precision": args.precision,
        "model": args.model,
    }
    runs: dict[tuple[str, tuple[int, ...]], list] = {}
    plan = plan_cases(args)
    repeat = max(1, args.repeat)
    work = Path(tempfile.mkdtemp(prefix="napari-rat-bench-predict-"))
    try:
        # Repeats go round the whole plan, so engine and bare runs interleave and share
        # whatever load the machine has at the time.
        for turn in range(repeat):
            for case, shape in plan:
                if any(r.error for r in runs.get((case, shape), [])):
                    continue
                name = "x".join(map(str, shape))
                if case == "engine" or case.startswith("cluster"):
                    image = work / f"img_{name}.zarr"
                    if not image.exists():
                        make_image(image, shape, spacing)
                    store = work / f"pred_{name}.zarr"
                    res = _measure_engine(case, args, image, store, common)
                    shutil.rmtree(store, ignore_errors=True)
                    last = [c for c, s in plan if s == shape and c != "bare forward"][-1]
                    if (turn == repeat - 1 and case == last) or res.error:  # the image's last run
                        shutil.rmtree(image, ignore_errors=True)
                else:
                    res = measure("napari_rat.bench.predict:case_bare", shape=list(shape), **common)
                runs.setdefault((case, shape), []).append(res)
                label = f" (run {turn + 1} of {repeat})" if repeat > 1 else ""
                print(_format_row(_row(case, shape, [res])) + label, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [_row(case, shape, runs[(case, shape)]) for case, shape in plan]


def _measure_engine(case: str, args, image: Path, store: Path, common: dict):
    """The single-process engine on ``--cores`` threads, or ``cluster W``: W workers sharing
    those cores (a worker's peak memory is the row's)."""
    if case == "engine":
        threads = args.cores if getattr(args, "cluster", None) else None
        return measure(
            "napari_rat.bench.predict:case_engine",
            image=str(image),
            store=str(store),
            threads=threads,
            **common,
        )
    res = measure(
        "napari_rat.bench._predict_cluster:case_cluster",
        image=str(image),
        store=str(store),
        workers=int(case.split()[1]),
        cores=args.cores,
        cluster=args.cluster,
        block=args.block,
        **common,
    )
    if not res.error:
        res.peak_bytes = res.result["worker_peak"]
    return res


def _format_row(r) -> str:
    if r["error"]:
        return f"| {r['case']} | {r['shape']} | failed: {r['error'].splitlines()[-1]} | | |"
    return (
        f"| {r['case']} | {r['shape']} | {r['seconds']:.1f} s | {r['px_per_s']:.0f} | "
        f"{format_bytes(r['peak'])} |"
    )


def format_table(rows, args) -> str:
    """Markdown table plus the ratios the targets are about."""
    lines = [
        f"napari-rat bench predict (model {args.model}, device {args.device}, "
        f"tile {args.tile or 'default'}, precision {args.precision}; "
        f"fastest of {max(1, args.repeat)} run(s), highest peak)",
        "",
        "| case | shape | time | pixels/s | peak memory |",
        "|---|---|---|---|---|",
    ]
    lines += [_format_row(r) for r in rows]
    engine = [r for r in rows if r["case"] == "engine" and not r["error"]]
    bare = {r["shape"]: r for r in rows if r["case"] == "bare forward" and not r["error"]}
    lines.append("")
    for r in engine:
        if r["shape"] in bare:
            ratio = r["px_per_s"] / bare[r["shape"]]["px_per_s"]
            lines.append(
                f"- {r['shape']}: engine throughput = {ratio:.2f} x bare forward "
                f"(overhead {100 * (1 - ratio):.0f}%)"
            )
    if len(engine) >= 2:
        small, big = engine[0], engine[-1]
        lines.append(
            f"- peak memory {big['shape']} / {small['shape']}: "
            f"{big['peak'] / max(small['peak'], 1):.2f} x"
        )
    lines += _cluster_lines(rows)
    return "\n".join(lines)


def _cluster_lines(rows) -> list[str]:
    """Cluster throughput against the engine, worker memory between sizes, overhead per block,
    and the fixed costs of a run (head start apart, workers' start, planning)."""
    ok = [r for r in rows if not r["error"]]
    engine = {r["shape"]: r for r in ok if r["case"] == "engine"}
    lines = []
    cases = sorted({r["case"] for r in ok if r["case"].startswith("cluster")})
    for case in cases:
        mine = [r for r in ok if r["case"] == case]
        for r in mine:
            extra = r.get("result") or {}
            if r["shape"] not in engine:
                continue
            ref = engine[r["shape"]]
            ratio = r["px_per_s"] / ref["px_per_s"]
            cpu = (ref.get("result") or {}).get("cpu")
            lines.append(
                f"- {r['shape']}: {case} worker(s) = {ratio:.2f} x single-process engine "
                f"throughput ({r['seconds']:.1f} s against {ref['seconds']:.1f} s; "
                f"{'within' if ratio >= 1 / 1.15 else 'outside'} 15%); "
                f"scheduling overhead {extra.get('overhead_per_block', 0):.3f} s per block "
                f"({extra.get('blocks', 0)} blocks); workers ready (model loaded) "
                f"{extra.get('worker_ready', 0):.1f} s and first block sent "
                f"{extra.get('planned', 0):.1f} s into the run; workers' CPU "
                f"{extra.get('worker_cpu', 0):.1f} s"
                + (f" against the engine's {cpu:.1f} s" if cpu else "")
                + f" (workers at nice {extra.get('worker_nice', 0)})"
                + f"; head start {extra.get('head_start') or 0:.1f} s and worker processes' "
                f"start {extra.get('startup', 0):.1f} s, not timed"
            )
        if len(mine) >= 2:
            small, big = mine[0], mine[-1]
            lines.append(
                f"- {case}: peak memory per worker {big['shape']} / {small['shape']}: "
                f"{big['peak'] / max(small['peak'], 1):.2f} x"
            )
    return lines


def _main(args: argparse.Namespace) -> int:
    rows = run_bench(args)
    table = format_table(rows, args)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0 if all(not r["error"] for r in rows) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="tiled engine vs bare model; memory vs image size")
    p.add_argument("--dims", type=int, choices=[2, 3], default=2)
    p.add_argument("--sizes", nargs="+", metavar="YxX", help="image shapes, e.g. 2048x2048")
    p.add_argument("--quick", action="store_true", help="512^2 and 1448^2 (8x) only")
    p.add_argument(
        "--model",
        choices=MODELS,
        default="config",
        help="config: built from --config, random weights; starter: the bundled model of "
        "--dims (2D or 3D)",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="config whose model is used")
    p.add_argument("--attention", choices=["dense", "exact", "local"], default=None)
    p.add_argument("--tile", type=int)
    p.add_argument("--halo", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 on CUDA, fp32 on CPU",
    )
    p.add_argument("--skip-bare", action="store_true", help="no bare-forward case")
    p.add_argument(
        "--no-bare-at-large",
        action="store_true",
        help="bare forward at the first size only (throughput ratio there, memory at all sizes)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every case this many times, interleaved; report the fastest time and the "
        "highest peak memory (times on a shared machine are noisy, memory is not); the "
        "images stay on disk until their last run",
    )
    p.add_argument(
        "--cluster",
        metavar="local|ADDRESS",
        help="also run the engine across a Ray cluster ('local': a private head per case on "
        "--cores CPUs) and compare it with the single-process engine on the same cores",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker counts of the --cluster cases (default: 1 2)",
    )
    p.add_argument("--block", type=int, help="tiles per block side of the --cluster cases")
    p.add_argument(
        "--cores",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="CPUs of the comparison: the engine's threads, shared by the workers (default: "
        "this process's)",
    )
    p.add_argument("--output", help="also write the table here")
    p.set_defaults(func=_main)
