"""``napari-rat demo``: the main job on bundled and generated sample data.

``napari-rat demo`` opens napari on the real nuclei image (with its ground truth) and the
plugin's docks, the generated anisotropic 3D volume ready to open in the loader dock. Both are
written as OME-Zarr first, each built aside and moved into place complete. ``napari-rat demo
--headless`` runs the same pipeline without a screen: it segments the real nuclei image with the
starter model, writes the result into the image as NGFF labels, scores it against the ground
truth, then opens the viewer on a virtual X server (Xvfb) and saves a screenshot (no X server:
exit status 1). Everything lands in ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

#: Nominal pixel size of the bundled 2D nuclei image (its physical size is not recorded).
NUCLEI_SPACING = (1.0, 1.0)
VOLUME_SPACING = (2.0, 0.5, 0.5)
VOLUME_TRANSLATION = (10.0, 5.0, 5.0)


def prepare_samples(output: Path) -> dict[str, Path]:
    """Write the sample OME-Zarr images (once) and return their paths."""
    import numpy as np

    from napari_rat.io import write_image, write_labels
    from napari_rat.sample_data import nuclei_2d
    from napari_rat.synthetic import synthetic_nuclei

    output.mkdir(parents=True, exist_ok=True)

    def nuclei(path: Path) -> None:
        image, truth = nuclei_2d()
        write_image(
            path,
            image,
            axes="yx",
            scale=NUCLEI_SPACING,
            levels=3,
            name="BBBC038 nuclei (StarDist sample)",
        )
        write_labels(path, truth.astype(np.int32), "ground_truth")

    def volume(path: Path) -> None:
        image, labels = synthetic_nuclei((24, 128, 128), VOLUME_SPACING, radius=3.0, seed=0)
        write_image(
            path,
            image,
            axes="zyx",
            scale=VOLUME_SPACING,
            translation=VOLUME_TRANSLATION,
            levels=3,
            name="synthetic nuclei",
        )
        write_labels(path, labels, "ground_truth")

    return {
        "nuclei_2d": _complete(output / "nuclei_2d.zarr", nuclei),
        "volume_3d": _complete(output / "volume_3d.zarr", volume),
    }


def _complete(path: Path, build) -> Path:
    """``path``, built by ``build`` aside and moved into place when complete (an interrupted
    run leaves no half-written sample for the next to trip on)."""
    from napari_rat.atomic_files import atomic_path

    if path.exists():
        return path
    with atomic_path(path, overwrite=False) as staged:
        build(staged)
    return path


def segment_nuclei(sample: Path, checkpoint: str, device: str = "auto") -> dict:
    """Segment the 2D sample with a checkpoint, write ``labels/rat`` into it, score it."""
    import numpy as np

    from napari_rat.commands.predict import load_model
    from napari_rat.inference import PredictOptions, resolve_device, run_prediction
    from napari_rat.inference.sources import (
        input_from_pyramid,
        predict_input,
        write_prediction_into_labels,
    )
    from napari_rat.io import open_pyramid
    from napari_rat.train.metrics import segmentation_metrics

    pyramid = open_pyramid(sample)
    source = input_from_pyramid(pyramid, level=0)
    model = load_model(checkpoint, str(resolve_device(device)))  # dense runs as local
    start = time.perf_counter()
    result = run_prediction(predict_input(model, source, options=PredictOptions(device=device)))
    seconds = time.perf_counter() - start
    write_prediction_into_labels(result, source, pyramid, "rat", overwrite=True)
    truth = np.asarray(pyramid.labels["ground_truth"].levels[0].data)
    pred = np.asarray(result.labels)
    return {
        "seconds": round(seconds, 2),
        "instances": int(result.num_instances),
        "whole_image": segmentation_metrics(pred, truth),
        "held_out_quarter": segmentation_metrics(pred[:, 384:], truth[:, 384:]),
    }


def _run(args: argparse.Namespace) -> int:
    from napari_rat.atomic_files import atomic_path
    from napari_rat.errors import CommandError

    output = Path(args.output).expanduser()
    if output.exists() and not output.is_dir():
        raise CommandError(
            f"--output {output} is a file, not a folder; give a folder (it is created if "
            "missing) or move the file away"
        )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create the --output folder {output} ({exc.strerror}); choose another --output"
        ) from None
    samples = prepare_samples(output)
    print(f"sample data in {output}: " + ", ".join(p.name for p in samples.values()))
    if not args.headless:
        try:
            import napari
        except ImportError:
            raise CommandError(
                'napari is not installed: pip install "napari-rat[napari]"'
            ) from None
        from napari_rat._widgets.demo_viewer import build_viewer

        build_viewer(samples, show=True)
        napari.run()
        return 0
    summary = {"samples": {k: str(v) for k, v in samples.items()}}
    scores = segment_nuclei(samples["nuclei_2d"], args.checkpoint, args.device)
    summary["segmentation"] = scores
    held = scores["held_out_quarter"]
    print(
        f"segmented nuclei_2d.zarr in {scores['seconds']} s: {scores['instances']} instances; "
        f"held-out quarter Dice {held['dice']:.3f}, AP@0.5 {held['ap50']:.3f}; "
        f"labels written to nuclei_2d.zarr/labels/rat"
    )
    from napari_rat.virtual_display import virtual_display

    with virtual_display() as have_display:
        if have_display:
            from napari_rat._widgets.demo_viewer import build_viewer, save_screenshot

            viewer = build_viewer(samples, show=True)
            shot = save_screenshot(viewer, output / "screenshot.png")
            summary["screenshot"] = str(shot)
            summary["layers"] = [layer.name for layer in viewer.layers]
            viewer.close()
            print(f"screenshot: {shot}")
    with atomic_path(output / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(f"summary: {output / 'summary.json'}")
    if "screenshot" not in summary:
        print("no X server for the screenshot: install xvfb (setup.sh does)", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="napari with the plugin on sample data (or headless)")
    p.add_argument(
        "--headless",
        action="store_true",
        help="no screen: segment, score, screenshot on a virtual display",
    )
    p.add_argument("--output", default="demo-out", help="where the results go (./demo-out)")
    p.add_argument("--checkpoint", default="starter", help="checkpoint file or 'starter'")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_run)
