"""The "Train on cluster" dock: fine-tune on the layers just corrected, on a Ray cluster.

A thin front door over :mod:`napari_rat.train.training_set` (layers -> OME-Zarr training set ->
config) and :mod:`napari_rat.cluster` (connect, submit, watch, stop, resume, fetch). The cluster
is the local head (started on demand; stopped by its pid when the dock closes if the dock
started it) or a remote dashboard URL with a token typed in (kept in memory only) or read from a
file. Everything that talks to the cluster or writes files runs in thread workers; the layers'
pixels and placement are captured on the GUI thread before a worker starts. A poller refreshes
the job table, the selected job's log and its loss / validation plot every few seconds. Fetch
copies the best checkpoint here and hands it to the RAT inference dock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    Password,
    PushButton,
    SpinBox,
)

from napari_rat._widgets.dock_base import (
    dock_callback,
    offer_checkpoint,
    show_status,
    start_worker,
    wrap_status_label,
)
from napari_rat._widgets.job_views import JobLog, JobTable, MetricsPlot, PollUpdate, poll_jobs
from napari_rat._widgets.model_imports import preload_model_stack

LOCAL = "local (this machine)"
REMOTE = "remote (dashboard URL)"
LAYERS = "current layers"
CONFIG_FILE = "config file"
INIT_STARTER = "starter model (bundled)"
INIT_FILE = "checkpoint file"
INIT_NONE = "nothing (random weights)"
DEFAULT_EXPORT = Path.home() / "napari-rat" / "training"


@dataclass
class _LayerCapture:
    """A layer's pixels and placement, taken on the GUI thread."""

    image: np.ndarray
    labels: np.ndarray
    axes: str
    spacing: tuple[float, ...]
    translation: tuple[float, ...]
    units: str | None


class ClusterTrainingWidget(Container):
    """Submit, watch, stop, resume and fetch training jobs on a Ray cluster."""

    #: What Qt, napari or a worker calls: wrapped with dock_callback, so nothing escapes to Qt.
    CALLBACKS: tuple[str, ...] = (
        "submit",
        "stop_job",
        "resume_job",
        "fetch_job",
        "_on_submitted",
        "_on_fetched",
        "_on_action_done",
        "_on_error",
        "_on_poll",
        "_on_poll_error",
        "_on_poll_finished",
        "_on_cluster_kind",
        "_on_data_kind",
        "_on_init_kind",
        "_refresh_layers",
        "_show_selected",
    )

    def __init__(self, napari_viewer):
        for name in self.CALLBACKS:
            setattr(self, name, dock_callback(getattr(self, name), self._callback_failed))
        self.viewer = napari_viewer
        self.cluster = ComboBox(label="cluster", choices=[LOCAL, REMOTE], value=LOCAL)
        self.address = LineEdit(label="address", value="https://", visible=False)
        self.token = Password(label="token", visible=False)
        self.token_file = FileEdit(label="token file", mode="r", visible=False)
        self.data = ComboBox(label="data", choices=[LAYERS, CONFIG_FILE], value=LAYERS)
        self.image_layer = ComboBox(label="image", choices=self._layers("Image"))
        self.labels_layer = ComboBox(label="labels", choices=self._layers("Labels"))
        self.export_dir = FileEdit(label="export to", mode="d", value=DEFAULT_EXPORT)
        self.config_file = FileEdit(label="config", mode="r", filter="*.yaml", visible=False)
        self.init_from = ComboBox(
            label="init from", choices=[INIT_STARTER, INIT_FILE, INIT_NONE], value=INIT_STARTER
        )
        self.init_file = FileEdit(
            label="checkpoint", mode="r", filter="*.safetensors", visible=False
        )
        self.run_name = LineEdit(label="run name", value="fine-tune")
        self.epochs = SpinBox(label="epochs", value=5, min=1, max=100_000)
        self.learning_rate = LineEdit(label="learning rate", value="0.0005")
        self.batch_size = SpinBox(label="batch size", value=4, min=1, max=4096)
        self.crop_size = SpinBox(label="crop size", value=64, min=8, max=4096)
        self.workers = SpinBox(label="workers", value=2, min=1, max=4096)
        self.gpus = FloatSpinBox(label="GPUs/worker", value=0.0, min=0.0, max=64.0, step=0.5)
        self.zero_stage = ComboBox(label="ZeRO stage", choices=[0, 1, 2, 3], value=2)
        self.offload = CheckBox(text="optimizer state on the CPU (offload)", value=False)
        self.precision = ComboBox(label="precision", choices=["bf16", "fp32", "fp16"], value="bf16")
        self.submit_button = PushButton(text="Submit")
        self.jobs = ComboBox(label="job", choices=[])
        self.stop_button = PushButton(text="Stop")
        self.resume_button = PushButton(text="Resume")
        self.fetch_button = PushButton(text="Fetch")
        self.status = Label(value="")
        wrap_status_label(self.status.native)
        super().__init__(
            widgets=[
                self.cluster,
                self.address,
                self.token,
                self.token_file,
                self.data,
                self.image_layer,
                self.labels_layer,
                self.export_dir,
                self.config_file,
                self.init_from,
                self.init_file,
                self.run_name,
                self.epochs,
                self.learning_rate,
                self.batch_size,
                self.crop_size,
                self.workers,
                self.gpus,
                self.zero_stage,
                self.offload,
                self.precision,
                self.submit_button,
                self.jobs,
                Container(
                    widgets=[self.stop_button, self.resume_button, self.fetch_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.status,
            ]
        )
        self.table = JobTable()
        self.plot = MetricsPlot()
        self.log = JobLog()
        layout = self.native.layout()
        layout.insertWidget(layout.indexOf(self.jobs.native.parent()), self.table.widget)
        layout.insertWidget(layout.indexOf(self.status.native.parent()), self.log.widget)
        layout.addWidget(self.plot.widget)

        self.client = None
        self.fetched: Path | None = None  # the last checkpoint fetched
        self._started_head = None  # the local head this dock started (stopped when it closes)
        self._busy = None  # the worker of a submit / stop / fetch
        self._poller = None
        self._closing = False
        self._submitted: dict[str, dict] = {}  # job id -> what resubmits it (config, init)

        self.cluster.changed.connect(self._on_cluster_kind)
        self.data.changed.connect(self._on_data_kind)
        self.init_from.changed.connect(self._on_init_kind)
        self.submit_button.changed.connect(self.submit)
        self.stop_button.changed.connect(self.stop_job)
        self.resume_button.changed.connect(self.resume_job)
        self.fetch_button.changed.connect(self.fetch_job)
        self.jobs.changed.connect(self._show_selected)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.native.destroyed.connect(_stop_head_on_close(self))
        preload_model_stack()  # torch off the GUI thread, and without triton (see there)

    # --- choices ------------------------------------------------------------------------
    def _layers(self, kind: str):
        def names(*_):
            return [layer.name for layer in self.viewer.layers if type(layer).__name__ == kind]

        return names

    def _refresh_layers(self, *_) -> None:
        self.image_layer.reset_choices()
        self.labels_layer.reset_choices()

    def _on_cluster_kind(self, value) -> None:
        remote = value == REMOTE
        for widget in (self.address, self.token, self.token_file):
            widget.visible = remote
        self.client = None

    def _on_init_kind(self, value) -> None:
        self.init_file.visible = value == INIT_FILE

    def _on_data_kind(self, value) -> None:
        layers = value == LAYERS
        for widget in (self.image_layer, self.labels_layer, self.export_dir):
            widget.visible = layers
        self.config_file.visible = not layers

    def _set_status(self, text: str, error: bool = False) -> None:
        show_status(self.status.native, text, error)

    def _on_error(self, exc: BaseException) -> None:
        self._set_status(f"error: {exc}", error=True)

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        """A callback raised: say so, and let the buttons work again."""
        import logging

        logging.getLogger(__name__).error("%s failed", name, exc_info=exc)
        self._set_status(f"error in {name}: {type(exc).__name__}: {exc}", error=True)
        self._busy = None
        self.submit_button.enabled = True

    # --- what the form says -------------------------------------------------------------
    def _capture_layers(self) -> _LayerCapture:
        """The chosen image and labels as plain arrays with the image's placement."""
        image_name, labels_name = self.image_layer.value, self.labels_layer.value
        if not image_name or image_name not in self.viewer.layers:
            raise ValueError("choose an image layer (or data: config file)")
        if not labels_name or labels_name not in self.viewer.layers:
            raise ValueError("choose the Labels layer with the corrected objects")
        image_layer = self.viewer.layers[image_name]
        labels_layer = self.viewer.layers[labels_name]
        if getattr(image_layer, "rgb", False):
            raise ValueError(f"{image_name!r} is RGB; the models take one grey channel")
        if image_layer.ndim not in (2, 3):
            raise ValueError(f"{image_name!r} has {image_layer.ndim} axes; choose a 2D or 3D image")

        def level0(layer):
            data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
            return np.asarray(data)

        units = {str(u) for u in getattr(image_layer, "units", ())} - {"pixel"}
        return _LayerCapture(
            image=level0(image_layer),
            labels=level0(labels_layer),
            axes="zyx"[-image_layer.ndim :],
            spacing=tuple(float(s) for s in image_layer.scale),
            translation=tuple(float(t) for t in image_layer.translate),
            units=units.pop() if len(units) == 1 else None,
        )

    def _init_choice(self) -> str | None:
        if self.init_from.value == INIT_STARTER:
            return "starter"  # the 2D or 3D one, by the data's dimensions (_submit_job)
        if self.init_from.value == INIT_FILE:
            path = self.init_file.value
            if not path or not Path(path).is_file():
                raise ValueError("choose the checkpoint to start from")
            return str(path)
        return None

    def _options(self) -> dict:
        try:
            lr = float(self.learning_rate.value)
        except ValueError:
            raise ValueError(
                f"learning rate {self.learning_rate.value!r} is not a number (e.g. 0.0005)"
            ) from None
        run = self.run_name.value.strip()
        if not run or "/" in run:
            raise ValueError("give the run a name (letters, digits, - and _)")
        return {
            "epochs": int(self.epochs.value),
            "learning_rate": lr,
            "batch_size": int(self.batch_size.value),
            "precision": self.precision.value,
            "run_name": run,
            "num_workers": int(self.workers.value),
            "gpus_per_worker": float(self.gpus.value),
            "zero_stage": int(self.zero_stage.value),
            "offload_optimizer": bool(self.offload.value) or None,
        }

    def _connection(self) -> dict:
        if self.cluster.value == LOCAL:
            return {"local": True}
        token_file = self.token_file.value
        return {
            "local": False,
            "address": self.address.value.strip(),
            "token": self.token.value or None,
            "token_file": str(token_file) if token_file and Path(token_file).is_file() else None,
        }

    # --- actions --------------------------------------------------------------------------
    def submit(self, *_) -> None:
        """Export the layers (or read the config file), connect and submit, off the GUI thread."""
        if self._busy is not None:
            self._set_status("busy with the previous action; wait for it", error=True)
            return
        try:
            init = self._init_choice()
            options = self._options()
            layers = self._capture_layers() if self.data.value == LAYERS else None
            config_file = None if layers is not None else self.config_file.value
            if layers is None and (not config_file or not Path(config_file).is_file()):
                raise ValueError("choose a config file (or data: current layers)")
            export_to = Path(self.export_dir.value or DEFAULT_EXPORT)
            crop = int(self.crop_size.value)
            connection = self._connection()
        except ValueError as exc:
            self._set_status(str(exc), error=True)
            return
        self._set_status("preparing the training set and the job...")
        self.submit_button.enabled = False
        self._busy = start_worker(
            _submit_job,
            self.client,
            connection,
            layers,
            config_file,
            export_to,
            crop,
            init,
            options,
            returned=self._on_submitted,
            errored=self._on_error,
            finished=self._on_action_done,
        )

    def _on_submitted(self, result) -> None:
        client, head, job_id, config, init = result
        self.client = client
        if head is not None:
            self._started_head = head
        self._submitted[job_id] = {"config": config, "init": init}
        self._set_status(f"submitted {job_id} to {client.url}")
        if job_id not in self.jobs.choices:
            self.jobs.choices = [*self.jobs.choices, job_id]
        self.jobs.value = job_id
        self._ensure_polling()

    def _on_action_done(self) -> None:
        self._busy = None
        self.submit_button.enabled = True

    def _selected(self) -> str | None:
        job = self.jobs.value
        if not job or self.client is None:
            self._set_status("choose a job first (submit one)", error=True)
            return None
        return job

    def stop_job(self, *_) -> None:
        job = self._selected()
        if job is None or self._busy is not None:
            return
        self._set_status(f"stopping {job}...")
        self._busy = start_worker(
            self.client.stop,
            job,
            returned=lambda ok: self._set_status(
                f"stopping {job}; its checkpoints stay for Resume" if ok else f"{job} had ended"
            ),
            errored=self._on_error,
            finished=self._on_action_done,
        )

    def resume_job(self, *_) -> None:
        """Resubmit the selected job's config with ``resume`` (same run name and storage)."""
        job = self._selected()
        if job is None or self._busy is not None:
            return
        if job not in self._submitted:
            self._set_status(
                f"{job} was not submitted from this dock; use `napari-rat submit --resume`",
                error=True,
            )
            return
        spec = self._submitted[job]
        self._set_status(f"resuming run {spec['config'].training.run_name}...")
        self._busy = start_worker(
            _resubmit,
            self.client,
            spec["config"],
            spec["init"],
            returned=lambda new: self._on_submitted(
                (self.client, None, new, spec["config"], spec["init"])
            ),
            errored=self._on_error,
            finished=self._on_action_done,
        )

    def fetch_job(self, *_) -> None:
        job = self._selected()
        if job is None or self._busy is not None:
            return
        self._set_status(f"fetching the best checkpoint of {job}...")
        self._busy = start_worker(
            self.client.fetch,
            job,
            Path(self.export_dir.value or DEFAULT_EXPORT) / "models",
            returned=self._on_fetched,
            errored=self._on_error,
            finished=self._on_action_done,
        )

    def _on_fetched(self, path: Path) -> None:
        self.fetched = path
        self._set_status(f"fetched {path}{offer_checkpoint(self.viewer, path)}")

    # --- watching -------------------------------------------------------------------------
    def _ensure_polling(self) -> None:
        if self._poller is not None or self.client is None:
            return
        self._poller = start_worker(
            poll_jobs,
            self.client,
            lambda: self.jobs.value,
            lambda: self._closing,
            yielded=self._on_poll,
            errored=self._on_poll_error,
            finished=self._on_poll_finished,
        )

    def _on_poll(self, update: PollUpdate) -> None:
        self.table.show(update.summaries)
        known = [s.submission_id for s in update.summaries]
        extra = [j for j in self.jobs.choices if j not in known]
        if list(self.jobs.choices) != known + extra:
            current = self.jobs.value
            self.jobs.choices = known + extra
            if current in self.jobs.choices:
                self.jobs.value = current
        if update.job is not None and update.job == self.jobs.value:
            self.log.add(update.new_lines, from_start=update.from_start)
            if update.plot is not None:
                self.plot.show(*update.plot)

    def _show_selected(self, *_) -> None:
        self.log.add([], from_start=True)
        self.plot.clear()

    def _on_poll_error(self, exc: BaseException) -> None:
        self._set_status(f"lost the cluster: {exc}", error=True)

    def _on_poll_finished(self) -> None:
        self._poller = None

    def close_cluster(self) -> None:
        """Stop polling and, if this dock started the local head, stop it (by its pid)."""
        self._closing = True  # the poller ends within 0.1 s
        _stop_head_on_close(self)()


def _stop_head_on_close(dock: ClusterTrainingWidget):
    def stop(*_):
        dock._closing = True
        head, dock._started_head = dock._started_head, None
        if head is not None:
            from napari_rat.cluster.local_head import stop_local_head

            stop_local_head()

    return stop


def _submit_job(client, connection, layers, config_file, export_to, crop, init, options):
    """Worker: the training set, the config, the connection (starting the local head if
    needed) and the submission; returns ``(client, started head, job id, config, init)``."""
    from napari_rat.cluster import connect, start_local_head

    config, init = training_request(layers, config_file, export_to, crop, init, options)
    started = None
    if client is None:
        if connection["local"]:
            head, now = start_local_head()
            started = head if now else None
            client = connect()
        else:
            client = connect(
                connection["address"],
                token=connection["token"],
                token_file=connection["token_file"],
                token_env=config.cluster.token_env,
            )
    job = client.submit(config, init_from=init)
    return client, started, job, config, init


def training_request(layers, config_file, export_to, crop, init, options):
    """The config and starting weights a submission sends: the layers exported as a training
    set (or the config file) with the form's ``options``; ``init`` ``"starter"`` becomes the
    bundled starter of the data's dimensions (the 3D one for a volume)."""
    from napari_rat.config import load_config
    from napari_rat.inference.model_loading import STARTER, starter_for
    from napari_rat.train.training_set import (
        base_config_for_checkpoint,
        export_training_set,
        training_config_for,
        with_training_options,
    )

    if layers is not None:
        if init == STARTER:
            init = starter_for(len(layers.axes))
        base = base_config_for_checkpoint(init or starter_for(len(layers.axes)))
        dataset = export_training_set(
            export_to / f"{options['run_name']}.zarr",
            layers.image,
            layers.labels,
            axes=layers.axes,
            spacing=layers.spacing,
            units=layers.units or base.data.units,
            translation=layers.translation,
            overwrite=True,
        )
        spatial = layers.labels.shape
        config = training_config_for(base, dataset, units=layers.units, spatial_shape=spatial)
        options = {**options, "crop_size": [min(crop, s) for s in spatial]}
    else:
        config = load_config(config_file)
        if init == STARTER:
            init = starter_for(config.model.spatial_dims)
    return with_training_options(config, **options), init


def _resubmit(client, config, init):
    return client.submit(config, init_from=init, resume=True)
