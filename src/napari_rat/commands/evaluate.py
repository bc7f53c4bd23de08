"""``napari-rat evaluate``: metrics of a checkpoint, optionally across input resolutions."""

from __future__ import annotations

import argparse


def add_evaluation_arguments(parser: argparse.ArgumentParser, *, checkpoint_required: bool) -> None:
    """Options shared by ``evaluate`` and ``run``."""
    parser.add_argument("--checkpoint", required=checkpoint_required, metavar="K")
    parser.add_argument(
        "--robustness", action="store_true", help="evaluate at several input resolutions (spacings)"
    )
    parser.add_argument(
        "--resolutions",
        type=int,
        nargs="+",
        metavar="PX",
        default=[128, 256, 512, 1024],
        help="pixels along the evaluated region's longest axis (default: 128 256 512 1024)",
    )
    parser.add_argument(
        "--output", metavar="DIR", help="where the table and plot go (default: <run>/evaluation)"
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the Gaussian + Otsu + connected components floor",
    )


def evaluate_checkpoint(config, checkpoint: str, args: argparse.Namespace) -> int:
    """Print (and with ``--robustness`` save) the evaluation of ``checkpoint``."""
    from pathlib import Path

    from napari_rat.errors import CommandError
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.inference.tiled_predict import PredictOptions
    from napari_rat.model import CheckpointError
    from napari_rat.train.data_sources import DatasetError
    from napari_rat.train.datasets import build_data
    from napari_rat.train.loop import run_dir
    from napari_rat.train.robustness_report import factors_for_resolutions, write_report

    try:
        # As `napari-rat predict` loads it (dense attention runs as local), and predicted below
        # with predict's default options: evaluate scores what predict gives.
        model = load_model_for_inference(checkpoint)
    except CheckpointError as exc:
        raise CommandError(str(exc)) from None
    if model.checkpoint_info.model_config.model_dump() != config.model.model_dump():
        config = config.model_copy(update={"model": model.checkpoint_info.model_config})
    try:
        data = build_data(config)
    except DatasetError as exc:
        raise CommandError(str(exc)) from None
    regions, which = (data.holdout, "hold-out") if data.holdout else (data.val, "validation")
    if not regions:
        raise CommandError("the config leaves no hold-out or validation region to evaluate on")
    from napari_rat.train.evaluation import robustness_table

    if args.robustness:
        longest = max(max(r.labels.shape) for r in regions)
        factors = factors_for_resolutions(longest, args.resolutions)
    else:
        factors = [1.0]
    rows = robustness_table(
        model, regions, config, factors, baseline=not args.no_baseline, options=PredictOptions()
    )
    out = Path(args.output) if args.output else run_dir(config) / "evaluation"
    try:
        files = write_report(
            rows,
            out,
            title=f"{config.name}: {which} region, {checkpoint}",
            resolutions=args.resolutions if args.robustness else None,
        )
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    print((out / "robustness.md").read_text())
    for f in files:
        print(f"wrote {f}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from napari_rat.commands.train import prepare_config

    args.backend, args.num_workers, args.num_gpus = None, None, None
    args.quick, args.resume, args.init_from = False, False, None
    config = prepare_config(args)
    return evaluate_checkpoint(config, args.checkpoint, args)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="metrics of a checkpoint on the config's hold-out (or validation) region"
    )
    parser.add_argument("--config", required=True, metavar="C", help="experiment YAML")
    add_evaluation_arguments(parser, checkpoint_required=True)
    parser.set_defaults(func=_evaluate)
