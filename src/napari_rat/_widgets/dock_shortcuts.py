"""Keyboard shortcuts a dock binds while it lives, and gives back when it closes.

:class:`DockShortcuts` binds keys on the viewer (keeping what they did before) and on chosen
layers: a selected layer's own keys come before the viewer's (napari's key map chain: the
active layer, then the viewer), so a dock binds its keys on its own layers too, as micro-sam
does. :meth:`DockShortcuts.release` unbinds them all and gives the viewer's earlier bindings
back; :func:`when_closed` calls it when napari takes the dock out of its window.
"""

from __future__ import annotations

from collections.abc import Callable

_MARK = "__napari_rat_shortcut__"


class DockShortcuts:
    """``keys`` (napari key names, e.g. ``"Shift-C"``) mapped to callbacks taking no argument."""

    def __init__(self, viewer, keys: dict[str, Callable[[], object]]):
        self.viewer = viewer
        self.keys = {key: _pressed(action) for key, action in keys.items()}
        self._previous: dict = {}
        self._layers: list = []

    def bind(self) -> None:
        """Bind the keys on the viewer, remembering what each did before."""
        for key, pressed in self.keys.items():
            self._previous[key] = self.viewer.bind_key(key, pressed, overwrite=True)

    def bind_layer(self, layer) -> None:
        """Bind the keys on ``layer`` too (over its own bindings of them)."""
        for key, pressed in self.keys.items():
            layer.bind_key(key, pressed, overwrite=True)
        self._layers.append(layer)

    def release(self) -> None:
        """Unbind the keys everywhere (those someone else bound since are left alone) and
        give the viewer's earlier bindings back."""
        for key, previous in self._previous.items():
            if _ours(self.viewer, key):
                self.viewer.bind_key(key, previous, overwrite=True)
        self._previous.clear()
        for layer in self._layers:
            for key in self.keys:
                if _ours(layer, key):
                    layer.bind_key(key, None)
        self._layers.clear()


def _pressed(action: Callable[[], object]) -> Callable:
    def pressed(*_):  # napari passes the viewer or the layer
        action()

    setattr(pressed, _MARK, True)
    return pressed


def _ours(provider, key: str) -> bool:
    from napari.utils.key_bindings import coerce_keybinding

    return getattr(provider.keymap.get(coerce_keybinding(key)), _MARK, False)


def when_closed(widget, callback: Callable[[], object]) -> None:
    """Call ``callback`` when the Qt ``widget`` leaves its dock (napari closing the dock sets
    its parent to none) or is destroyed; it may be called more than once."""
    from qtpy.QtCore import QEvent, QObject

    class Watcher(QObject):
        docked = False

        def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.ParentChange:
                if obj.parent() is not None:
                    self.docked = True
                elif self.docked:
                    callback()
            return False

    watcher = Watcher(widget)
    widget.installEventFilter(watcher)
    widget.destroyed.connect(lambda *_: callback())
