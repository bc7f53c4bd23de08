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
        default=None,
        help="pixels along the evaluated region's longest axis (default: 128 256 512 1024)",
    )
    parser.add_argument(
        "--factors",
        type=float,
        nargs="+",
        metavar="F",
        help="spacing factors instead of --resolutions (2: twice as coarse; e.g. 0.5 1 2 3 4)",
    )
    parser.add_argument(
        "--axes",
        metavar="AXES",
        help="the spatial axes the factors coarsen, by name (e.g. 'z': a volume's z spacing "
        "alone, its anisotropy); default every axis",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="CKPT",
        default=[],
        help="more checkpoints scored side by side in the same table and plot (e.g. the "
        "resolution-blind baseline), each named by its file name",
    )
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="store the hold-out scores in each evaluated checkpoint's model card (the file "
        "is rewritten atomically, its weights unchanged)",
    )
    parser.add_argument(
        "--output", metavar="DIR", help="where the table and plot go (default: <run>/evaluation)"
    )
    parser.add_argument(
        "--per-region",
        action="store_true",
        help="also score each evaluated region alone (robustness_by_region.md): which image "
        "the pooled scores come from",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the Gaussian + Otsu + connected components floor",
    )
    parser.add_argument(
        "--as-trained",
        action="store_true",
        help="predict as `napari-rat predict --as-trained` does: a dense-attention model with "
        "the dense maths in tiles of its training crop (default: as predict runs it)",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="predict as `napari-rat predict --resample` does: each tile resampled to the "
        "model's training spacing and back (default: RAT told the true spacing)",
    )


DEFAULT_RESOLUTIONS = [128, 256, 512, 1024]


def _compare_names(paths: list[str]) -> list[str]:
    """Table names of compared checkpoints: their file names, made unique; a training run's
    ``best`` or ``last`` checkpoint is named with its run folder (``run_best``)."""
    import re
    from pathlib import Path

    from napari_rat.train.loop import BEST_NAME, LAST_NAME

    names: list[str] = []
    for path in paths:
        stem = Path(path).stem
        if Path(path).name in (BEST_NAME, LAST_NAME) and Path(path).parent.name:
            stem = f"{Path(path).parent.name}_{stem}"
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "checkpoint"
        if base in ("model", "otsu", "factor"):
            base = f"{base}_checkpoint"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def _as_trained(checkpoint: str, compare_paths: list[str]):
    """``(attention, tile, halo)`` of ``--as-trained``, one setting for every compared model:
    refused (``CheckpointError``) when their training attention or crops differ."""
    from napari_rat.inference.model_loading import as_trained
    from napari_rat.model import CheckpointError

    setting = as_trained(checkpoint)
    for path in compare_paths:
        if as_trained(path) != setting:
            raise CheckpointError(
                f"--as-trained runs every model as the first was trained ({setting[0]} "
                f"attention, tiles {setting[1]}); {path} was trained otherwise: evaluate it on "
                "its own"
            )
    return setting


def _factor_axes(text: str | None, spatial_dims: int) -> list[int] | None:
    """The axis indices of ``--axes`` ('z', 'yx', ...) in ``spatial_dims``-D data."""
    from napari_rat.errors import CommandError

    if text is None:
        return None
    names = "zyx"[-spatial_dims:]
    if not text or any(c not in names for c in text) or len(set(text)) != len(text):
        raise CommandError(
            f"--axes {text!r}: name {spatial_dims}D data's spatial axes from {names!r}, each "
            "once (e.g. --axes z)"
        )
    return sorted(names.index(c) for c in text)


def _complete_card(
    path, model, config, data, rows, prefix: str, source: str, axes: str = ""
) -> None:
    """Add the hold-out ``rows`` of ``prefix`` to the card of the checkpoint at ``path``;
    what training wrote stays, and a card it never got is filled from ``config``."""
    from napari_rat.model import write_card
    from napari_rat.model_card import ModelCard
    from napari_rat.train.training_card import data_description, split_description

    info = model.checkpoint_info
    card = info.card or ModelCard()
    update: dict = {
        "held_out": [
            {"factor": r["factor"], **{k: r[f"{prefix}_{k}"] for k in ("dice", "iou", "ap50")}}
            for r in rows
        ],
        "held_out_source": source,
        "held_out_axes": axes,
    }
    if not card.data:
        update["data"] = data_description(config, data)
    if not card.split:
        update["split"] = split_description(config, data)
    metrics = info.extra.get("metrics") or {}
    if not card.validation and metrics:
        keep = ("dice", "iou", "ap50", "min_instance_size")
        update["validation"] = {k: float(metrics[k]) for k in keep if k in metrics}
        if "step" in info.extra:
            update["validation"]["step"] = float(info.extra["step"])
    write_card(path, card.model_copy(update=update))


def evaluate_checkpoint(config, checkpoint: str, args: argparse.Namespace) -> int:
    """Print (and with ``--robustness`` save) the evaluation of ``checkpoint`` (and of the
    ``--compare`` checkpoints beside it); ``--write-card`` stores the scores in their cards."""
    from pathlib import Path

    from napari_rat.errors import CommandError
    from napari_rat.inference.model_loading import checkpoint_path, load_model_for_inference
    from napari_rat.inference.tiled_predict import PredictOptions
    from napari_rat.model import CheckpointError
    from napari_rat.train.data_sources import DatasetError
    from napari_rat.train.datasets import build_data
    from napari_rat.train.loop import run_dir
    from napari_rat.train.robustness_report import factors_for_resolutions, write_report

    if args.factors is not None and args.resolutions is not None:
        raise CommandError("give --factors or --resolutions, not both")
    if args.factors is not None and any(f <= 0 for f in args.factors):
        raise CommandError(f"--factors must be positive, got {args.factors}")
    compare_paths = list(args.compare or [])
    if args.write_card and args.as_trained:
        raise CommandError(
            "--write-card records the scores of what predict runs by default; leave out "
            "--as-trained (or --write-card)"
        )
    try:
        # As `napari-rat predict` loads it (dense attention runs as local), and predicted below
        # with predict's default options: evaluate scores what predict gives (with
        # --as-trained, what `predict --as-trained` gives).
        attention, tile, halo = (
            _as_trained(checkpoint, compare_paths) if args.as_trained else (None, None, None)
        )
        model = load_model_for_inference(checkpoint, attention=attention)
        others = [load_model_for_inference(p, attention=attention) for p in compare_paths]
    except CheckpointError as exc:
        raise CommandError(str(exc)) from None
    names = _compare_names(compare_paths)
    axes = _factor_axes(args.axes, model.checkpoint_info.model_config.spatial_dims)
    axes_name = "" if axes is None else args.axes
    label = f"{axes_name} spacing factor".strip()
    if model.checkpoint_info.model_config.model_dump() != config.model.model_dump():
        config = config.model_copy(update={"model": model.checkpoint_info.model_config})
    try:
        data = build_data(config)
    except DatasetError as exc:
        raise CommandError(str(exc)) from None
    regions, which = (data.holdout, "hold-out") if data.holdout else (data.val, "validation")
    if not regions:
        raise CommandError("the config leaves no hold-out or validation region to evaluate on")
    resample = args.resample
    if args.write_card and resample:
        raise CommandError(
            "--write-card records the model's own scores, told the true spacing; leave out "
            "--resample (or --write-card)"
        )
    if args.write_card and which != "hold-out":
        raise CommandError(
            "--write-card records hold-out scores, but the config holds nothing out "
            "(data.holdout_fraction is 0); set data.holdout_fraction, or leave out --write-card"
        )
    from napari_rat.train.evaluation import robustness_tables

    resolutions = None
    if not args.robustness:
        factors = [1.0]
    elif args.factors is not None:
        factors = list(args.factors)
    else:
        resolutions = args.resolutions or DEFAULT_RESOLUTIONS
        longest = max(max(r.labels.shape) for r in regions)
        factors = factors_for_resolutions(longest, resolutions)
    tables = robustness_tables(
        model,
        regions,
        config,
        factors,
        baseline=not args.no_baseline,
        options=PredictOptions(
            resample_to_training_spacing=resample,
            tile=tile,
            halo=halo,
        ),
        compare=list(zip(names, others, strict=True)),
        axes=axes,
    )
    rows = tables.pooled
    out = Path(args.output) if args.output else run_dir(config) / "evaluation"
    compared = f" vs {', '.join(names)}" if names else ""
    try:
        files = write_report(
            rows,
            out,
            title=f"{config.name}: {which} region, {checkpoint}{compared}"
            + (", tiles resampled to the training spacing" if resample else "")
            + (", run as trained" if args.as_trained else ""),
            resolutions=resolutions,
            factor_label=label,
        )
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    print((out / "robustness.md").read_text())
    if args.per_region:
        files.append(_per_region_report(regions, tables.by_region, out, label))
    for f in files:
        print(f"wrote {f}")
    if args.write_card:
        from datetime import date

        region_names = ", ".join(r.name for r in regions)
        source = f"{region_names}; napari-rat evaluate, {date.today().isoformat()}"
        scored = [("model", checkpoint, model), *zip(names, compare_paths, others, strict=True)]
        for prefix, path, m in scored:
            cfg = config.model_copy(update={"model": m.checkpoint_info.model_config})
            try:
                _complete_card(checkpoint_path(path), m, cfg, data, rows, prefix, source, axes_name)
            except (CheckpointError, OSError) as exc:
                raise CommandError(f"--write-card: {exc}") from None
            print(f"wrote the model card of {path}")
    return 0


def _per_region_report(regions, tables, out, label):
    """Each region's own table (scored alone from the pooled run's predictions) into
    ``robustness_by_region.md``; ``label`` heads the factor column."""
    from napari_rat.atomic_files import atomic_path
    from napari_rat.train.robustness_report import markdown_table

    parts = []
    for region, rows in zip(regions, tables, strict=True):
        objects = len(set(region.labels[region.labels > 0].ravel().tolist()))
        parts.append(
            f"### {region.name}: {region.labels.shape}, spacing {list(region.spacing)}, "
            f"{objects} objects\n\n{markdown_table(rows, factor_label=label)}"
        )
    path = out / "robustness_by_region.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts))
    print(path.read_text())
    return path


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
