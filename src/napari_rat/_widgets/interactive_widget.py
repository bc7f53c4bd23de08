"""The RAT interactive dock: scribbles, clicks, commit and a quick fine-tune, in 2D and 3D.

A thin front door over the interactive core: features from
:func:`~napari_rat.inference.features.compute_features` (cached on disk), scribbles and clicks
from :class:`~napari_rat.inference.interactive.InteractiveSegmenter`, commits from
:mod:`napari_rat.inference.commit`, the fine-tune from
:func:`~napari_rat.train.quick_tune.quick_tune_events` and
:func:`~napari_rat.train.quick_tune.save_tuned`. All model, classifier and tuning work runs in
thread workers (:mod:`napari_rat._widgets.interactive_session`); the GUI thread swaps layers'
data. The object actions (clicks, commit, accept, clear) are in
:mod:`napari_rat._widgets.interactive_objects`, Improve and Save model in
:mod:`napari_rat._widgets.interactive_tuning`, the layers' helpers in
:mod:`napari_rat._widgets.interactive_layers`.

The dock's layers are placed like the image (its ``scale``, ``translate``, ``units`` and
``axis_labels``): ``RAT scribbles`` (or a Labels layer of the image's shape the user picks;
1 background, 2, 3, ... classes), ``RAT scribble prediction``, ``RAT clicks`` (positive and
negative points), ``RAT current object`` and ``RAT committed``. A layer removed by hand is made
again when next needed.

**What a scribble update predicts.** In a 2D view, what the canvas shows: the view's rectangle
of a 2D image, or of the current slice of a volume (2D-in-3D); in a 3D view, the whole volume
up to about 64 x 128 x 128 voxels, else a box of that size around the camera's centre
(:func:`~napari_rat._widgets.interactive_session.prediction_box`). A 2D model on a volume
takes the current plane: its features, scribbles and clicks are that plane's. A click added in a
3D view moves to the brightest voxel on its view ray, as the attention dock picks a 3D click.
"""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, ProgressBar, PushButton, SpinBox

from napari_rat._widgets.dock_base import (
    ModelDock,
    dock_callback,
    start_worker,
    wrap_status_label,
)
from napari_rat._widgets.dock_shortcuts import DockShortcuts, when_closed
from napari_rat._widgets.interactive_layers import (
    CLICKS,
    COMMITTED,
    CURRENT,
    PREDICTION,
    SCRIBBLES,
    check_image,
    check_layers,
    dock_layer,
    put_labels,
    view_region,
)
from napari_rat._widgets.interactive_objects import ObjectActions
from napari_rat._widgets.interactive_session import (
    features_job,
    scribble_update,
)
from napari_rat._widgets.interactive_tuning import TuneActions
from napari_rat._widgets.layer_input import snapshot_layer, view_box

NEW_SCRIBBLES = f"new: {SCRIBBLES}"
#: What Compute features covers.
EXTENTS = {"whole image": "whole", "current view": "view"}
#: Quiet time (ms) after a stroke before the scribble update starts.
DEBOUNCE_MS = 300
#: The shortcuts, in micro-sam's style: key -> (method, what it does).
SHORTCUTS = {
    "S": ("segment", "segment / update (scribbles and clicks)"),
    "C": ("commit", "commit the current object"),
    "T": ("toggle_sign", "toggle positive / negative clicks"),
    "Shift-C": ("clear", "clear the clicks and the current object"),
}


class InteractiveWidget(ObjectActions, TuneActions, ModelDock):
    """Segment interactively: paint scribbles, click objects, commit, improve the model."""

    CALLBACKS = (
        *ModelDock.CALLBACKS,
        "compute_features",
        "cancel",
        "segment",
        "update_scribbles",
        "segment_clicks",
        "commit",
        "clear",
        "toggle_sign",
        "accept_automatic",
        "improve_model",
        "save_model",
        "_on_progress",
        "_schedule_update",
        "_on_clicks_changed",
        "_on_sign_changed",
        "_forget_model",
        "release_shortcuts",
    )

    def __init__(self, napari_viewer):
        from qtpy.QtCore import QTimer

        self.extent = ComboBox(label="features of", choices=list(EXTENTS), value="whole image")
        self.extent.tooltip = (
            "current view: the features of what the canvas shows (for an image whose features "
            "would not fit in memory); scribbles and clicks then act there"
        )
        self.scribble_choice = ComboBox(label="scribbles", choices=self._scribble_layers)
        self.output = ComboBox(label="prediction", choices=["semantic", "instances"])
        self.positive = CheckBox(text="positive clicks (T toggles)", value=True)
        self.steps = SpinBox(label="tune steps", min=1, max=5000, value=60)
        self.compute_button = PushButton(text="Compute features")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.segment_button = PushButton(text="Segment / update (S)")
        self.commit_button = PushButton(text="Commit (C)")
        self.clear_button = PushButton(text="Clear (Shift+C)")
        self.accept_button = PushButton(text="Accept automatic segmentation")
        self.improve_button = PushButton(text="Improve model")
        self.save_button = PushButton(text="Save model...")
        keys = "; ".join(f"{k.replace('-', '+')}: {what}" for k, (_, what) in SHORTCUTS.items())
        self.keys = Label(value=f"keys: {keys}")
        super().__init__(
            napari_viewer,
            options=[self.extent, self.scribble_choice, self.output, self.positive, self.steps],
            actions=[
                self.compute_button,
                self.cancel_button,
                self.progress,
                self.segment_button,
                self.commit_button,
                self.clear_button,
                self.accept_button,
                self.improve_button,
                self.save_button,
                self.keys,
            ],
            status="choose an image and compute its features",
        )
        wrap_status_label(self.keys.native)
        self.native.setToolTip(
            "Paint 1 (background) and 2, 3, ... (classes) in 'RAT scribbles'; click objects "
            "in 'RAT clicks'. Shortcuts: " + keys
        )
        self.session = None  # the current Session (features and segmenter)
        self._tuned_model = None  # the last model Improve model made
        self._current = None  # (session, mask) of the current object
        self._scribble_job = None
        self._click_token = None
        self._cancel_event: threading.Event | None = None
        self._short_workers: set = set()
        # (checkpoint, device, model) of the session, reused until the model choice changes
        self._loaded: tuple | None = None
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.update_scribbles)
        for button, action in (
            (self.compute_button, self.compute_features),
            (self.cancel_button, self.cancel),
            (self.segment_button, self.segment),
            (self.commit_button, self.commit),
            (self.clear_button, self.clear),
            (self.accept_button, self.accept_automatic),
            (self.improve_button, self.improve_model),
            (self.save_button, lambda: self.save_model()),
        ):
            button.clicked.connect(action)
        self.positive.changed.connect(self._on_sign_changed)
        for choice in (self.model.kind, self.model.checkpoint, self.device):
            choice.changed.connect(self._forget_model)
        self.shortcuts = DockShortcuts(
            self.viewer,
            {key: getattr(self, method) for key, (method, _) in SHORTCUTS.items()},
        )
        self.shortcuts.bind()
        when_closed(self.native, self.release_shortcuts)

    # ------------------------------------------------------------------ state
    @property
    def tuned(self) -> bool:
        """Whether the session's model came from Improve model (Save model writes it)."""
        return self.session is not None and self.session.model is self._tuned_model

    @property
    def busy(self) -> bool:
        """Whether any of the dock's workers still runs."""
        # a started worker is not yet running until the thread pool picks it up: count it
        # from its start to its ``finished``
        return self.worker is not None or bool(self._short_workers)

    @property
    def update_pending(self) -> bool:
        """Whether a scribble update waits for painting to pause (the debounce)."""
        return self._timer.isActive()

    def _refresh_layers(self, *_) -> None:
        super()._refresh_layers()
        self.scribble_choice.reset_choices()

    def _scribble_layers(self, *_) -> list[str]:
        from napari.layers import Labels

        if not hasattr(self, "viewer"):  # made before the dock's base is
            return [NEW_SCRIBBLES]
        ours = {SCRIBBLES, PREDICTION, CURRENT, COMMITTED}
        names = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer.name not in ours
        ]
        return [NEW_SCRIBBLES, *names]

    def _scribbles_name(self) -> str:
        value = self.scribble_choice.value
        return SCRIBBLES if value in (None, NEW_SCRIBBLES) else value

    def _need_session(self):
        if self.session is None:
            self._set_status("compute the image's features first", error=True)
        return self.session

    # --------------------------------------------------------------- features
    def compute_features(self, *_) -> None:
        """Compute (or read back from the cache) the chosen image's features in a worker."""
        if self.worker is not None:
            self._set_status("busy: wait, or Cancel", error=True)
            return
        layer = self.chosen_layer()
        if layer is None:
            return
        try:
            shape = check_image(layer)
            checkpoint = self.model.selection(len(shape))
            self._check_layers(shape)
        except ValueError as exc:
            self._set_status(f"error: {exc}", error=True)
            return
        step = [int(round(v)) for v in layer.world_to_data(self.viewer.dims.point)]
        view = view_box(self.viewer, layer) if EXTENTS[self.extent.value] == "view" else None
        model = None
        if self._loaded is not None and self._loaded[:2] == (checkpoint, self.device.value):
            model = self._loaded[2]  # loaded already (the improved one after Improve model)
        self._begin_run(f"features of {layer.name}…")
        self._cancel_event = threading.Event()
        self._start(
            features_job,
            checkpoint,
            self.device.value,
            snapshot_layer(layer),
            step,
            model,
            self._cancel_event,
            view,
            yielded=self._on_progress,
            returned=partial(self._on_session, improved=False),
        )

    def _check_layers(self, shape) -> None:
        """Refuse an image whose shape the dock's existing layers (or the chosen scribbles
        layer) do not have: they stay as they are."""
        names = {self._scribbles_name(), PREDICTION, CLICKS, CURRENT, COMMITTED}
        check_layers(self.viewer, names, shape)

    def _begin_run(self, text: str) -> None:
        self.compute_button.enabled = self.improve_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self._set_status(text)

    def _on_progress(self, p) -> None:
        """The engine's :class:`~napari_rat.inference.Progress` or a training event."""
        if self.worker is None:
            return
        if getattr(p, "kind", None) is not None:  # a TrainEvent
            if p.kind != "progress":
                return
            done, total, text = p.step, p.total_steps, f"improving the model: {p}"
        else:
            done, total, text = p.done, p.total, f"features: {p.stage} {p.done}/{p.total}"
        self.progress.max = max(1, total)
        self.progress.value = min(done, total)
        self._set_status(text)

    def _on_session(self, session, improved: bool) -> None:
        if session is None:
            self._set_status("cancelled: nothing changed")
            return
        self._cancel_scribble_job()
        self.session, self._current = session, None
        self._loaded = (session.checkpoint, session.device, session.model)
        if improved:
            self._tuned_model = session.model
            done = (
                f"model improved and features recomputed in {session.seconds:.1f} s (Compute "
                "features keeps it until the model choice changes)"
            )
        elif session.maps.from_cache:
            done = f"features of {session.image_name} from the cache (no model run)"
        else:
            done = f"features of {session.image_name} computed in {session.seconds:.1f} s"
        plane = ""
        if session.source.sliced_axes:
            axis = session.source.sliced_axes[0]
            plane = f", plane {session.where[axis].start} (the 2D model takes one plane)"
        if session.shape != tuple(session.layer_shape[a] for a in session.session_axes):
            box = ", ".join(f"{w.start}:{w.stop}" for w in session.where)
            plane += f", pixels [{box}] (the view)"
        self._then(
            partial(self._layer, CLICKS, "points"),  # one new layer per event-loop turn
            self._ensure_inputs,
            partial(
                self._set_status,
                f"{done}{plane}: paint 1 (background) and 2.. (classes) in "
                f"'{self._scribbles_name()}', click objects in '{CLICKS}'",
            ),
            self.segment if improved else (lambda: None),
        )

    def cancel(self, *_) -> None:
        """Stop the features or the fine-tune (between tiles or steps); nothing is changed."""
        if self.worker is None:
            return
        self._set_status("cancelling…")
        if self._cancel_event is not None:  # the job stops between tiles or steps and
            self._cancel_event.set()  # cleans up (a quit worker would leave it suspended)
        else:
            self.worker.quit()

    def _on_finished(self) -> None:
        if self.worker is not None and self.worker.abort_requested:
            self._drop_steps()
            self._set_status("cancelled: nothing changed")
        super()._on_finished()

    def _end_run(self) -> None:
        super()._end_run()
        self._cancel_event = None
        self.compute_button.enabled = self.improve_button.enabled = True
        self.cancel_button.enabled = False

    # ----------------------------------------------------------------- layers
    def _layer(self, name: str, kind: str, *, create: bool = True):
        """The dock's layer ``name`` (see :func:`dock_layer`)."""
        sign = "positive" if self.positive.value else "negative"
        return dock_layer(self.viewer, self.session, name, kind, create=create, sign=sign)

    def _ensure_inputs(self) -> None:
        """The clicks and scribbles layers exist, watched and with the dock's keys."""
        clicks = self._layer(CLICKS, "points")
        scribbles = self._layer(self._scribbles_name(), "labels")
        for layer, handler, events in (
            (clicks, self._on_clicks_changed, ("data",)),
            (scribbles, self._schedule_update, ("paint", "data")),
        ):
            for event in events:  # napari ignores a second connection of the same method
                getattr(layer.events, event).connect(handler)
            self.shortcuts.bind_layer(layer)

    def _put(self, name: str, data: np.ndarray) -> None:
        put_labels(self.viewer, self.session, name, data)

    # -------------------------------------------------------------- scribbles
    def _schedule_update(self, *_) -> None:
        """A stroke (or new scribbles): update once painting pauses (debounced)."""
        self._timer.start()

    def segment(self, *_) -> None:
        """``S``: update the scribble prediction and the clicked object now."""
        if self._need_session() is None:
            return
        self._ensure_inputs()
        self.update_scribbles()
        self.segment_clicks()

    def update_scribbles(self, *_) -> None:
        """Fit on the scribbles and predict the view in a worker; a newer update cancels it."""
        session = self._need_session()
        if session is None:
            return
        self._timer.stop()
        layer = self._layer(self._scribbles_name(), "labels", create=False)
        if layer is None:
            return
        scribbles = session.cut(layer.data).copy()  # the worker must not see later strokes
        if not scribbles.any():
            return
        job = session.segmenter.scribble_job(scribbles, view_region(self.viewer, session, layer))
        self._cancel_scribble_job()
        self._scribble_job = job
        self._short(
            scribble_update,
            session,
            job,
            self.output.value,
            returned=partial(self._on_scribbles_done, job, session),
            cancelled_ok=True,
        )
        self._set_status("updating the scribble prediction…")

    def _cancel_scribble_job(self) -> None:
        if self._scribble_job is not None:
            self._scribble_job.cancel()
            self._scribble_job = None

    def _on_scribbles_done(self, job, session, data) -> None:
        if job is not self._scribble_job or session is not self.session:
            return  # a newer stroke, or new features, took over
        self._scribble_job = None
        self._put(PREDICTION, data)
        self._set_status(f"scribble prediction updated ({self.output.value})")

    # ----------------------------------------------------------------- clicks
    # ---------------------------------------------------------------- workers
    def _short(self, function, *args, returned, cancelled_ok: bool = False) -> None:
        """Run a short job (scribbles, clicks, reads, saves) beside the dock's long run."""
        from napari_rat.inference import PredictionCancelled

        def failed(exc):
            if not (cancelled_ok and isinstance(exc, PredictionCancelled)):
                self._set_status(f"error: {exc}", error=True)

        holder = []

        def done():
            self._short_workers.discard(holder[0])

        guard = partial(dock_callback, on_error=self._callback_failed)
        worker = start_worker(
            function, *args, returned=guard(returned), errored=guard(failed), finished=done
        )
        holder.append(worker)
        self._short_workers.add(worker)

    def release_shortcuts(self, *_) -> None:
        """Unbind the dock's keys (the viewer's earlier ones come back); on closing the dock."""
        self.shortcuts.release()
        self._timer.stop()
        self._cancel_scribble_job()
