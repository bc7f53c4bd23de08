"""``napari-rat bench interactive``: features, their cache, scribbles and clicks, in one run.

Every case runs in its own child process (:mod:`napari_rat.bench._measure`), all sharing one
feature cache folder (a fresh temporary one unless ``--cache-dir``):

1. **2D features**: the starter model's features of a 1024x1024 image (the bundled nuclei image
   tiled 2 x 2), computed and cached; then the same call in a second process, which must find
   them in the cache (no model run).
2. **2D scribbles**: 20 scripted strokes (from the ground truth: lines through the middle of
   objects and lines in the background, never the masks), a 512x512 view re-predicted after
   each; the time of each update (classifier fit, prediction, instances).
3. **3D scribbles**: a random-weight 3D model's features of generated anisotropic nuclei
   (64x256x256, spacing 2 x 0.5 x 0.5), then scripted strokes, a 64x128x128 box re-predicted
   after each.
4. **Quality** on the bundled nuclei image (columns 384-511 held out, strokes and clicks in the
   rest or on the held-out objects as said): foreground Dice after 10 strokes, for the random
   forest and the torch MLP side by side; AP@0.5 of the automatic result and after 20 clicks
   (one per held-out object, the worst first, each committed).

With ``--gui`` (or ``--only gui``), the same 2D scene in a real viewer with the RAT interactive
dock, the event loop's latency measured while the dock computes the features and updates
scribbles (:mod:`napari_rat.bench._interactive_gui`).

Times are wall-clock on a shared machine: read them with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.bench._measure import measure

HELD_OUT_COLUMN = 384


# ------------------------------------------------------------------ scripted interaction
def scripted_strokes(truth: np.ndarray, count: int, seed: int = 0, columns=None):
    """``count`` scribble strokes from ground truth ``truth``, yielded one by one as
    ``(value, index)`` (``index`` a tuple of coordinate arrays): background strokes (value 1,
    a 40-pixel line along the last axis, at least 4 pixels from any object; shorter on small
    images) alternate with
    object strokes (value 2, the line through an object's middle, 2 pixels inside its edge).
    ``columns`` limits them to a range of the last axis."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    allowed = np.ones(truth.shape, bool)
    if columns is not None:
        allowed[..., : columns[0]] = False
        allowed[..., columns[1] :] = False
    far = (ndimage.distance_transform_edt(truth == 0) > 4) & allowed
    n = min(40, truth.shape[-1] // 4)
    runs = ndimage.minimum_filter1d(far.astype(np.uint8), n, axis=-1, origin=-(n // 2))
    starts = np.argwhere(runs)
    starts = starts[starts[:, -1] <= truth.shape[-1] - n]
    ids = [int(i) for i in np.unique(truth * allowed) if i > 0]
    rng.shuffle(ids)
    # Eroded in the plane only: an anisotropic object is a few slices thick.
    plane = np.zeros((3,) * truth.ndim, bool)
    plane[(1,) * (truth.ndim - 2)] = ndimage.generate_binary_structure(2, 1)
    objects = (  # the objects' insides, 2 pixels from their edges (tiny ones have none)
        inner
        for i in ids
        if (inner := ndimage.binary_erosion(truth == i, plane, iterations=2) & allowed).any()
    )
    for k in range(count):
        if k % 2 == 0:
            s = starts[rng.integers(len(starts))]
            yield 1, (*[np.full(n, v) for v in s[:-1]], np.arange(s[-1], s[-1] + n))
            continue
        inner = next(objects, None)
        if inner is None:
            raise ValueError(f"the ground truth has fewer objects than {count // 2} strokes need")
        coords = np.argwhere(inner)
        middle = coords[len(coords) // 2]
        line = coords[(coords[:, :-1] == middle[:-1]).all(axis=1)]
        yield 2, tuple(line.T)


def _auto_and_truth_objects(auto: np.ndarray, truth: np.ndarray):
    """Per true object, the best IoU any automatic instance reaches."""
    out = {}
    for i in np.unique(truth)[1:]:
        obj = truth == i
        best = 0.0
        for p in np.unique(auto[obj]):
            if p:
                inst = auto == p
                best = max(best, (inst & obj).sum() / (inst | obj).sum())
        out[int(i)] = best
    return out


def clicks_quality(segmenter, truth: np.ndarray, region, clicks: int) -> dict:
    """AP@0.5 in ``region`` (a box of the image) after one positive click on each of the
    ``clicks`` worst true objects there (at its deepest pixel), each result committed;
    automatic instances touching a committed object give way to it. ``truth`` is the whole
    image's ground truth."""
    from scipy import ndimage

    from napari_rat.inference.commit import commit_object
    from napari_rat.train.metrics import segmentation_metrics

    auto = np.asarray(segmenter.maps.labels)
    scores = _auto_and_truth_objects(auto[region], truth[region])
    worst = sorted(scores.items(), key=lambda kv: kv[1])[:clicks]
    committed = np.zeros(truth.shape, np.int32)
    for i, _ in worst:
        depth = ndimage.distance_transform_edt(truth == i)
        point = np.unravel_index(np.argmax(depth), depth.shape)
        try:
            commit_object(committed, segmenter.click_object([point]).mask)
        except ValueError:
            pass  # the object was already committed with an earlier one
    final = np.where(np.isin(auto, np.unique(auto[committed > 0])), 0, auto)
    final = np.where(committed > 0, committed + int(auto.max()), final)
    return {
        "auto_ap50": segmentation_metrics(auto[region], truth[region])["ap50"],
        "clicks_ap50": segmentation_metrics(final[region], truth[region])["ap50"],
        "clicks": len(worst),
    }


# ------------------------------------------------------------------ cases (in the child)
def _tiled_nuclei():
    from napari_rat.sample_data import nuclei_2d

    img, truth = nuclei_2d()
    n = img.shape[0]
    labels = np.zeros((2 * n, 2 * n), np.int32)
    for k, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):  # each copy its own ids
        labels[r * n : (r + 1) * n, c * n : (c + 1) * n] = np.where(truth > 0, truth + 1000 * k, 0)
    return np.tile(img, (2, 2)), labels


def _source(img, spacing):
    from napari_rat.inference.sources import PyramidInput

    dims = len(spacing)
    axes = ("z", "y", "x")[-dims:]
    return PyramidInput(img[None], tuple(spacing), (0.0,) * dims, axes, ("micrometer",) * dims)


def _model(dims: int):
    import torch

    if dims == 2:
        from napari_rat.inference.model_loading import load_model_for_inference

        return load_model_for_inference("starter")
    from napari_rat.config import ModelConfig
    from napari_rat.model import build_model

    torch.manual_seed(0)
    config = ModelConfig(
        spatial_dims=3,
        feature_dims=16,
        num_heads=2,
        num_blocks=2,
        sga_kernel_size=[1, 3, 3],
        stride=[1, 2, 2],
        iters=1,
        sga_attention_type="local",
        spacing=[2.0, 0.5, 0.5],
        head={"decoder_dims": 8},
    )
    return build_model(config).eval()


def _scene(dims: int, size: int):
    if dims == 2:
        img, truth = _tiled_nuclei()
        return img[:size, :size], truth[:size, :size], (1.0, 1.0)
    from napari_rat.synthetic import synthetic_nuclei

    shape = (size // 4, size, size)
    img, truth = synthetic_nuclei(shape, (2.0, 0.5, 0.5), radius=3.0, seed=0)
    return img, truth.astype(np.int32), (2.0, 0.5, 0.5)


def features_case(dims: int, size: int, cache_dir: str):
    """Set-up of a features case: ``run()`` computes (or reads back) the features."""
    from napari_rat.inference.feature_cache import FeatureCache
    from napari_rat.inference.features import features_for

    img, _, spacing = _scene(dims, size)
    model, src = _model(dims), _source(img, spacing)

    def run():
        maps = features_for(model, src, cache=FeatureCache(cache_dir))
        return {"from_cache": maps.from_cache, "shape": list(maps.features.shape)}

    return run, "cpu"


def scribbles_case(dims: int, size: int, view: int, strokes: int, cache_dir: str):
    """Set-up of a scribble-timing case: ``run()`` applies the strokes one by one and times
    each update's prediction of the view (a box of ``view`` pixels in y and x)."""
    import time

    from napari_rat.inference.feature_cache import FeatureCache
    from napari_rat.inference.features import features_for
    from napari_rat.inference.interactive import InteractiveSegmenter

    img, truth, spacing = _scene(dims, size)
    maps = features_for(_model(dims), _source(img, spacing), cache=FeatureCache(cache_dir))
    seg = InteractiveSegmenter(maps)
    import sklearn.ensemble  # noqa: F401 - a GUI imports it before the first stroke

    lo = (size - view) // 2
    box = (*[slice(None)] * (dims - 2), slice(lo, lo + view), slice(lo, lo + view))

    def run():
        scribbles = np.zeros(truth.shape, np.uint8)
        times = []
        for k, (value, index) in enumerate(scripted_strokes(truth, strokes)):
            scribbles[index] = value
            if k == 0:
                continue  # one class only: nothing to learn yet
            start = time.perf_counter()
            seg.predict_scribbles(scribbles, box)
            times.append(time.perf_counter() - start)
        return {"times": times, "from_cache": maps.from_cache}

    return run, "cpu"


def quality_case(strokes: int, clicks: int, cache_dir: str):
    """Set-up of the quality case on the bundled nuclei image (see the module docstring)."""
    from napari_rat.inference.feature_cache import FeatureCache
    from napari_rat.inference.features import features_for
    from napari_rat.inference.interactive import InteractiveSegmenter
    from napari_rat.sample_data import nuclei_2d
    from napari_rat.train.metrics import foreground_scores

    img, truth = nuclei_2d()
    truth = truth.astype(np.int32)
    maps = features_for(_model(2), _source(img, (1.0, 1.0)), cache=FeatureCache(cache_dir))
    held = (slice(None), slice(HELD_OUT_COLUMN, None))

    def run():
        out: dict[str, Any] = {}
        for classifier in ("forest", "mlp"):
            seg = InteractiveSegmenter(maps, classifier=classifier)
            scribbles = np.zeros(truth.shape, np.uint8)
            dice = []
            for k, (value, index) in enumerate(
                scripted_strokes(truth, strokes, columns=(0, HELD_OUT_COLUMN))
            ):
                scribbles[index] = value
                if k:
                    result = seg.predict_scribbles(scribbles, held)
                    dice.append(foreground_scores(result.labels, truth[held])["dice"])
            out[classifier] = dice
        out.update(clicks_quality(InteractiveSegmenter(maps), truth, held, clicks))
        return out

    return run, "cpu"


# ------------------------------------------------------------------ the run and its table
def _p(times, q):
    return float(np.percentile(times, q)) if times else float("nan")


def selected_cases(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """The cases ``args`` asks for: ``(name, function in this module, its arguments)``."""
    size2, view2 = (256, 128) if args.quick else (1024, 512)
    size3, view3 = (64, 32) if args.quick else (256, 128)
    cases = [
        ("2D features, first process", "features_case", {"dims": 2, "size": size2}),
        ("2D features, second process", "features_case", {"dims": 2, "size": size2}),
        (
            f"2D scribbles, {view2}x{view2} view",
            "scribbles_case",
            {"dims": 2, "size": size2, "view": view2, "strokes": args.strokes + 1},
        ),
        ("3D features", "features_case", {"dims": 3, "size": size3}),
        (
            f"3D scribbles, {size3 // 4}x{view3}x{view3} box",
            "scribbles_case",
            {"dims": 3, "size": size3, "view": view3, "strokes": args.strokes_3d + 1},
        ),
        ("quality, bundled nuclei", "quality_case", {"strokes": 10, "clicks": 20}),
    ]
    if args.only:
        groups = {"2d": "2D", "3d": "3D", "quality": "quality"}
        cases = [
            c for c in cases if any(c[0].startswith(groups[g]) for g in args.only if g in groups)
        ]
    return cases


def run_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the selected cases; one row per case (``name``, ``seconds``, ``result``, ``error``)."""
    cases = selected_cases(args)
    if not cases:
        return []
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="napari-rat-bench-cache-")
    here = __name__
    rows = []
    try:
        for name, func, kwargs in cases:
            r = measure(f"{here}:{func}", timeout=args.timeout, cache_dir=cache_dir, **kwargs)
            rows.append({"name": name, "seconds": r.seconds, "result": r.result, "error": r.error})
    finally:
        if not args.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, with the quality lines below it."""
    load = os.getloadavg()
    lines = [
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, {os.cpu_count()} CPUs",
        "",
        "| case | time | notes |",
        "|---|---|---|",
    ]
    quality = None
    for row in rows:
        res = row["result"] or {}
        if row["error"]:
            lines.append(f"| {row['name']} | failed | {row['error'].splitlines()[-1]} |")
            continue
        if "times" in res:
            t = res["times"]
            lines.append(
                f"| {row['name']} | p50 {_p(t, 50):.2f} s, p95 {_p(t, 95):.2f} s, "
                f"max {max(t):.2f} s | {len(t)} updates, features from the cache: "
                f"{res['from_cache']} |"
            )
        elif "from_cache" in res:
            lines.append(
                f"| {row['name']} | {row['seconds']:.1f} s | features {res['shape']}, "
                f"from the cache: {res['from_cache']} |"
            )
        else:
            quality = res
    if quality:
        lines += [
            "",
            "Foreground Dice on the held-out quarter after each stroke (2..10):",
            "- random forest: " + " ".join(f"{d:.3f}" for d in quality["forest"]),
            "- torch MLP:     " + " ".join(f"{d:.3f}" for d in quality["mlp"]),
            f"AP@0.5 on the held-out quarter: automatic {quality['auto_ap50']:.3f}, after "
            f"{quality['clicks']} clicks {quality['clicks_ap50']:.3f}",
        ]
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    rows = run_bench(args)
    table = format_table(rows) if rows else ""
    if args.gui or "gui" in (args.only or []):
        from napari_rat.bench._interactive_gui import run_gui

        cache_dir = tempfile.mkdtemp(prefix="napari-rat-bench-cache-")
        os.environ["NAPARI_RAT_CACHE_DIR"] = cache_dir  # fresh: the dock's model runs
        try:
            report = run_gui(256 if args.quick else 1024, strokes=args.gui_strokes, idle_s=5.0)
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
        table = f"{table}\n\n{report}" if table else report
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0 if all(not r["error"] for r in rows) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "interactive", help="features and their cache, scribble and click updates, quality"
    )
    p.add_argument("--strokes", type=int, default=20, help="timed 2D scribble updates")
    p.add_argument("--strokes-3d", type=int, default=10, help="timed 3D scribble updates")
    p.add_argument("--quick", action="store_true", help="small images (a smoke test)")
    p.add_argument("--cache-dir", help="feature cache folder (default: a temporary one)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=["2d", "3d", "quality", "gui"],
        help="run these cases only ('gui' alone: only the dock in a viewer)",
    )
    p.add_argument(
        "--gui",
        action="store_true",
        help="also time a viewer's event loop while the RAT interactive dock computes the 2D "
        "features and updates scribbles (Xvfb when there is no display)",
    )
    p.add_argument("--gui-strokes", type=int, default=10, help="scribble updates (--gui)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    p.add_argument("--output", help="also write the table to this file")
    p.set_defaults(func=_main)
