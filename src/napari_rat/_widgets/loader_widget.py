"""OME-Zarr loader dock widget: inspect a local path or URL, pick channels/levels/region, open.

Metadata is fetched in a ``thread_worker`` (remote stores can be slow); errors are shown in the
widget. The widget only gathers choices: reading, selecting and building layer data happen in
:mod:`napari_rat.io`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_rat._widgets.dock_base import (
    dock_callback,
    show_status,
    start_worker,
    wrap_status_label,
)
from napari_rat.io import OmeZarrError, Pyramid, open_pyramid
from napari_rat.io.napari_reader import pyramid_layer_data
from napari_rat.io.pyramid import parse_region

if TYPE_CHECKING:
    import napari

__all__ = ["OmeZarrLoaderWidget"]


def _checkable(text: str, data: Any, checked: bool = True) -> QListWidgetItem:
    item = QListWidgetItem(text)
    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
    item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
    item.setData(Qt.ItemDataRole.UserRole, data)
    return item


def _checked(widget: QListWidget) -> list[Any]:
    return [
        widget.item(i).data(Qt.ItemDataRole.UserRole)
        for i in range(widget.count())
        if widget.item(i).checkState() == Qt.CheckState.Checked
    ]


class OmeZarrLoaderWidget(QWidget):
    """Dock widget that inspects an OME-Zarr (path or URL) and opens the chosen parts."""

    CALLBACKS = ("_browse", "inspect", "open_selected", "_on_loaded", "_on_error", "_on_finished")

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        for name in self.CALLBACKS:  # no exception may reach Qt (see dock_base.dock_callback)
            setattr(self, name, dock_callback(getattr(self, name), self._callback_failed))
        self.viewer = napari_viewer
        self.pyramid: Pyramid | None = None
        self._worker: Any = None

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path, http(s):// or s3:// URL of an OME-Zarr")
        self.browse_button = QPushButton("Browse…")
        self.inspect_button = QPushButton("Inspect")
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(self.browse_button)
        row.addWidget(self.inspect_button)

        self.status_label = QLabel("")
        wrap_status_label(self.status_label)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.channel_list = QListWidget()
        self.level_list = QListWidget()
        self.label_list = QListWidget()
        self.region_edit = QLineEdit()
        self.region_edit.setPlaceholderText("optional, level-0 voxels: z=0:100, y=0:512, x=0:512")
        self.open_button = QPushButton("Open")
        self.open_button.setEnabled(False)

        form = QFormLayout()
        form.addRow("Channels", self.channel_list)
        form.addRow("Levels", self.level_list)
        form.addRow("Labels", self.label_list)
        form.addRow("Region", self.region_edit)

        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status_label)
        layout.addWidget(self.summary)
        layout.addLayout(form)
        layout.addWidget(self.open_button)

        # Lambdas: Qt would pass ``clicked``'s ``checked`` to a wrapper taking ``*args``.
        self.browse_button.clicked.connect(lambda: self._browse())
        self.inspect_button.clicked.connect(lambda: self.inspect())
        self.path_edit.returnPressed.connect(lambda: self.inspect())
        self.open_button.clicked.connect(lambda: self.open_selected())

    # --- inspecting ---------------------------------------------------------------------------

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose an OME-Zarr folder")
        if path:
            self.path_edit.setText(path)
            self.inspect()

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        import logging

        logging.getLogger(__name__).error("napari-rat loader: %s failed", name, exc_info=exc)
        self._show_error(f"error: {type(exc).__name__}: {exc}")
        if self._worker is None or not self._worker.is_running:
            self._worker = None
            self.inspect_button.setEnabled(True)

    def _show_error(self, message: str) -> None:
        show_status(self.status_label, message, error=True)

    def _show_status(self, message: str) -> None:
        show_status(self.status_label, message)

    def inspect(self) -> None:
        """Read the metadata of the path/URL in a worker thread and show the summary."""
        uri = self.path_edit.text().strip()
        if not uri:
            self._show_error("Enter a path or URL first.")
            return
        if self._worker is not None:
            self._worker.quit()
        self.pyramid = None
        self.open_button.setEnabled(False)
        self.inspect_button.setEnabled(False)
        self._show_status(f"Reading metadata of {uri}…")
        self._worker = start_worker(
            open_pyramid,
            uri,
            returned=self._on_loaded,
            errored=self._on_error,
            finished=self._on_finished,
        )

    def _on_finished(self) -> None:
        self.inspect_button.setEnabled(True)
        self._worker = None

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, OmeZarrError):
            self._show_error(str(exc))
        else:
            self._show_error(f"Cannot open: {type(exc).__name__}: {exc}")
        self.summary.setPlainText("")
        for w in (self.channel_list, self.level_list, self.label_list):
            w.clear()

    def _on_loaded(self, pyramid: Pyramid) -> None:
        self.pyramid = pyramid
        self.summary.setPlainText(pyramid.summary())
        self.channel_list.clear()
        c_axis = pyramid.channel_axis
        n = pyramid.levels[0].shape[c_axis] if c_axis is not None else 1
        for c in range(n):
            name = pyramid.channels[c].name if c < len(pyramid.channels) else f"channel {c}"
            self.channel_list.addItem(_checkable(name, c))
        self.level_list.clear()
        for i, lv in enumerate(pyramid.levels):
            shape = " x ".join(str(s) for s in lv.shape)
            spacing = " x ".join(f"{s:g}" for s in lv.scale)
            self.level_list.addItem(_checkable(f"{i}: {shape} @ {spacing}", i))
        self.label_list.clear()
        for name in pyramid.labels:
            self.label_list.addItem(_checkable(name, name))
        self.open_button.setEnabled(True)
        self._show_status(f"OME-Zarr {pyramid.ngff_version}, {len(pyramid.levels)} levels.")

    # --- opening ------------------------------------------------------------------------------

    def selection(self) -> tuple[list[int], list[int], list[str], dict[str, tuple[int, int]]]:
        """The chosen channels, levels, labels and region (raises ``ValueError`` if invalid)."""
        if self.pyramid is None:
            raise ValueError("Inspect an OME-Zarr first.")
        channels, levels = _checked(self.channel_list), _checked(self.level_list)
        if not channels and not _checked(self.label_list):
            raise ValueError("Choose at least one channel or label image.")
        if not levels:
            raise ValueError("Choose at least one level.")
        region = parse_region(self.region_edit.text(), self.pyramid.axis_names)
        return channels, levels, _checked(self.label_list), region

    def open_selected(self) -> list[Any]:
        """Add the chosen channels and labels to the viewer as placed multiscale layers."""
        try:
            channels, levels, labels, region = self.selection()
            assert self.pyramid is not None
            chosen = self.pyramid.select(levels=levels, region=region or None)
            layer_data = pyramid_layer_data(chosen, channels=channels, labels=labels)
        except (ValueError, OmeZarrError) as exc:
            self._show_error(str(exc))
            return []
        layers = []
        for data, kwargs, layer_type in layer_data:
            layers.append(getattr(self.viewer, f"add_{layer_type}")(data, **kwargs))
        self._show_status(f"Opened {len(layers)} layer(s).")
        return layers
