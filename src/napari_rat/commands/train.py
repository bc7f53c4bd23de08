"""``napari-rat train``: train a model from an experiment config (in-process, DeepSpeed or Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_training_arguments(parser: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """Options shared by ``train``, ``run`` and ``submit`` (which always uses Ray: no
    ``--backend``)."""
    parser.add_argument("--config", required=True, metavar="C", help="experiment YAML")
    if backend:
        parser.add_argument(
            "--backend", choices=["local", "deepspeed", "ray"], help="default: training.backend"
        )
    parser.add_argument("--num-workers", type=int, metavar="N", help="Ray workers / processes")
    parser.add_argument("--num-gpus", type=float, metavar="N", help="GPUs per Ray worker")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 epoch of 2 steps, small validation"
    )
    parser.add_argument("--resume", action="store_true", help="continue this run's saved state")
    parser.add_argument("--init-from", metavar="CKPT", help="start from a checkpoint's weights")


def prepare_config(args: argparse.Namespace):
    """Load and validate the config and apply the command-line overrides, before any worker."""
    from napari_rat.config import ConfigFileError, load_config
    from napari_rat.errors import CommandError

    try:
        config = load_config(args.config)
    except ConfigFileError as exc:
        raise CommandError(f"invalid config:\n{exc}") from None
    backend = args.backend or config.training.backend
    updates = {"backend": backend}
    if args.quick:
        updates.update({"epochs": 1, "steps_per_epoch": 2, "warmup_steps": 1, "log_every": 1})
    try:
        raw = config.model_dump()
        raw["training"].update(updates)
        if backend == "deepspeed":
            raw["deepspeed"]["enabled"] = True  # asking for the backend turns it on
        config = type(config).model_validate(raw)
    except ValueError as exc:
        raise CommandError(f"invalid config after overrides: {exc}") from None
    if args.num_workers is not None and args.num_workers < 1:
        raise CommandError(f"--num-workers must be at least 1, got {args.num_workers}")
    if args.init_from is not None:
        from napari_rat.model import CheckpointError, read_checkpoint_info

        try:
            read_checkpoint_info(args.init_from)
        except CheckpointError as exc:
            raise CommandError(str(exc)) from None
    _check_data(config)
    return config


def _check_data(config) -> None:
    from pathlib import Path

    from napari_rat.errors import CommandError

    for path in [*config.data.paths, *config.data.label_paths]:
        if "://" not in path and not Path(path).exists():
            raise CommandError(
                f"dataset {path!r} (data.paths of the config) does not exist; fix the path or "
                "use data.source: synthetic"
            )


def run_training(config, args: argparse.Namespace):
    """:func:`napari_rat.train.run.run_training` with the command's options; its errors as
    one-line command errors."""
    from napari_rat.errors import CommandError
    from napari_rat.train.data_sources import DatasetError
    from napari_rat.train.ray_backend import RunExistsError
    from napari_rat.train.run import VersionMismatchError
    from napari_rat.train.run import run_training as run

    try:
        return run(
            config,
            num_workers=args.num_workers,
            num_gpus=args.num_gpus,
            resume=args.resume,
            init_from=args.init_from,
            log=lambda line: print(line, flush=True),
        )
    except (DatasetError, ImportError, RunExistsError, VersionMismatchError) as exc:
        raise CommandError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    import time

    config = prepare_config(args)
    start = time.perf_counter()
    address = config.cluster.address or ""
    if config.training.backend == "ray" and address.startswith(("http://", "https://")):
        best = _train_as_job(config, args)  # a dashboard URL: the cluster runs it as a job
    else:
        best = run_training(config, args)
    print(f"done in {time.perf_counter() - start:.1f} s; best checkpoint: {best}")
    return 0


def _train_as_job(config, args: argparse.Namespace):
    """Submit to the cluster at ``cluster.address``, print its log until it ends, and fetch
    the best checkpoint into ``<training.output_dir>/<run_name>/``."""
    from napari_rat.cluster import ClusterError, connect
    from napari_rat.cluster.submission import SubmissionError
    from napari_rat.commands.jobs import submit_from_args
    from napari_rat.errors import CommandError

    try:
        client = connect(config.cluster.address, token_env=config.cluster.token_env)
        job = submit_from_args(client, config, args)
        print(f"submitted {job} to {client.url}", flush=True)
        for line in client.follow(job):
            print(line, flush=True)
        summary = client.job(job)
        if summary.status != "SUCCEEDED":
            raise CommandError(f"job {job} {summary.status}: {summary.message}")
        out = Path(config.training.output_dir) / config.training.run_name
        return client.fetch(job, out)
    except (ClusterError, SubmissionError, ImportError) as exc:
        raise CommandError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model from an experiment config")
    add_training_arguments(parser)
    parser.set_defaults(func=_train)
