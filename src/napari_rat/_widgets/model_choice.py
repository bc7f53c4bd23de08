"""The model picker shared by the docks: the bundled starter model or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label

STARTER = "starter model (bundled)"
CHECKPOINT = "checkpoint file"


def _bundled_file(name: str) -> Path:
    """The file of a bundled model's name (``"starter"``; other values are paths)."""
    from napari_rat.pretrained import STARTERS, starter_model_path

    return Path(starter_model_path(STARTERS[name])) if name in STARTERS else Path(name)


class ModelChoice(Container):
    """A combo box (starter / checkpoint file), a file field shown for the second, and the
    chosen model's card (read-only; the whole card in its tooltip), hidden without one."""

    def __init__(self):
        self.kind = ComboBox(label="model", choices=[STARTER, CHECKPOINT], value=STARTER)
        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.safetensors", visible=False
        )
        self.card = Label(label="model card", value="")
        self._layer_dims = 2  # the chosen layer's spatial axes: which bundled card to show
        super().__init__(widgets=[self.kind, self.checkpoint, self.card], labels=True)
        self.margins = (0, 0, 0, 0)
        self.kind.changed.connect(lambda v: setattr(self.checkpoint, "visible", v == CHECKPOINT))
        self.kind.changed.connect(self._show_card)
        self.checkpoint.changed.connect(self._show_card)
        self._show_card()

    def _show_card(self, *_) -> None:
        from napari_rat.model_card import read_card

        try:
            chosen = self.selection(self._layer_dims)
        except ValueError:  # no file chosen yet
            card = None
        else:
            card = read_card(_bundled_file(chosen) if isinstance(chosen, str) else chosen)
        self.card.value = "" if card is None else card.summary()
        self.card.tooltip = "" if card is None else card.text()
        self.card.visible = card is not None

    def show_for(self, layer_dims: int) -> None:
        """Show the card of the model a layer with ``layer_dims`` spatial axes gets."""
        if layer_dims != self._layer_dims:
            self._layer_dims = layer_dims
            self._show_card()

    def use_checkpoint(self, path) -> None:
        """Select a checkpoint file (as a user would)."""
        self.kind.value = CHECKPOINT
        self.checkpoint.value = path

    def selection(self, layer_dims: int = 2) -> str | Path:
        """The bundled model for a layer with ``layer_dims`` spatial axes (the 3D one for a
        volume) or the chosen file; ``ValueError`` when no file is chosen."""
        if self.kind.value == STARTER:
            from napari_rat.pretrained import starter_for

            return starter_for(layer_dims)
        path = self.checkpoint.value
        try:
            is_file = path is not None and Path(path).is_file()
        except OSError:  # e.g. a name too long for the file system
            is_file = False
        if not is_file:
            raise ValueError(f"choose a checkpoint file (got {path or 'nothing'})")
        return Path(path)
