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
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: Nominal pixel size of the bundled 2D nuclei image (its physical size is not recorded).
NUCLEI_SPACING = (1.0, 1.0)
VOLUME_SPACING = (2.0, 0.5, 0.5)
VOLUME_TRANSLATION = (10.0, 5.0, 5.0)
#: Window size of the headless screenshot (logical pixels; Qt enlarges it to the window's
#: minimum size if the docks need more) and the virtual screen it fits on.
SCREENSHOT_WINDOW = (1600, 1150)
VIRTUAL_SCREEN = (1920, 1200)


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


@contextlib.contextmanager
def virtual_display():
    """A private Xvfb display when there is no ``DISPLAY``; yields whether one is available."""
    if os.environ.get("DISPLAY"):
        yield True
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        yield False
        return
    for number in range(99, 140):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            break
    proc = subprocess.Popen(
        [
            xvfb,
            f":{number}",
            "-screen",
            "0",
            "{}x{}x24".format(*VIRTUAL_SCREEN),
            "-nolisten",
            "tcp",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                break
            time.sleep(0.05)
        os.environ["DISPLAY"] = f":{number}"
        yield True
    finally:
        os.environ.pop("DISPLAY", None)
        proc.terminate()
        proc.wait(10)


def build_viewer(samples: dict[str, Path], show: bool):
    """A napari viewer with the samples opened by our reader and the plugin's docks."""
    import napari

    from napari_rat._widgets.attention_widget import AttentionWidget
    from napari_rat._widgets.inference_widget import InferenceWidget
    from napari_rat._widgets.loader_widget import OmeZarrLoaderWidget

    viewer = napari.Viewer(title="napari-rat demo", show=show)
    viewer.open(str(samples["nuclei_2d"]), plugin="napari-rat")
    loader = OmeZarrLoaderWidget(viewer)
    loader.path_edit.setText(str(samples["volume_3d"]))  # Inspect, then Open: the 3D sample
    viewer.window.add_dock_widget(loader, name="OME-Zarr loader", area="right")
    viewer.window.add_dock_widget(InferenceWidget(viewer), name="RAT inference", area="right")
    viewer.window.add_dock_widget(AttentionWidget(viewer), name="RAT attention", area="right")
    viewer.reset_view()
    return viewer


def save_screenshot(viewer, path: Path, timeout: float = 10.0) -> Path:
    """Save a screenshot of the whole window, the whole image in view, every run alike.

    The window gets a fixed size (napari would restore the last session's), and the view is
    fitted only once the canvas has its final size: the layout resizes the canvas after the
    window is shown, and a view fitted before that was clipped left and right by however much
    the canvas then narrowed.
    """
    import imageio.v3 as imageio
    from qtpy.QtWidgets import QApplication

    from napari_rat.atomic_files import atomic_path

    viewer.window.resize(*SCREENSHOT_WINDOW)
    last, stable_since = None, time.monotonic()
    deadline = stable_since + timeout
    while time.monotonic() < deadline:
        QApplication.processEvents()
        size, now = tuple(viewer.canvas.size), time.monotonic()
        if size != last:
            last, stable_since = size, now
        elif now - stable_since >= 0.5:
            break
        time.sleep(0.02)
    viewer.reset_view()
    QApplication.processEvents()
    image = viewer.screenshot(canvas_only=False, flash=False)
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, image, extension=".png")
    return path


def _run(args: argparse.Namespace) -> int:
    from napari_rat.atomic_files import atomic_path
    from napari_rat.cli import CommandError

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
    with virtual_display() as have_display:
        if have_display:
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
