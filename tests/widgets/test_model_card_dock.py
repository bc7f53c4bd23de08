"""The inference dock shows the chosen model's card under the model choice (xvfb)."""

import shutil

import pytest

napari = pytest.importorskip("napari")

from napari_rat._widgets.inference_widget import InferenceWidget  # noqa: E402
from napari_rat.model import write_card  # noqa: E402
from napari_rat.model_card import ModelCard  # noqa: E402

pytestmark = pytest.mark.gui

CARD = ModelCard(
    data="synthetic; spacing [1.0, 1.0] micrometer",
    split="synthetic_0: last axis training 0-18, validation 19-31, held out 32-63",
    validation={"dice": 0.9, "ap50": 0.5, "step": 4.0},
    training_time_s=12.0,
    held_out=[
        {"factor": 1.0, "dice": 0.871, "iou": 0.77, "ap50": 0.612},
        {"factor": 2.0, "dice": 0.8, "iou": 0.7, "ap50": 0.4},
    ],
)


def test_the_dock_shows_the_chosen_model_s_card_and_hides_it_without_one(
    make_napari_viewer, qtbot, dock_checkpoints, tmp_path
):
    with_card = tmp_path / "carded.safetensors"
    shutil.copy(dock_checkpoints["2d"], with_card)
    write_card(with_card, CARD)
    viewer = make_napari_viewer()
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")

    widget.model.use_checkpoint(with_card)
    label = widget.model.card
    qtbot.waitUntil(lambda: not label.native.isHidden())
    assert label.value.startswith("held out: Dice 0.871, AP@0.5 0.612")
    assert "trained on synthetic" in label.value
    assert label.tooltip == CARD.text()
    assert "Held out: 1x Dice 0.871, AP@0.5 0.612; 2x Dice 0.800, AP@0.5 0.400" in label.tooltip
    assert label.native.textInteractionFlags()  # selectable, not editable: a QLabel

    widget.model.use_checkpoint(dock_checkpoints["2d-1"])  # written without a card
    qtbot.waitUntil(label.native.isHidden)
    assert label.value == "" and label.tooltip in ("", None)

    widget.model.kind.value = "starter model (bundled)"  # the shipped starter has its card
    qtbot.waitUntil(lambda: not label.native.isHidden())
    assert label.value.startswith("held out: Dice 0.942, AP@0.5 0.867")
    assert "columns" in label.tooltip or "last axis" in label.tooltip


def test_the_bundled_card_follows_the_chosen_layer_s_dimensions(make_napari_viewer, qtbot):
    """The bundled choice runs the 2D starter on an image and the 3D one on a volume: the card
    shown is that of the model the chosen layer gets."""
    from napari_rat.model_card import read_card
    from napari_rat.pretrained import starter_model_path

    viewer = make_napari_viewer()
    viewer.open_sample("napari-rat", "nuclei_2d")
    viewer.open_sample("napari-rat", "nuclei_3d")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="RAT inference")
    label = widget.model.card
    cards = {dims: read_card(starter_model_path(dims)) for dims in (2, 3)}
    assert cards[2].text() != cards[3].text()
    widget.image_layer.value = "nuclei 3D"
    qtbot.waitUntil(lambda: label.tooltip == cards[3].text())
    assert "stardist_nuclei_3d" in label.tooltip and not label.native.isHidden()
    widget.image_layer.value = "nuclei 2D"
    qtbot.waitUntil(lambda: label.tooltip == cards[2].text())
