"""Model cards from training, completed by ``napari-rat evaluate --write-card``, and
``evaluate --robustness --compare`` scoring a second checkpoint beside the first."""

import csv

import pytest
import torch
import yaml
from safetensors.torch import load_file

from napari_rat.cli import main
from napari_rat.model import load_checkpoint, read_checkpoint_info, save_checkpoint

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)


def _write(tmp_path, config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


@pytest.fixture
def trained(tiny, tmp_path):
    config = tiny(
        model={"spacing": [1.0, 1.0]},
        training={"epochs": 1},
        data={
            "holdout_fraction": 0.5,
            "val_fraction": 0.2,
            "synthetic_shape": [32, 64],
            "spacing": [1.0, 1.0],
        },
    )
    path = _write(tmp_path, config)
    assert main(["train", "--config", str(path), "--quick"]) == 0
    return config, path, tmp_path / "runs" / "tiny" / "best.safetensors"


def test_training_writes_a_card_and_evaluate_completes_it_beside_a_blind_twin(
    trained, tmp_path, capsys
):
    config, path, best = trained
    card = read_checkpoint_info(best).card
    assert card is not None
    assert card.data.startswith("synthetic; spacing [1.0, 1.0] micrometer")
    # 64 columns: half held out at the far end, a fifth (13) validation before it
    assert "last axis training 0-18, validation 19-31, held out 32-63" in card.split
    metrics = read_checkpoint_info(best).extra["metrics"]
    assert card.validation["dice"] == pytest.approx(metrics["dice"])
    assert card.validation["step"] == read_checkpoint_info(best).extra["step"]
    assert card.training_time_s > 0 and card.held_out == []

    # The same weights as a resolution-blind model, written without a card (as old files are).
    model = load_checkpoint(best)
    blind_config = model.checkpoint_info.model_config.model_copy(update={"spacing_blind": True})
    blind = save_checkpoint(model, tmp_path / "blind twin.safetensors", blind_config)
    weights = {p: load_file(str(p)) for p in (best, blind)}
    out = tmp_path / "eval"
    args = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--robustness"]
    args += ["--factors", "1", "2", "--compare", str(blind), "--write-card", "--output", str(out)]
    assert main(args) == 0
    table = (out / "robustness.md").read_text()
    assert "| spacing factor | model Dice | model IoU | model AP@0.5 | blind_twin Dice |" in table
    assert "Otsu Dice" in table and table.count("\n| ") == 3  # header + 2 rows
    with open(out / "robustness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["factor"]) for r in rows] == [1.0, 2.0]
    assert {"model_dice", "blind_twin_dice", "otsu_dice"} <= set(rows[0])

    for file, prefix in ((best, "model"), (blind, "blind_twin")):
        info = read_checkpoint_info(file)
        assert [r["factor"] for r in info.card.held_out] == [1.0, 2.0]
        for row, written in zip(rows, info.card.held_out, strict=True):
            assert written["dice"] == pytest.approx(float(row[f"{prefix}_dice"]))
            assert written["ap50"] == pytest.approx(float(row[f"{prefix}_ap50"]))
        assert "[holdout]" in info.card.held_out_source
        after = load_file(str(file))
        assert all(torch.equal(after[k], v) for k, v in weights[file].items())
    # Training's part of the card stays; the twin's card is filled from the config.
    assert read_checkpoint_info(best).card.training_time_s == card.training_time_s
    twin = read_checkpoint_info(blind).card
    assert "spacing_blind: always told [1.0, 1.0]" in twin.data and twin.split == card.split
    assert twin.training_time_s is None
    assert "wrote the model card of" in capsys.readouterr().out


def test_evaluate_refuses_conflicting_or_impossible_options(trained, tiny, tmp_path, capsys):
    config, path, best = trained
    base = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--robustness"]
    assert main([*base, "--factors", "1", "--resolutions", "32"]) == 2
    assert "--factors or --resolutions, not both" in capsys.readouterr().err
    assert main([*base, "--factors", "0"]) == 2
    assert "--factors must be positive" in capsys.readouterr().err
    missing = tmp_path / "missing.safetensors"
    assert main([*base, "--compare", str(missing)]) == 2
    assert f"{missing}: no such checkpoint file" in capsys.readouterr().err
    no_holdout = _write(
        tmp_path,
        config.model_copy(
            update={"data": config.data.model_copy(update={"holdout_fraction": 0.0})}
        ),
    )
    before = best.read_bytes()
    args = ["evaluate", "--config", str(no_holdout), "--checkpoint", str(best), "--write-card"]
    assert main(args) == 2
    assert "holds nothing out" in capsys.readouterr().err
    assert best.read_bytes() == before


def test_evaluate_as_trained_scores_what_training_validation_computes(trained, tmp_path, capsys):
    """`evaluate --as-trained` predicts as the training loop validates (the dense model in
    tiles of its crop), so its scores are the validation engine's on the held-out region;
    refused beside --write-card (the card keeps predict's default scores)."""
    from napari_rat.model import load_checkpoint
    from napari_rat.train.datasets import build_data
    from napari_rat.train.evaluation import evaluate_regions

    config, path, best = trained
    out = tmp_path / "as-trained"
    base = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--no-baseline"]
    assert main([*base, "--as-trained", "--output", str(out)]) == 0
    assert "run as trained" in (out / "robustness.md").read_text()
    with open(out / "robustness.csv") as fh:
        row = next(csv.DictReader(fh))
    model = load_checkpoint(best)  # dense, as trained
    cfg = config.model_copy(update={"model": model.checkpoint_info.model_config})
    expected = evaluate_regions(model, build_data(cfg).holdout, cfg)  # validation's options
    assert float(row["model_dice"]) == pytest.approx(expected["dice"], abs=1e-6)
    assert float(row["model_ap50"]) == pytest.approx(expected["ap50"], abs=1e-6)
    # By default it scores what predict runs (windowed attention, large tiles): another run.
    assert main([*base, "--output", str(tmp_path / "default")]) == 0
    with open(tmp_path / "default" / "robustness.csv") as fh:
        default = next(csv.DictReader(fh))
    assert abs(float(default["model_dice"]) - expected["dice"]) > 0.01
    before = best.read_bytes()
    assert main([*base, "--as-trained", "--write-card"]) == 2
    assert "leave out --as-trained" in capsys.readouterr().err
    assert best.read_bytes() == before


def test_compared_runs_best_checkpoints_are_named_by_their_run():
    """Two runs' ``best.safetensors`` were both called ``best`` (then ``best_2``) in the
    tables, which said nothing of which run was which."""
    from napari_rat.commands.evaluate import _compare_names

    paths = [
        "runs/probe/best.safetensors",
        "runs/probe_blind/best.safetensors",
        "other/last.safetensors",
        "x/model.safetensors",
        "blind twin.safetensors",
        "y/blind twin.safetensors",
    ]
    assert _compare_names(paths) == [
        "probe_best",
        "probe_blind_best",
        "other_last",
        "model_checkpoint",
        "blind_twin",
        "blind_twin_2",
    ]
