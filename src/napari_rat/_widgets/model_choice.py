"""The model picker shared by the docks: the bundled starter model or a checkpoint file."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit

STARTER = "starter model (bundled)"
CHECKPOINT = "checkpoint file"


class ModelChoice(Container):
    """A combo box (starter / checkpoint file) and a file field shown for the second."""

    def __init__(self):
        self.kind = ComboBox(label="model", choices=[STARTER, CHECKPOINT], value=STARTER)
        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.safetensors", visible=False
        )
        super().__init__(widgets=[self.kind, self.checkpoint], labels=True)
        self.margins = (0, 0, 0, 0)
        self.kind.changed.connect(lambda v: setattr(self.checkpoint, "visible", v == CHECKPOINT))

    def use_checkpoint(self, path) -> None:
        """Select a checkpoint file (as a user would)."""
        self.kind.value = CHECKPOINT
        self.checkpoint.value = path

    def selection(self) -> str | Path:
        """``"starter"`` or the chosen file; ``ValueError`` when no file is chosen."""
        from napari_rat.inference.model_loading import STARTER as STARTER_NAME

        if self.kind.value == STARTER:
            return STARTER_NAME
        path = self.checkpoint.value
        if path is None or not Path(path).is_file():
            raise ValueError(f"choose a checkpoint file (got {path or 'nothing'})")
        return Path(path)
