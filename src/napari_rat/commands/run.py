"""``napari-rat run``: train, then evaluate the best checkpoint (or evaluate only)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from napari_rat.commands.evaluate import evaluate_checkpoint
    from napari_rat.commands.train import prepare_config, run_training
    from napari_rat.errors import CommandError

    if args.evaluation_only and not args.checkpoint:
        raise CommandError("--evaluation-only needs --checkpoint K")
    config = prepare_config(args)
    checkpoint = args.checkpoint
    if not args.evaluation_only:
        checkpoint = str(run_training(config, args))
    return evaluate_checkpoint(config, checkpoint, args)


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_rat.commands.evaluate import add_evaluation_arguments
    from napari_rat.commands.train import add_training_arguments

    parser = subparsers.add_parser("run", help="train then evaluate (or --evaluation-only)")
    add_training_arguments(parser)
    parser.add_argument("--evaluation-only", action="store_true")
    add_evaluation_arguments(parser, checkpoint_required=False)
    parser.set_defaults(func=_run)
