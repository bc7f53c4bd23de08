"""The interactive dock's object actions: the current object from the clicks, committing it,
accepting the automatic segmentation, and clearing (:class:`ObjectActions`).

A mixin of :class:`~napari_rat._widgets.interactive_widget.InteractiveWidget`, kept apart so
that each file holds one concern; it uses the dock's session, layers, status line and short
workers (``session``, ``_need_session``, ``_layer``, ``_put``, ``_short``, ``_set_status``,
``viewer``, ``positive``, ``_current`` and ``_click_token``), and the heavy work runs in
:mod:`napari_rat._widgets.interactive_session`'s jobs.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from napari_rat._widgets.interactive_layers import CLICKS, COMMITTED, CURRENT, snap_to_brightest
from napari_rat._widgets.interactive_session import click_update, model_labels_job


class ObjectActions:
    """Clicks, commit, accept and clear, for the interactive dock."""

    def _on_clicks_changed(self, event) -> None:
        action = str(getattr(event, "action", "changed"))
        if self.session is None or not action.endswith(("added", "removed", "changed")):
            return
        if action.endswith("added") and self.viewer.dims.ndisplay == 3:
            indices = getattr(event, "data_indices", ())
            if snap_to_brightest(self.viewer, self.session, event.source, indices):
                return  # moving the points is a change of its own: it segments
        self.segment_clicks()

    def segment_clicks(self, *_) -> None:
        """The object of the positive and negative clicks, in a worker."""
        session = self._need_session()
        if session is None:
            return
        layer = self._layer(CLICKS, "points", create=False)
        positive, negative, elsewhere = ([], [], 0)
        if layer is not None and len(layer.data):
            signs = list(layer.features["sign"])
            positive, negative, elsewhere = session.clicks(np.asarray(layer.data), signs)
        token = self._click_token = object()
        if not positive:
            self._current = None
            if self._layer(CURRENT, "labels", create=False) is not None:
                self._put(CURRENT, np.zeros(session.layer_shape, np.uint8))
            return
        self._short(
            click_update,
            session,
            positive,
            negative,
            returned=partial(self._on_click_done, token, session, elsewhere),
        )

    def _on_click_done(self, token, session, elsewhere, value) -> None:
        if token is not self._click_token or session is not self.session:
            return
        mask, data, source = value
        self._current = (session, mask)
        self._put(CURRENT, data)
        note = f"; {elsewhere} click(s) on other planes ignored" if elsewhere else ""
        origin = "the model's instance" if source == "model" else "grown from the click"
        self._set_status(f"current object: {origin} ({int(mask.sum())} px); C commits{note}")

    def toggle_sign(self, *_) -> None:
        """``T``: switch between positive and negative clicks."""
        self.positive.value = not self.positive.value

    def _on_sign_changed(self, value) -> None:
        sign = "positive" if value else "negative"
        if CLICKS in self.viewer.layers:
            self.viewer.layers[CLICKS].feature_defaults = {"sign": sign}
        self._set_status(f"new clicks are {sign}")

    def commit(self, *_) -> None:
        """``C``: write the current object into 'RAT committed' under a new id."""
        from napari_rat.inference.commit import commit_object

        session = self._need_session()
        if session is None:
            return
        if self._current is None or self._current[0] is not session:
            self._set_status("nothing to commit: click an object first", error=True)
            return
        layer = self._layer(COMMITTED, "labels")
        data = np.array(layer.data, copy=True)  # napari's own edits of it are kept
        mask = self._current[1].reshape(data[session.where].shape)
        new = commit_object(data, mask, region=session.where)
        layer.data = data
        self._clear_clicks()
        self._set_status(f"committed object {new} into '{COMMITTED}'")

    def accept_automatic(self, *_) -> None:
        """Copy the model's instances into 'RAT committed' around the committed objects."""
        session = self._need_session()
        if session is None:
            return
        self._short(model_labels_job, session, returned=partial(self._on_model_labels, session))

    def _on_model_labels(self, session, labels) -> None:
        from napari_rat.inference.commit import add_instances

        if session is not self.session:
            return
        layer = self._layer(COMMITTED, "labels")
        data = np.array(layer.data, copy=True)
        added = add_instances(data, labels.reshape(data[session.where].shape), region=session.where)
        layer.data = data
        self._set_status(
            f"accepted {added} objects of the automatic segmentation into '{COMMITTED}': "
            "correct them with napari's label tools"
        )

    def clear(self, *_) -> None:
        """``Shift+C``: remove the clicks and the current object (committed objects stay)."""
        self._click_token = None
        self._clear_clicks()
        self._set_status("cleared the clicks and the current object")

    def _clear_clicks(self) -> None:
        self._current = None
        if CLICKS in self.viewer.layers:
            clicks = self.viewer.layers[CLICKS]
            clicks.data = np.empty((0, clicks.ndim))
        if self.session is not None and self._layer(CURRENT, "labels", create=False):
            self._put(CURRENT, np.zeros(self.session.layer_shape, np.uint8))
