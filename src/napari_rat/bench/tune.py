"""``napari-rat bench tune``: a quick fine-tune on corrected nuclei, scored on the hold-out.

The starter is quick-tuned (:func:`napari_rat.train.quick_tune.quick_tune`: decoder and head,
backbone frozen) on the ground truth of one box of the training part of the bundled real 2D
nuclei image, as if a user had corrected those nuclei. Both models are then scored as
``napari-rat evaluate --config configs/starter_nuclei_2d.yaml`` scores a checkpoint: the
engine's prediction of the config's hold-out quarter (the same
:func:`napari_rat.train.datasets.build_data` split), Dice and AP@0.5 side by side, with the
wall time of the tune.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _scores(checkpoint: str, config, regions) -> dict[str, float]:
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.inference.tiled_predict import PredictOptions
    from napari_rat.train.evaluation import robustness_tables

    model = load_model_for_inference(checkpoint)
    # As `napari-rat evaluate` does: the checkpoint's own model section (its head's minimum
    # instance size, chosen on validation) scores it.
    config = config.model_copy(update={"model": model.checkpoint_info.model_config})
    (row,) = robustness_tables(
        model, regions, config, [1.0], baseline=False, options=PredictOptions()
    ).pooled
    return {"dice": row["model_dice"], "ap50": row["model_ap50"]}


def _bench(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from napari_rat.config import load_config
    from napari_rat.inference.model_loading import checkpoint_path
    from napari_rat.sample_data import nuclei_2d
    from napari_rat.train.crops import split_regions
    from napari_rat.train.datasets import build_data
    from napari_rat.train.quick_tune import quick_tune, save_tuned

    config = load_config(args.config)
    image, labels = nuclei_2d()
    train_box = split_regions(labels.shape, config.data.val_fraction, config.data.holdout_fraction)[
        "train"
    ]
    rows, cols = args.box
    if rows[1] > train_box[1][0] or cols[1] > train_box[1][1]:
        raise SystemExit(
            f"--box {rows} {cols} leaves the training part {train_box}; choose a box inside it"
        )
    box = (slice(*rows), slice(*cols))
    nuclei = np.unique(labels[box][labels[box] > 0])
    whole = sum(int((labels == i).sum() == (labels[box] == i).sum()) for i in nuclei)
    holdout = build_data(config).holdout
    start = str(checkpoint_path(args.checkpoint))
    begun = time.perf_counter()
    options = {"steps": args.steps, "learning_rate": args.learning_rate}
    events = []
    tuned = quick_tune(
        start,
        image[box],
        (1.0, 1.0),
        labels=labels[box],
        seed=args.seed,
        name=f"nuclei_2d[{rows[0]}:{rows[1]}, {cols[0]}:{cols[1]}]",
        progress=events.append,
        **{k: v for k, v in options.items() if v is not None},
    )
    seconds = time.perf_counter() - begun
    steps = max(e.step for e in events)
    with tempfile.TemporaryDirectory() as folder:
        path = save_tuned(tuned, Path(args.output or folder) / "quick_tuned.safetensors")
        before, after = _scores(start, config, holdout), _scores(str(path), config, holdout)
        print(
            f"quick tune on rows {rows[0]}-{rows[1] - 1}, columns {cols[0]}-{cols[1] - 1}: "
            f"{len(nuclei)} nuclei ({whole} whole), {steps} steps, {seconds:.1f} s "
            f"({torch.get_num_threads()} threads)"
        )
        print("| model | hold-out Dice | hold-out AP@0.5 |\n|---|---|---|")
        print(f"| {args.checkpoint} | {before['dice']:.3f} | {before['ap50']:.3f} |")
        print(f"| quick-tuned | {after['dice']:.3f} | {after['ap50']:.3f} |")
        if args.output:
            print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="quick fine-tune on corrected nuclei: hold-out AP@0.5 before and after"
    )
    parser.add_argument("--config", default="configs/starter_nuclei_2d.yaml", metavar="C")
    parser.add_argument("--checkpoint", default="starter", metavar="K")
    parser.add_argument(
        "--box",
        nargs=2,
        type=lambda s: tuple(int(v) for v in s.split(":")),
        default=[(0, 256), (0, 256)],
        metavar="A:B",
        help="rows and columns of the corrected box in the training part (default 0:256 0:256)",
    )
    parser.add_argument("--steps", type=int, help="default: quick_tune's")
    parser.add_argument("--learning-rate", type=float, help="default: quick_tune's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", metavar="DIR", help="keep the tuned checkpoint here")
    parser.set_defaults(func=_bench)
