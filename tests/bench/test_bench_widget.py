"""``napari-rat bench widget``: the event-loop measurement in a real viewer, on tiny images.

Only the structure of the figures is checked (benchmarks are commands, not timed assertions).
"""

import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_rat.bench.widget import PHASES, format_report, measure_widget_inference  # noqa: E402

pytestmark = pytest.mark.gui


def _sane(series, name):
    values = getattr(series, name)
    assert len(values) > 0, name
    assert all(np.isfinite(v) and v >= 0 for v in values), name


def test_measurement_during_a_tiny_run_of_the_dock(make_napari_viewer):
    from napari_rat.synthetic import synthetic_nuclei

    viewer = make_napari_viewer(show=True)
    image, _ = synthetic_nuclei((64, 64), seed=0)
    result = measure_widget_inference(viewer, image, idle_s=0.5, tile=64, tail_s=0.3)
    assert result["status"].startswith("done"), result["status"]
    assert result["layers"] == ["nuclei foreground (RAT)", "nuclei instances (RAT)"]
    for name in ("idle", "dock opened", "inference", "napari floor"):
        res = result[name]
        assert res.seconds > 0
        for series in ("lateness_ms", "response_ms", "redraw_ms"):
            _sane(res, series)
        # Every tick and probe time falls inside the measurement.
        assert res.start <= min(res.tick_at) and res.start <= min(res.probe_at)
    idle = result["idle"]
    # How many ticks fit in the 0.5 s depends on the machine (a software-GL redraw per probe
    # can take 100+ ms), but the timer kept firing and the baseline lasted as long as asked.
    assert len(idle.lateness_ms) >= 2 and np.all(np.diff(idle.tick_at) > 0)
    assert 0.5 <= idle.tick_at[-1] - idle.start and 0.5 <= idle.seconds < 5
    # The phases tile the run, in order.
    assert [name for name, _, _ in result["phases"]] == list(PHASES)
    bounds = [b for _, a, b in result["phases"]]
    assert all(a <= b for _, a, b in result["phases"]) and bounds == sorted(bounds)
    busy = result["inference"]
    total = sum(busy.summary(between=(a, b))["lateness_ms"]["n"] for _, a, b in result["phases"])
    assert total == len(busy.lateness_ms)
    # napari's floor: 64^2 copies of the result layers, added and removed again.
    assert [lyr.name for lyr in viewer.layers] == ["nuclei", *result["layers"]]
    report = format_report(result)
    assert "| inference |" in report and "target" in report and "| tiles |" in report
    assert "| napari floor |" in report and "napari's floor" in report


@pytest.mark.slow
def test_bench_command_in_a_fresh_process_survives_the_dock_loading_the_model(tmp_path):
    # A fresh interpreter loads the model only when the dock runs, after the canvas has drawn:
    # the order in which triton (with torch's CUDA wheels) crashed Mesa's OpenGL.
    out = tmp_path / "report.md"
    command = [sys.executable, "-X", "faulthandler", "-m", "napari_rat.cli", "bench", "widget"]
    command += ["--size", "64", "--idle-seconds", "0.3", "--tile", "64", "--output", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        _, stderr = proc.communicate()
        pytest.fail(f"bench widget hung for 300 s; its threads:\n{stderr[-6000:]}")
    assert proc.returncode == 0, stderr[-2000:]
    report = out.read_text()
    assert "dock status: done" in report and "| dock opened |" in report


def test_interactive_dock_measurement_on_a_small_scene(make_napari_viewer, tmp_path, monkeypatch):
    from napari_rat._widgets.interactive_layers import PREDICTION
    from napari_rat.bench._interactive_gui import format_gui_report, measure_interactive_dock
    from napari_rat.bench.interactive import _scene

    monkeypatch.setenv("NAPARI_RAT_CACHE_DIR", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    image, truth, _ = _scene(2, 128)
    result = measure_interactive_dock(viewer, image, truth, strokes=2, idle_s=0.5)
    assert "computed" in result["status"], result["status"]  # a fresh cache: the model ran
    for name in ("idle", "dock opened", "features", "adding the input layers", "scribble updates"):
        assert result[name].seconds > 0, name
        _sane(result[name], "lateness_ms")
    assert len(result["update_s"]) == 2
    assert (np.asarray(viewer.layers[PREDICTION].data) > 0).any()  # the strokes were predicted
    report = format_gui_report(result, 128)
    assert "| features |" in report and "target 100 ms" in report
