"""What the docks share: the status line, starting a worker, and the model docks' choices.

- :func:`show_status` colours a status line (errors in red) for magicgui and plain Qt docks.
- :func:`start_worker` runs a function or generator in a napari thread worker with its
  signals connected; connecting ``errored`` keeps napari from re-raising the error in the GUI
  thread, so the dock shows it instead.
- :func:`dock_callback` keeps an exception raised by a dock callback (a button, a worker
  signal, a mouse callback, a layer-list event) from escaping to Qt, which would abort napari:
  the dock shows it and, when no work is left, becomes idle again. :class:`ModelDock` wraps
  every callback named in its ``CALLBACKS`` with it.
- :func:`offer_checkpoint` hands a new checkpoint (fetched, improved) to the RAT inference
  dock's model choice.
- :class:`ModelDock` is the base of the inference and attention docks: the model picker, the
  image-layer choice (kept in step with the viewer's layers), the device, the status line and
  one worker at a time (``self.worker``, ``None`` when idle). Opening one starts importing the
  model stack in the background (:mod:`napari_rat._widgets.model_imports`).

A dock's results reach the viewer as GUI-thread steps (:meth:`ModelDock._then`), run one per
event-loop turn after the worker finished: adding a layer blocks the GUI thread while napari
builds its visuals and controls (0.15-0.5 s per layer on 2 CPU cores with software OpenGL), and
between steps the viewer handles input and draws. The run (``self.worker``) ends after the last
step, so a new run waits for them.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, Widget
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QSizePolicy

from napari_rat._widgets.model_choice import ModelChoice
from napari_rat._widgets.model_imports import preload_model_stack

ERROR_STYLE = "color: #e05555;"
DEVICES = ["auto", "cpu", "cuda"]

logger = logging.getLogger(__name__)


def wrap_status_label(label) -> None:
    """Let a status ``QLabel`` wrap its text instead of widening the dock.

    Word wrap alone still widens a dock for a long unbroken token (a path, a URL); an ignored
    horizontal size hint makes the label take the width the dock has, never ask for more.
    """
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    policy = label.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    label.setSizePolicy(policy)


def show_status(label, text: str, error: bool = False) -> None:
    """Put ``text`` on a status ``QLabel``, red when it is an error (wrapped, whole in the
    tooltip)."""
    label.setText(text)
    label.setToolTip(text)
    label.setStyleSheet(ERROR_STYLE if error else "")


def dock_callback(method: Callable, on_error: Callable[[str, BaseException], None]) -> Callable:
    """``method`` wrapped so an ``Exception`` it raises goes to ``on_error(name, exc)``.

    Qt aborts the process on an exception that escapes a slot (napari's default), so no dock
    callback may raise. A generator ``method`` (a napari mouse-drag callback) stays a generator.
    A callback that finds the dock's Qt widgets deleted (work that ended after the dock or the
    viewer closed) has nothing left to update and returns quietly.
    """
    name = getattr(method, "__name__", repr(method))
    if getattr(method, "_dock_guarded", False):
        return method
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def guarded(*args, **kwargs):
            try:
                return (yield from method(*args, **kwargs))
            except Exception as exc:
                if not _widget_gone(exc):
                    on_error(name, exc)

    else:

        @functools.wraps(method)
        def guarded(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if not _widget_gone(exc):
                    on_error(name, exc)

    guarded._dock_guarded = True
    return guarded


def _widget_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is Qt's error for a widget already deleted (its dock closed)."""
    return isinstance(exc, RuntimeError) and "has been deleted" in str(exc)


def offer_checkpoint(viewer, path) -> str:
    """Choose the checkpoint ``path`` in the RAT inference dock (opened if it is not) and
    return what to tell the user: where it went, or why it could not."""
    try:
        _, dock = viewer.window.add_plugin_dock_widget("napari-rat", "RAT inference")
        dock.model.use_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - no window (headless) or no inference dock
        return f" (open it in the RAT inference dock: {exc})"
    return "; chosen in the RAT inference dock"


class WorkerRuntimeError(Exception):
    """A ``RuntimeError`` raised inside a generator worker, passed on under another type.

    superqt's generator workers take a ``RuntimeError`` for a sign that the worker object was
    deleted and end silently, without ``errored`` or ``finished``; torch raises
    ``RuntimeError`` for most failures (out of memory, bad shapes), which would leave a dock
    busy for ever.
    """


def _runtime_errors_passed_on(function: Callable) -> Callable:
    """Wrap a generator function so a ``RuntimeError`` leaves it as :class:`WorkerRuntimeError`."""

    @functools.wraps(function)
    def generator(*args, **kwargs):
        try:
            return (yield from function(*args, **kwargs))
        except RuntimeError as exc:
            raise WorkerRuntimeError(f"{type(exc).__name__}: {exc}") from exc

    return generator


def start_worker(function: Callable, *args: Any, **connect: Callable):
    """Start ``function(*args)`` in a napari thread worker and return the worker.

    ``connect`` maps signal names (``returned``, ``yielded``, ``errored``, ``finished``) to
    handlers, which run in the GUI thread. Every failure reaches ``errored`` and then
    ``finished`` (see :class:`WorkerRuntimeError`).
    """
    from napari.qt.threading import create_worker

    if inspect.isgeneratorfunction(function):
        function = _runtime_errors_passed_on(function)
    worker = create_worker(function, *args, _connect=connect, _start_thread=False)
    worker.start()
    return worker


class _NextTurn(QObject):
    """Its ``posted`` signal, connected with a queued connection, goes through the event queue."""

    posted = Signal()


class ModelDock(Container):
    """A dock that runs a model on an image layer: the choices and the plumbing it shares.

    The widgets are laid out as: model, image, ``options``, device, ``actions``, status.
    Every method named in ``CALLBACKS`` (those Qt, napari or a worker call) is wrapped with
    :func:`dock_callback` on the instance, before anything is connected.
    """

    CALLBACKS: tuple[str, ...] = (
        "_refresh_layers",
        "_follow_layer_dims",
        "_on_error",
        "_on_finished",
        "_run_steps",
    )

    def __init__(
        self,
        napari_viewer,
        options: Sequence[Widget] = (),
        actions: Sequence[Widget] = (),
        status: str = "",
    ):
        for name in self.CALLBACKS:
            setattr(self, name, dock_callback(getattr(self, name), self._callback_failed))
        self.viewer = napari_viewer
        self.model = ModelChoice()
        self.image_layer = ComboBox(label="image", choices=self._image_layers)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.status = Label(value=status)
        super().__init__(
            widgets=[self.model, self.image_layer, *options, self.device, *actions, self.status]
        )
        wrap_status_label(self.status.native)
        wrap_status_label(self.model.card.native)
        self.worker = None
        self._run_id: object | None = None
        self._steps: list[Callable[[], Any]] = []
        self._turns = None
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.image_layer.changed.connect(self._follow_layer_dims)
        self._follow_layer_dims()
        preload_model_stack()

    def _image_layers(self, *_) -> list[str]:
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, *_) -> None:
        self.image_layer.reset_choices()

    def _follow_layer_dims(self, *_) -> None:
        """Show the card of the bundled model the chosen layer gets (2D or 3D)."""
        from napari_rat._widgets.layer_input import channel_axis

        name = self.image_layer.value
        if name and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            self.model.show_for(layer.ndim - (channel_axis(layer) is not None))

    def _set_status(self, text: str, error: bool = False) -> None:
        show_status(self.status.native, text, error)

    def chosen_layer(self):
        """The chosen image layer, or ``None`` (said in the status line) when there is none."""
        name = self.image_layer.value
        if not name or name not in self.viewer.layers:
            self._set_status("choose an image layer first", error=True)
            return None
        return self.viewer.layers[name]

    def _start(self, function: Callable, *args: Any, **connect: Callable) -> None:
        """Run ``function(*args)`` as ``self.worker``; errors go to the status line.

        The handlers hear only this run's worker: a worker the dock gave up on (its run ended
        when a callback failed) may still signal, and must not end the next run.
        """
        connect.setdefault("errored", self._on_error)
        connect.setdefault("finished", self._on_finished)
        run = self._run_id = object()
        self.worker = start_worker(
            function,
            *args,
            **{signal: self._for_run(run, handler) for signal, handler in connect.items()},
        )

    def _for_run(self, run: object, handler: Callable) -> Callable:
        handler = dock_callback(handler, self._callback_failed)

        def for_this_run(*args):
            if self._run_id is run:
                handler(*args)

        return for_this_run

    def _on_error(self, exc: BaseException) -> None:
        self._set_status(f"error: {exc}", error=True)

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        """A dock callback raised: say so, and end the run unless its worker still works.

        Never raises (it is the last line before Qt); the traceback goes to the log.
        """
        try:
            logger.error("napari-rat dock: %s failed", name, exc_info=exc)
            self._set_status(f"error: {type(exc).__name__}: {exc}", error=True)
            worker = self.worker
            if worker is None or not worker.is_running or worker.abort_requested:
                # Nothing will call back any more (or what does is told to stop): be idle.
                self._steps.clear()
                if worker is not None and worker.is_running:
                    worker.quit()
                self._end_run()
        except Exception:  # the dock itself is broken (e.g. closed): only log it
            logger.exception("napari-rat dock: reporting a failure of %s failed", name)

    def _then(self, *steps: Callable[[], Any]) -> None:
        """Queue GUI-thread steps (typically one layer each) for when the worker finishes."""
        self._steps.extend(steps)

    def _on_finished(self) -> None:
        """The worker finished: run the queued steps, then end the run."""
        self._run_steps()

    def _run_steps(self) -> None:
        """Run the next queued step and come back on the next event-loop turn; end when none.

        The next step is a posted event (a queued signal): Qt delivers it after the events
        posted before it (those the step itself caused included) and after a pass over the
        window system's input and paint, never inside the same pass. The poster belongs to the
        dock's Qt widget, so it dies with the dock (a closed viewer runs no further step).
        """
        if not self._steps:
            self._end_run()
            return
        step = self._steps.pop(0)
        try:
            step()
        except Exception as exc:  # a step the viewer refused
            self._steps.clear()
            self._on_error(exc)
        if self._turns is None:
            self._turns = _NextTurn(self.native)
            self._turns.posted.connect(self._run_steps, Qt.ConnectionType.QueuedConnection)
        self._turns.posted.emit()

    def _drop_steps(self) -> None:
        """Forget the queued steps (a cancelled run shows nothing)."""
        self._steps.clear()

    def _end_run(self) -> None:
        """The run is over: the dock is idle again."""
        self.worker = None
        self._run_id = None
