"""Model cards in the checkpoint: round trip, written in place with the weights untouched, and
checkpoints without a card."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from napari_rat.config import ModelConfig
from napari_rat.model import (
    CheckpointError,
    build_model,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    write_card,
)
from napari_rat.model_card import ModelCard, read_card

CFG = ModelConfig(feature_dims=16, num_heads=2, num_blocks=1, sga_kernel_size=3)

CARD = ModelCard(
    data="stardist_nuclei_2d; spacing [1.0, 1.0] micrometer",
    split="stardist_nuclei_2d: last axis training 0-332, validation 333-383, held out 384-511",
    validation={"dice": 0.941, "ap50": 0.643, "min_instance_size": 32.0, "step": 256.0},
    training_time_s=1438.0,
    held_out=[{"factor": 1.0, "dice": 0.941, "iou": 0.888, "ap50": 0.742}],
    held_out_source="hold-out region, napari-rat evaluate",
    notes=["bf16 fell back to fp32"],
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(CFG).eval()


def _header(path) -> dict:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def test_card_round_trip(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "m.safetensors", CFG, card=CARD)
    assert read_checkpoint_info(path).card == CARD
    assert load_checkpoint(path).checkpoint_info.card == CARD
    assert read_card(path) == CARD  # from the JSON header alone
    text = CARD.text()
    assert "Validation (step 256): Dice 0.941, AP@0.5 0.643, min size 32" in text
    assert "Held out: 1x Dice 0.941, AP@0.5 0.742" in text
    assert "Training time: 1,438 s" in text


def test_checkpoint_without_a_card_still_loads(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "old.safetensors", CFG)
    assert "card" not in _header(path)["__metadata__"]  # as written before cards existed
    assert read_checkpoint_info(path).card is None
    assert load_checkpoint(path).checkpoint_info.card is None
    assert read_card(path) is None


def test_write_card_keeps_the_weights_bit_identical_and_the_rest_of_the_metadata(model, tmp_path):
    path = save_checkpoint(
        model, tmp_path / "m.safetensors", CFG, training_spacing=[0.5, 0.5], extra={"step": 7}
    )
    before_meta = _header(path)["__metadata__"]
    before = load_file(str(path))
    write_card(path, CARD)
    after = load_file(str(path))
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert tensor.dtype == after[key].dtype
        assert tensor.view(torch.uint8).numpy().tobytes() == (
            after[key].view(torch.uint8).numpy().tobytes()
        )
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert {k: v for k, v in meta.items() if k != "card"} == before_meta
    assert read_checkpoint_info(path).card == CARD
    replaced = CARD.model_copy(update={"notes": []})
    write_card(path, replaced)
    assert read_checkpoint_info(path).card == replaced
    assert not list(tmp_path.glob("*.tmp*"))  # atomic: no temporary file left


def test_write_card_refuses_what_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        write_card(bad, CARD)
    assert bad.read_text() == "not a checkpoint"


def test_a_newer_cards_unknown_fields_are_ignored_and_a_broken_card_is_named(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "m.safetensors", CFG, card=CARD)
    tensors = load_file(str(path))
    from safetensors.torch import save_file

    meta = _header(path)["__metadata__"]
    meta["card"] = json.dumps({**json.loads(meta["card"]), "licence": "CC-BY"})
    save_file(tensors, str(path), metadata=meta)
    assert read_checkpoint_info(path).card == CARD
    meta["card"] = json.dumps({"training_time_s": "a while"})
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="metadata is invalid"):
        read_checkpoint_info(path)
    assert read_card(path) is None


def test_the_shipped_starter_carries_the_card_of_its_documented_scores():
    from napari_rat.pretrained import starter_model_path

    card = read_checkpoint_info(starter_model_path()).card
    assert card is not None and round(card.training_time_s) == 1252
    assert "held out 384-511" in card.split and card.validation["step"] == 640
    rows = {r["factor"]: r for r in card.held_out}
    # docs/starter_model.md: native Dice 0.942 / AP@0.5 0.867, 4x coarser 0.908 / 0.535
    assert round(rows[1.0]["dice"], 3) == 0.942 and round(rows[1.0]["ap50"], 3) == 0.867
    assert round(rows[4.0]["dice"], 3) == 0.908 and round(rows[4.0]["ap50"], 3) == 0.535
