"""The "Train on cluster" dock in a real viewer, on a real local Ray head it starts itself:
layers -> training set -> submit -> metrics plotted -> fetch -> the model in the inference dock,
run on the image."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("ray")

from napari_rat._widgets.cluster_widget import (  # noqa: E402
    INIT_STARTER,
    REMOTE,
    ClusterTrainingWidget,
)
from napari_rat.sample_data import nuclei_2d  # noqa: E402

pytestmark = [
    pytest.mark.gui,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@pytest.fixture
def viewer_with_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = nuclei_2d()
    viewer.add_image(np.asarray(image)[:96, :128], name="nuclei", scale=(0.5, 0.5),
                     translate=(3.0, 4.0))  # fmt: skip
    viewer.add_labels(np.asarray(labels)[:96, :128].astype(np.int32), name="corrected",
                      scale=(0.5, 0.5), translate=(3.0, 4.0))  # fmt: skip
    return viewer


def _dock(viewer, tmp_path):
    dock = ClusterTrainingWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Train on cluster")
    dock.image_layer.value = "nuclei"
    dock.labels_layer.value = "corrected"
    dock.export_dir.value = tmp_path / "export"
    dock.run_name.value = "gui-tune"
    return dock


def test_bad_form_input_is_said_and_nothing_starts(viewer_with_layers, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path / "state"))
    dock = _dock(viewer_with_layers, tmp_path)
    dock.learning_rate.value = "fast"
    dock.submit_button.native.click()
    assert "learning rate 'fast' is not a number" in dock.status.value
    assert dock._busy is None and dock.client is None
    dock.learning_rate.value = "0.001"
    dock.cluster.value = REMOTE
    assert not dock.address.native.isHidden() and not dock.token.native.isHidden()
    viewer_with_layers.layers.remove("corrected")  # the user removed the Labels layer
    dock.submit_button.native.click()
    assert "choose the Labels layer" in dock.status.value
    assert not (tmp_path / "export").exists()


TRIGGERED = {
    "submit": lambda dock, viewer: dock.submit_button.native.click(),
    "_on_cluster_kind": lambda dock, viewer: setattr(dock.cluster, "value", REMOTE),
    "_on_data_kind": lambda dock, viewer: setattr(dock.data, "value", "config file"),
    "_on_init_kind": lambda dock, viewer: setattr(dock.init_from, "value", "checkpoint file"),
    "_refresh_layers": lambda dock, viewer: viewer.add_image(np.zeros((4, 4)), name="x"),
    "_on_error": None,  # from the worker of a submission to an address where nothing listens
    "_on_action_done": None,
}


@pytest.mark.parametrize("name", list(TRIGGERED))
def test_an_exception_in_a_callback_stays_in_the_dock(
    viewer_with_layers, qtbot, tmp_path, monkeypatch, caplog, name
):
    import logging
    import socket

    def fail(self, *args, **kwargs):
        raise ValueError(f"boom in {name}")

    monkeypatch.setattr(ClusterTrainingWidget, name, fail)
    monkeypatch.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path / "state"))
    caplog.set_level(logging.ERROR)
    viewer = viewer_with_layers
    dock = _dock(viewer, tmp_path)
    trigger = TRIGGERED[name]
    if trigger is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dock.cluster.value = REMOTE
        dock.address.value = f"http://127.0.0.1:{port}"
        dock.token.value = "x"
        dock.epochs.value = 1
        dock.submit_button.native.click()
    else:
        trigger(dock, viewer)
    qtbot.waitUntil(lambda: f"boom in {name}" in caplog.text, timeout=120_000)
    qtbot.waitUntil(lambda: dock._busy is None, timeout=60_000)
    assert f"boom in {name}" in dock.status.value and dock.status.value.startswith("error in")
    assert dock.submit_button.enabled


def test_layers_to_a_fetched_model_that_segments(viewer_with_layers, qtbot, tmp_path, monkeypatch):
    """Submit from the layers, Stop after the first checkpoint, Resume (a new job continuing
    the run), watch it to the end (table, log, plot), Fetch, and segment with the model."""
    from napari_rat.cluster.local_head import LOCAL_HEAD_NICENESS, recorded_head
    from napari_rat.model import load_checkpoint

    psutil = pytest.importorskip("psutil")
    monkeypatch.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    viewer = viewer_with_layers
    dock = _dock(viewer, tmp_path)
    assert dock.init_from.value == INIT_STARTER
    dock.epochs.value = 3
    dock.workers.value = 2
    dock.crop_size.value = 48
    dock.batch_size.value = 2
    dock.precision.value = "fp32"
    dock.submit_button.native.click()
    qtbot.waitUntil(
        lambda: dock.client is not None or "error" in dock.status.value, timeout=240_000
    )
    assert dock.client is not None, dock.status.value
    head = recorded_head()
    assert head is not None and dock._started_head is not None  # started on demand
    # the head (and so its training workers) yields the CPU to the viewer
    assert psutil.Process(head.pid).nice() == LOCAL_HEAD_NICENESS
    first = dock.jobs.value

    def status(job):
        return {r[0]: r for r in dock.table.rows()}.get(job, [None] * 3)[2]

    def checkpointed():
        assert status(first) not in ("FAILED", "STOPPED", "SUCCEEDED"), dock.log.value[-3000:]
        return any(e.kind == "checkpoint" for e in dock.client.events(first, max_age_s=2.0))

    qtbot.waitUntil(checkpointed, timeout=480_000)
    dock.stop_button.native.click()
    qtbot.waitUntil(lambda: status(first) == "STOPPED", timeout=120_000)
    dock.resume_button.native.click()
    qtbot.waitUntil(lambda: dock.jobs.value != first, timeout=60_000)
    job = dock.jobs.value
    qtbot.waitUntil(lambda: status(job) in ("SUCCEEDED", "FAILED", "STOPPED"), timeout=480_000)
    row = {r[0]: r for r in dock.table.rows()}[job]
    assert row[2] == "SUCCEEDED", dock.log.value[-3000:]
    assert row[1] == "gui-tune" and float(row[4]) > 0  # the same run; its latest loss
    steps = [e.step for e in dock.client.events(job) if e.kind == "progress"]
    assert steps and steps[0] > 1, steps  # continued from the stopped job's checkpoint
    qtbot.waitUntil(lambda: bool(dock.plot.shown[0]), timeout=20_000)
    assert [s for s, _ in dock.plot.shown[0]] == steps  # the plot is of the resumed job
    assert not dock.plot.widget.pixmap().isNull()
    assert "[napari-rat rank 0] step" in dock.log.value  # the people's lines...
    assert "napari-rat-event" not in dock.log.value  # ...not the machine's (those are plotted)
    assert "\x1b[" not in dock.log.value  # nor Ray's terminal colours
    exported = tmp_path / "export" / "gui-tune.zarr"
    assert (exported / "labels" / "training").is_dir()

    dock.fetch_button.native.click()
    qtbot.waitUntil(lambda: dock.fetched is not None or "error" in dock.status.value,
                    timeout=60_000)  # fmt: skip
    assert dock.fetched is not None, dock.status.value
    tuned = load_checkpoint(dock.fetched)
    assert tuned.checkpoint_info.model_config.spatial_dims == 2
    inference = viewer.window.dock_widgets["RAT inference (napari-rat)"]
    assert str(inference.model.selection()) == str(dock.fetched)
    inference.image_layer.value = "nuclei"
    before = len(viewer.layers)
    inference.run_button.native.click()
    qtbot.waitUntil(lambda: len(viewer.layers) >= before + 2, timeout=120_000)
    labels = viewer.layers[-1]
    assert type(labels).__name__ == "Labels"
    assert tuple(labels.translate) == (3.0, 4.0) and tuple(labels.scale) == (0.5, 0.5)

    dock.close_cluster()
    assert recorded_head() is None and not head.alive()


def test_a_volume_s_submission_starts_from_the_3d_starter(make_napari_viewer, tmp_path):
    """Current layers of an anisotropic volume with "starter model (bundled)": the request
    fine-tunes the bundled 3D starter on a 3D training set placed like the layers (no Ray
    needed to build it; the 2D starter's recipe cannot train on a volume)."""
    from napari_rat._widgets.cluster_widget import training_request
    from napari_rat.sample_data import nuclei_3d
    from napari_rat.train.datasets import build_data

    viewer = make_napari_viewer()
    image, labels = nuclei_3d()
    viewer.add_image(image, name="vol", scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    viewer.add_labels(labels.astype(np.int32), name="fixed", scale=(2.0, 1.0, 1.0),
                      translate=(4.0, 0.0, 0.0))  # fmt: skip
    dock = ClusterTrainingWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Train on cluster")
    dock.image_layer.value, dock.labels_layer.value = "vol", "fixed"
    dock.run_name.value = "vol-tune"
    assert dock.init_from.value == INIT_STARTER
    config, init = training_request(
        dock._capture_layers(),
        None,
        tmp_path,
        int(dock.crop_size.value),
        dock._init_choice(),
        dock._options(),
    )
    assert init == "starter-3d"
    assert config.model.spatial_dims == 3 and config.model.spacing == [2.0, 1.0, 1.0]
    assert config.data.crop_size[0] == 31  # at most the volume's depth
    data = build_data(config)
    assert data.train.images[0].spacing == (2.0, 1.0, 1.0)
    assert data.train[0]["images"][0].ndim == 4  # [C, z, y, x] crops
