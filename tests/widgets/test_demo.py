"""The README's main job: `napari-rat demo --headless` with the bundled starter model."""

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_rat.cli import main  # noqa: E402
from napari_rat.io import open_pyramid  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_headless_demo_segments_scores_and_screenshots(tmp_path, capsys):
    out = tmp_path / "demo-out"
    assert main(["demo", "--headless", "--output", str(out)]) == 0
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
    assert "labels written" in capsys.readouterr().out
