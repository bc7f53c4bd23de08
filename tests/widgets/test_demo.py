"""The README's main job: `napari-rat demo --headless` with the bundled starter model."""

import contextlib
import io
import json

import imageio.v3 as iio
import numpy as np
import pytest

pytest.importorskip("napari")

from napari_rat.cli import main  # noqa: E402
from napari_rat.io import open_pyramid  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture(scope="module")
def headless_runs(tmp_path_factory):
    """`napari-rat demo --headless` run twice into one folder: its output, the stdout and the
    screenshot of each run."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    stdout, shots = [], []
    for _ in range(2):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["demo", "--headless", "--output", str(out)]) == 0
        stdout.append(printed.getvalue())
        shots.append(iio.imread(out / "screenshot.png")[..., :3])
    return out, stdout, shots


def test_headless_demo_segments_scores_and_screenshots(headless_runs):
    out, stdout, _ = headless_runs
    summary = json.loads((out / "summary.json").read_text())
    held = summary["segmentation"]["held_out_quarter"]
    # The starter model beats the Otsu floor on the held-out quarter (Dice 0.854).
    assert held["dice"] > 0.88, held
    image = open_pyramid(out / "nuclei_2d.zarr")
    assert {"ground_truth", "rat"} <= set(image.labels)
    rat = np.asarray(image.labels["rat"].levels[0].data)
    assert rat.max() == summary["segmentation"]["instances"] > 50
    shot = out / "screenshot.png"
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    assert {"rat", "ground_truth"} <= set(summary["layers"])
    assert all("labels written" in printed for printed in stdout)


def _canvas_and_image(shot):
    """Where napari's canvas and the image inside it are in a window screenshot, as
    ``(x0, x1, y0, y1)`` boxes (stop exclusive), found from the pixels alone.

    The canvas is black where nothing is drawn: its widest run of black pixels on one row (a
    margin row above the image) gives its columns, and the first and last rows black all
    across them its rows. The image is what is not black inside.
    """
    black = shot.sum(-1) == 0
    best = (0, 0, 0)  # run length, row, start
    for row in range(black.shape[0]):
        padded = np.concatenate([[0], black[row].astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        starts, stops = edges[::2], edges[1::2]
        if len(starts):
            i = int(np.argmax(stops - starts))
            if stops[i] - starts[i] > best[0]:
                best = (int(stops[i] - starts[i]), row, int(starts[i]))
    width, _, x0 = best
    x1 = x0 + width
    margin_rows = np.flatnonzero(black[:, x0:x1].all(1))
    y0, y1 = int(margin_rows[0]), int(margin_rows[-1]) + 1
    drawn = ~black[y0:y1, x0:x1]
    cols, rows = np.flatnonzero(drawn.any(0)), np.flatnonzero(drawn.any(1))
    image = (x0 + cols[0], x0 + cols[-1] + 1, y0 + rows[0], y0 + rows[-1] + 1)
    return (x0, x1, y0, y1), tuple(int(v) for v in image)


def test_headless_screenshot_shows_the_whole_image_every_run(headless_runs):
    """The view was fitted before the window's final layout, so each run clipped the image
    left and right by a different amount."""
    _, _, shots = headless_runs
    found = [_canvas_and_image(shot) for shot in shots]
    for (cx0, cx1, cy0, cy1), (ix0, ix1, iy0, iy1) in found:
        assert cx1 - cx0 > 300 and cy1 - cy0 > 300  # the canvas, not some black icon
        # The image's drawn pixels touch no edge of the canvas: a black margin all round.
        assert cx0 < ix0 and ix1 < cx1 and cy0 < iy0 and iy1 < cy1
        # The 512x512 image is shown square: nothing of it is cut off.
        assert abs((ix1 - ix0) - (iy1 - iy0)) <= 0.01 * (ix1 - ix0)
    assert shots[0].shape == shots[1].shape
    assert found[0] == found[1]


def test_samples_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A sample whose writing fails leaves nothing behind, and the next run writes it whole."""
    from napari_rat.commands import demo

    calls = []

    def failing_labels(*args, **kwargs):
        calls.append(args[0])
        raise KeyboardInterrupt  # the user pressed Ctrl-C between the image and its labels

    monkeypatch.setattr("napari_rat.io.write_labels", failing_labels)
    with pytest.raises(KeyboardInterrupt):
        demo.prepare_samples(tmp_path)
    assert calls and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    samples = demo.prepare_samples(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei_2d.zarr", "volume_3d.zarr"]
    for path in samples.values():
        assert "ground_truth" in open_pyramid(path).labels
