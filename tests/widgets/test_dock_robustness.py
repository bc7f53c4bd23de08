"""What no dock may do, whatever the user does: crash napari, nest its own handlers, let an
exception reach Qt, or widen itself over the canvas (real viewers, real runs)."""

import logging

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_rat._widgets.attention_widget import AttentionWidget  # noqa: E402
from napari_rat._widgets.inference_widget import InferenceWidget  # noqa: E402
from napari_rat.synthetic import synthetic_nuclei  # noqa: E402

pytestmark = pytest.mark.gui


def _inference_dock(viewer, checkpoint, layer_name="img", tile=16):
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")
    widget.model.use_checkpoint(checkpoint)
    if layer_name is not None:
        widget.image_layer.value = layer_name
    widget.tile.value = tile
    return widget


def _results(viewer):
    return [layer for layer in viewer.layers if layer.name.endswith("(RAT)")]


def test_progress_events_never_nest_and_each_run_has_one_activity_bar(
    make_napari_viewer, qtbot, dock_checkpoints
):
    """napari's progress widgets process events while they update; a progress event handled
    inside them ran the dock's handler again (3-5 deep), each making a bar of its own."""
    from napari.utils import progress

    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((96, 96), seed=2)
    viewer.add_image(img, name="img")
    widget = _inference_dock(viewer, dock_checkpoints["2d"])
    depth, deepest, events = [0], [0], []
    handler = widget._on_progress

    def counted(p):
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        events.append(p)
        try:
            handler(p)
        finally:
            depth[0] -= 1

    widget._on_progress = counted
    bars = []
    progress._all_instances.events.changed.connect(lambda e: bars.extend(e.added))
    for _ in range(2):
        widget.run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
        assert widget.status.value.startswith("done"), widget.status.value
        for layer in _results(viewer):
            viewer.layers.remove(layer)
    assert len(events) > 20 and deepest[0] == 1
    assert len(bars) == 2  # one per run, made by Run itself
    assert not [bar for bar in progress._all_instances if bar in bars]  # all closed


def test_twenty_random_run_remove_clear_cancel_cycles_in_one_viewer(
    make_napari_viewer, qtbot, dock_checkpoints
):
    """The crash of issue 11: Run, remove the results, clear the layers, hide, cancel, in any
    order (a fixed seed), runs overlapping the changes; the viewer survives and still works.

    The viewer is shown (drawn with Mesa). The test removes results one per draw: removing
    two layers in one event-loop turn while others remain makes vispy's next draw crash
    inside Mesa (napari 0.9.2, vispy 0.17, llvmpipe) with no dock involved at all.
    """
    viewer = make_napari_viewer(show=True)
    img, _ = synthetic_nuclei((48, 48), seed=5)
    widget = _inference_dock(viewer, dock_checkpoints["2d"], layer_name=None)

    def ensure_source():
        if "img" not in viewer.layers:
            viewer.add_image(img, name="img")
        widget.image_layer.value = "img"

    def run():
        ensure_source()
        widget.run()

    def run_to_end():
        run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)

    draws = [0]
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(
        lambda event: draws.__setitem__(0, draws[0] + 1)
    )

    def remove_results():
        for layer in _results(viewer):
            drawn = draws[0]
            viewer.layers.remove(layer)
            # A draw between removals (see the docstring).
            qtbot.waitUntil(lambda drawn=drawn: draws[0] > drawn, timeout=10_000)

    def hide_results_remove_source():
        for layer in _results(viewer):
            layer.visible = False
        if "img" in viewer.layers:
            viewer.layers.remove("img")

    actions = {
        "run": run,
        "run to end": run_to_end,
        "remove results": remove_results,
        "clear": viewer.layers.clear,
        "hide results, remove source": hide_results_remove_source,
        "cancel": widget.cancel,
    }
    rng = np.random.default_rng(11)
    done = []
    for name in rng.choice(list(actions), size=20):
        actions[name]()
        done.append(name)
        qtbot.wait(int(rng.integers(0, 60)))  # the event loop turns, the run goes on
    assert {"run", "remove results", "clear", "cancel"} <= set(done), done
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    # Still a working dock: a last run adds its results.
    viewer.layers.clear()
    run_to_end()
    assert widget.status.value.startswith("done"), widget.status.value
    assert {layer.name for layer in _results(viewer)} == {
        "img foreground (RAT)",
        "img instances (RAT)",
    }
    assert widget.run_button.enabled and not widget.cancel_button.enabled


INFERENCE_CALLBACKS = (
    "_refresh_layers",
    "_on_error",
    "_on_finished",
    "_run_steps",
    "run",
    "cancel",
    "_on_progress",
    "_sync_progress",
    "_on_result",
)


@pytest.mark.parametrize("name", INFERENCE_CALLBACKS)
def test_an_exception_in_any_inference_dock_callback_stays_in_the_dock(
    make_napari_viewer, qtbot, dock_checkpoints, monkeypatch, caplog, tmp_path, name
):
    """Each callback raising in turn: the failure is logged and shown, napari keeps running
    (pytest-qt fails a test on an exception that reaches Qt), and the dock ends up idle."""

    def fail(self, *args, **kwargs):
        raise ValueError(f"boom in {name}")

    monkeypatch.setattr(InferenceWidget, name, fail)
    monkeypatch.setattr(InferenceWidget, "PROGRESS_SYNC_MS", 5)
    viewer = make_napari_viewer()
    img, _ = synthetic_nuclei((96, 96), seed=2)
    viewer.add_image(img, name="img")
    checkpoint = dock_checkpoints["2d"]
    if name == "_on_error":
        checkpoint = tmp_path / "broken.safetensors"
        checkpoint.write_bytes(b"not a checkpoint")
    widget = _inference_dock(viewer, checkpoint)
    caplog.set_level(logging.ERROR)
    viewer.add_image(np.zeros((4, 4), np.float32), name="other")  # _refresh_layers
    widget.image_layer.value = "img"
    widget.run_button.native.click()
    if name == "cancel":
        widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert f"boom in {name}" in caplog.text
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget._napari_progress is None


@pytest.mark.parametrize("name", ["show_point", "_on_click", "_on_result"])
def test_an_exception_in_any_attention_dock_callback_stays_in_the_dock(
    make_napari_viewer, qtbot, dock_checkpoints, monkeypatch, caplog, name
):
    if name == "_on_click":

        def fail(self, viewer, event):
            yield
            raise ValueError(f"boom in {name}")

    else:

        def fail(self, *args, **kwargs):
            raise ValueError(f"boom in {name}")

    monkeypatch.setattr(AttentionWidget, name, fail)
    viewer = make_napari_viewer(show=True)
    img, _ = synthetic_nuclei((40, 40), seed=0)
    viewer.add_image(img, name="img")
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model.use_checkpoint(dock_checkpoints["2d"])
    widget.image_layer.value = "img"
    widget.window.value = 16
    caplog.set_level(logging.ERROR)
    widget.point.value = "20, 20"
    if name == "_on_click":
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        height, width = viewer.window._qt_viewer.canvas.size
        canvas.events.mouse_press(pos=(width / 2, height / 2), modifiers=(), button=1)
        canvas.events.mouse_release(pos=(width / 2, height / 2), modifiers=(), button=1)
    else:
        widget.show_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert f"boom in {name}" in caplog.text
    assert f"boom in {name}" in widget.status.value


def test_a_long_error_wraps_instead_of_widening_the_dock(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")
    long_path = tmp_path.joinpath(
        *[f"a_long_folder_name_without_any_spaces_{i}" * 3 for i in range(3)]
    )
    widget.model.use_checkpoint(long_path / "m.safetensors")

    def laid_out():
        # The main window's layout has given the dock the width it asks for (and the canvas
        # the rest); size hints themselves are computed when asked.
        dock = widget.native
        return dock.isVisible() and dock.width() >= dock.minimumSizeHint().width()

    qtbot.waitUntil(laid_out, timeout=10_000)
    before = widget.native.sizeHint().width(), widget.native.minimumSizeHint().width()
    canvas_before = viewer.window._qt_viewer.canvas.native.width()
    widget.run()
    message = widget.status.value
    assert "choose a checkpoint file" in message and len(message) > 300
    after = widget.native.sizeHint().width(), widget.native.minimumSizeHint().width()
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 2, (before, after)
    qtbot.waitUntil(laid_out, timeout=10_000)
    assert viewer.window._qt_viewer.canvas.native.width() >= canvas_before - 2
    assert widget.status.native.wordWrap() and widget.status.native.toolTip() == message
