"""``napari-rat predict IN.zarr``: tiled segmentation of an OME-Zarr image, headless."""

from __future__ import annotations

import argparse


def _region(text: str) -> tuple[str, tuple[int, int]]:
    try:
        axis, span = text.split("=")
        start, stop = (int(v) for v in span.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"region {text!r} should look like y=0:512 (axis=start:stop in level-0 voxels)"
        ) from None
    if stop <= start or start < 0:
        raise argparse.ArgumentTypeError(f"region {text!r}: need 0 <= start < stop")
    return axis, (start, stop)


def load_model(checkpoint: str, device: str = "cpu", attention: str | None = None):
    """A checkpoint path, or a bundled starter's name (``starter``, ``starter-3d``)."""
    from napari_rat.errors import CommandError
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.model import CheckpointError

    try:
        return load_model_for_inference(checkpoint, device=device, attention=attention)
    except CheckpointError as exc:
        raise CommandError(str(exc)) from None


def _check_targets(args, pyramid) -> None:
    """Refuse, before predicting, results that could not be written where asked."""
    from pathlib import Path

    from napari_rat.errors import CommandError
    from napari_rat.inference.sources import check_labels_target

    if args.output is not None:
        out = Path(args.output).expanduser()
        if out.exists():
            raise CommandError(f"{out} already exists; choose another --output or remove it")
        if not out.parent.is_dir():
            raise CommandError(
                f"{out.parent} is not a folder; create it or choose another --output"
            )
    if args.into_labels is not None:
        try:
            check_labels_target(pyramid, args.into_labels, overwrite=args.overwrite)
        except ValueError as exc:
            raise CommandError(str(exc)) from None


def _check_cluster_options(args) -> None:
    from napari_rat.errors import CommandError

    if not args.cluster:
        given = [
            name
            for name, value, default in (
                ("--workers", args.workers, 2),
                ("--cpus-per-worker", args.cpus_per_worker, 1),
                ("--gpus-per-worker", args.gpus_per_worker, 0.0),
                ("--block", args.block, None),
                ("--resume", args.resume, False),
            )
            if value != default
        ]
        if given:
            raise CommandError(f"{', '.join(given)} only apply with --cluster local|ADDRESS")
        return
    if args.workers < 1 or args.cpus_per_worker < 1 or args.gpus_per_worker < 0:
        raise CommandError(
            "--workers and --cpus-per-worker must be 1 or more, --gpus-per-worker 0 or more"
        )
    if args.block is not None and args.block < 1:
        raise CommandError(f"--block {args.block}: give 1 or more tiles per block side")


def _scratch_folder(args):
    """Where the prediction is built (on the destination's file system), removed at the end."""
    import tempfile
    from pathlib import Path

    near = Path(args.output).expanduser().parent if args.output else Path(args.input).parent
    return Path(tempfile.mkdtemp(prefix=".napari-rat-predict-", dir=near))


def _run(args: argparse.Namespace) -> int:
    import shutil

    from napari_rat.commands._progress import ProgressBar
    from napari_rat.errors import CommandError
    from napari_rat.inference import PredictOptions, resolve_device, run_prediction
    from napari_rat.inference.model_loading import STARTER, starter_for
    from napari_rat.inference.planes import predict_planes
    from napari_rat.inference.sources import (
        input_from_pyramid,
        predict_input,
        write_prediction,
        write_prediction_into_labels,
    )
    from napari_rat.io import OmeZarrError, open_pyramid

    if args.output is None and args.into_labels is None:
        raise CommandError("say where results go: --output OUT.zarr or --into-labels NAME")
    if args.min_size is not None and args.min_size < 0:
        raise CommandError(f"--min-size {args.min_size} is negative; give 0 or a positive size")
    if args.levels is not None and args.levels < 1:
        raise CommandError(f"--levels {args.levels}: give 1 or more pyramid levels")
    _check_cluster_options(args)
    _check_job_version()
    try:
        device = resolve_device(args.device)
        pyramid = open_pyramid(args.input)
        source = input_from_pyramid(
            pyramid,
            level=args.level,
            channels=args.channel,
            region=dict(args.region) if args.region else None,
        )
    except (OmeZarrError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    _check_targets(args, pyramid)
    ndim = len(source.spacing)
    checkpoint = args.checkpoint
    if checkpoint == STARTER:  # the bundled model of the image's (or its planes') dimensions
        checkpoint = starter_for(ndim - 1 if args.planes else ndim)
    attention, tile, halo = _attention_and_tiles(args, checkpoint)
    model = load_model(checkpoint, str(device), attention)
    dims = model.spatial_dims
    _check_model_dims(args, checkpoint, dims, source)
    if args.tile:
        tile = tuple(args.tile) * (dims if len(args.tile) == 1 else 1)
    if args.halo:
        halo = tuple(args.halo) * (dims if len(args.halo) == 1 else 1)
    options = PredictOptions(
        tile=tile,
        halo=halo,
        levels=args.levels,
        # on a cluster, the device is each worker's (a GPU there, whatever this machine has)
        device=args.device if args.cluster else str(device),
        precision=args.precision,
        resample_to_training_spacing=args.resample,
        min_instance_size=args.min_size,
    )
    if args.cluster == "local":
        from napari_rat.cluster.local_head import recorded_head

        if recorded_head() is None:
            print("starting the local Ray head (it keeps running: `napari-rat cluster stop`)")
    if args.cluster:
        scratch = _cluster_scratch_folder(args)
        steps = _cluster_steps(args, model, source, options, scratch / "prediction.zarr")
    else:
        scratch = _scratch_folder(args)
        store = scratch / "prediction.zarr"
        if args.planes:
            steps = predict_planes(
                model,
                source.image,
                source.spacing,
                source.translation,
                units=source.units,
                options=options,
                store=store,
            )
        else:
            steps = predict_input(model, source, options=options, store=store)
    bar = ProgressBar()
    written = False
    try:
        try:
            result = run_prediction(steps, lambda p: bar(p.done, p.total, p.stage))
        except (ValueError, FileExistsError) as exc:
            raise CommandError(str(exc)) from None
        except _cluster_errors() as exc:
            raise CommandError(str(exc)) from None
        except (RuntimeError, MemoryError) as exc:
            raise CommandError(
                f"the prediction failed: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
                "try a smaller --tile, --device cpu, or a --region"
                + ("; the blocks done are kept: add --resume" if args.cluster else "")
            ) from None
        finally:
            bar.close()
        try:
            if args.output:
                path = write_prediction(
                    result,
                    args.output,
                    source.axis_names,
                    source.units,
                    ngff_version=pyramid.ngff_version,
                )
                print(f"wrote {path} ({result.num_instances} instances)")
            if args.into_labels:
                path = write_prediction_into_labels(
                    result, source, pyramid, args.into_labels, overwrite=args.overwrite
                )
                print(f"wrote {path} ({result.num_instances} instances)")
        except (OmeZarrError, ValueError, FileExistsError, PermissionError) as exc:
            raise CommandError(str(exc)) from None
        written = True
    finally:
        # A cluster run that did not finish keeps its blocks for --resume.
        if written or not args.cluster:
            shutil.rmtree(scratch, ignore_errors=True)
        elif not any(scratch.iterdir()):  # stopped before any block: nothing to resume
            scratch.rmdir()
    return 0


def _attention_and_tiles(args, checkpoint: str):
    """``(attention, tile, halo)``: ``--attention`` and no tiles, or with ``--as-trained`` the
    checkpoint's own (:func:`~napari_rat.inference.model_loading.as_trained`); ``None``: the
    defaults."""
    from napari_rat.errors import CommandError
    from napari_rat.inference.model_loading import as_trained
    from napari_rat.model import CheckpointError

    if not args.as_trained:
        return args.attention, None, None
    given = [f"--{n}" for n in ("attention", "tile", "halo") if getattr(args, n) is not None]
    if given:
        raise CommandError(
            f"--as-trained sets the attention and the tiles; leave out {', '.join(given)}"
        )
    try:
        return as_trained(checkpoint)
    except CheckpointError as exc:
        raise CommandError(str(exc)) from None


def _check_model_dims(args, checkpoint: str, dims: int, source) -> None:
    """Refuse a model that does not fit the image's axes (or, with ``--planes``, its
    planes'), saying which checkpoint or option would."""
    from napari_rat.errors import CommandError
    from napari_rat.inference.model_loading import starter_for

    ndim, axes = len(source.spacing), "".join(source.axis_names)
    if args.planes:
        if dims >= ndim:
            raise CommandError(
                f"--planes runs a model of fewer dimensions on each plane, but {checkpoint} is "
                f"a {dims}D model and the image has {ndim} spatial axes ({axes}); leave out "
                "--planes to predict it whole"
            )
        if args.cluster:
            raise CommandError("--planes runs on this machine; leave out --cluster")
        return
    if dims == ndim:
        return
    hint = f"give a {ndim}D checkpoint (the bundled one: --checkpoint {starter_for(ndim)})"
    if dims < ndim:
        hint += ", or add --planes to segment it plane by plane"
    raise CommandError(
        f"{checkpoint} is a {dims}D model but the image has {ndim} spatial axes ({axes}); {hint}"
    )


def _check_job_version() -> None:
    """In a job sent by ``submit-predict``: refuse a cluster running another napari-rat."""
    from napari_rat.errors import CommandError
    from napari_rat.train.run import VersionMismatchError, check_job_version

    try:
        check_job_version()
    except VersionMismatchError as exc:
        raise CommandError(str(exc)) from None


def _cluster_errors() -> tuple[type[BaseException], ...]:
    from napari_rat.cluster import ClusterError

    return (ClusterError,)


def _cluster_scratch_folder(args):
    """Where a cluster run is built: a folder beside the destination named after it, found
    again by ``--resume`` (every worker must reach it: a shared folder on a real cluster)."""
    from pathlib import Path

    if args.output:
        out = Path(args.output).expanduser().absolute()
        folder = out.parent / f".napari-rat-predict-{out.name}"
    else:
        folder = Path(args.input).absolute().parent / f".napari-rat-predict-{args.into_labels}"
    folder.mkdir(exist_ok=True)
    return folder


def _cluster_steps(args, model, source, options, store):
    """The prediction as :func:`napari_rat.cluster.predict.predict_on_cluster` runs it."""
    from napari_rat.cluster.predict import predict_on_cluster

    return predict_on_cluster(
        model,
        source.image,
        source.spacing,
        source.translation,
        units=source.units,
        store=store,
        options=options,
        cluster=args.cluster,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        block=args.block,
        resume=args.resume,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="segment an OME-Zarr image with a RAT checkpoint")
    p.add_argument("input", metavar="IN.zarr", help="OME-Zarr image (path or URL)")
    p.add_argument("--output", metavar="OUT.zarr", help="write probabilities + labels here")
    p.add_argument("--into-labels", metavar="NAME", help="write labels into IN.zarr/labels/NAME")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing label image (--into-labels)"
    )
    add_prediction_arguments(p)
    p.add_argument(
        "--planes",
        action="store_true",
        help="segment a volume plane by plane with a 2D model (each z plane on its own, stacked "
        "back; 'starter' is then the 2D starter); not with --cluster",
    )
    add_cluster_run_arguments(p)
    p.set_defaults(func=_run)


def add_prediction_arguments(p: argparse.ArgumentParser) -> None:
    """The model and tiling options (shared by ``predict`` and ``submit-predict``)."""
    p.add_argument(
        "--checkpoint",
        default="starter",
        help="checkpoint file, or 'starter' for the bundled model of the image's dimensions "
        "(default: the 3D one for a volume, else the 2D one), or 'starter-2d' / 'starter-3d'",
    )
    p.add_argument("--level", type=int, default=0, help="pyramid level to predict on")
    p.add_argument(
        "--levels",
        type=int,
        help="pyramid levels fed to the model, planned from the spacing (default: the levels it "
        "was trained on, stored in the checkpoint)",
    )
    p.add_argument("--channel", type=int, nargs="+", help="channel indices (default: all)")
    p.add_argument(
        "--region",
        type=_region,
        nargs="+",
        metavar="AXIS=START:STOP",
        help="a region in level-0 voxels, e.g. y=0:512 x=256:768",
    )
    p.add_argument("--tile", type=int, nargs="+", help="tile size in pixels (one or per axis)")
    p.add_argument("--halo", type=int, nargs="+", help="halo in pixels (one or per axis)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument(
        "--attention",
        choices=["dense", "exact", "local"],
        help="attention implementation for the same weights (default: the stored "
        "one, with dense run as local: linear in pixels; exact gives the dense maths)",
    )
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample tiles to the model's training spacing (default: give RAT the true spacing)",
    )
    p.add_argument(
        "--as-trained",
        action="store_true",
        help="run the model as its training validated it: a dense-attention model with the "
        "dense maths in tiles of its training crop (slower; default: windowed attention in "
        "large tiles)",
    )
    p.add_argument(
        "--min-size",
        type=float,
        metavar="AREA",
        help="the smallest instance kept, a physical area (2D) or volume (3D) in the image's "
        "units: smaller pieces join the instance they touch most or are dropped (default: the "
        "size the checkpoint chose on its validation split)",
    )


def add_cluster_run_arguments(p: argparse.ArgumentParser, *, cluster: bool = True) -> None:
    """``--cluster`` (unless ``cluster`` is false: a submitted job runs on its own cluster),
    ``--workers``, ``--cpus-per-worker``, ``--gpus-per-worker``, ``--block``, ``--resume``
    (shared by ``predict`` and ``submit-predict``)."""
    if cluster:
        p.add_argument(
            "--cluster",
            metavar="local|ADDRESS",
            help="predict across a Ray cluster: 'local' (the local head, started if none "
            "runs), 'auto' (inside a Ray job) or a head's HOST:PORT (token in RAY_AUTH_TOKEN)",
        )
    p.add_argument("--workers", type=int, default=2, help="blocks computed at once (--cluster)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) per worker")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker")
    p.add_argument(
        "--block",
        type=int,
        metavar="N",
        help="tiles per block side (default 4 in 2D, 2 in 3D); a Ray task computes a block",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish a stopped --cluster run to the same --output: only its missing blocks",
    )
