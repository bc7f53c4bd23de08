"""The interactive dock's model actions: Improve model (a quick fine-tune on the committed
objects and the scribbles) and Save model (:class:`TuneActions`).

A mixin of :class:`~napari_rat._widgets.interactive_widget.InteractiveWidget`, kept apart so
that each file holds one concern; it uses the dock's session, layers, long and short workers
and status line (``session``, ``_need_session``, ``_layer``, ``_scribbles_name``, ``worker``,
``_start``, ``_short``, ``_begin_run``, ``_on_progress``, ``_on_session``, ``_set_status``,
``steps``, ``model``, ``tuned``, ``_loaded`` and ``_cancel_event``); the tuning itself is
:func:`~napari_rat.train.quick_tune.quick_tune_events`, run by
:func:`~napari_rat._widgets.interactive_session.improve_job`.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from functools import partial

import numpy as np

from napari_rat._widgets.dock_base import offer_checkpoint
from napari_rat._widgets.interactive_layers import COMMITTED
from napari_rat._widgets.interactive_session import improve_job


class TuneActions:
    """Improve model and Save model, for the interactive dock."""

    def improve_model(self, *_) -> None:
        """Quick-tune the decoder and head on 'RAT committed' and the scribbles, then compute
        the features again (in a worker, with progress and Cancel).

        'RAT committed' is taken as the truth of the whole image or plane, as
        :func:`~napari_rat.train.quick_tune.quick_tune` takes labels (a pixel of no object is
        background): accept the automatic segmentation and correct it first. Painted scribbles
        win over it.
        """
        session = self._need_session()
        if session is None or self.worker is not None:
            return
        labels = scribbles = None
        committed = self._layer(COMMITTED, "labels", create=False)
        if committed is not None and np.any(committed.data):
            labels = session.cut(committed.data).astype(np.int32)
        painted = self._layer(self._scribbles_name(), "labels", create=False)
        if painted is not None and np.any(painted.data):
            scribbles = session.cut(painted.data).astype(np.int32)
        if labels is None and scribbles is None:
            self._set_status(
                "nothing to learn from: commit objects (or accept the automatic "
                "segmentation) or paint scribbles first",
                error=True,
            )
            return
        self._cancel_event = threading.Event()
        self._begin_run("improving the model…")
        self._start(
            improve_job,
            session,
            labels,
            scribbles,
            self.steps.value,
            self._cancel_event,
            yielded=self._on_progress,
            returned=partial(self._on_session, improved=True),
        )

    def save_model(self, path=None) -> None:
        """Write the improved model (``save_tuned``, atomic) and choose it in the RAT
        inference dock; without ``path``, ask for one."""
        from napari_rat.train.quick_tune import save_tuned

        if self._need_session() is None:
            return
        if not self.tuned:
            self._set_status("nothing to save: improve the model first", error=True)
            return
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                self.native, "Save the improved model", "", "Checkpoints (*.safetensors)"
            )
            if not path:
                return
        if not str(path).endswith(".safetensors"):
            path = f"{path}.safetensors"
        self._short(save_tuned, self.session.model, path, returned=self._on_saved)

    def _on_saved(self, path) -> None:
        loaded = self._loaded
        self.model.use_checkpoint(path)  # this dock's choice names the model it holds
        if loaded is not None:
            self._loaded = (self.model.selection(), *loaded[1:])
            self.session = replace(self.session, checkpoint=self._loaded[0])
        where = offer_checkpoint(self.viewer, path)
        self._set_status(f"saved {path}{where}")

    def _forget_model(self, *_) -> None:
        """The model choice changed: the next Compute features loads the chosen model."""
        self._loaded = None
