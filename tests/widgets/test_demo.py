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
