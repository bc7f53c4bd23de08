import pytest
import yaml

from napari_rat.cli import main
from napari_rat.train.robustness_report import factors_for_resolutions, markdown_table

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)


def _write(tmp_path, config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_factors_and_table():
    assert factors_for_resolutions(512, [128, 256, 512, 1024]) == [4.0, 2.0, 1.0, 0.5]
    rows = [
        {
            "factor": 1.0,
            "model_dice": 0.9,
            "model_iou": 0.8,
            "model_ap50": 0.7,
            "otsu_dice": 0.85,
            "otsu_ap50": 0.5,
        }
    ]
    assert "| 1x | 512 | 0.900 |" in markdown_table(rows, [512])


def test_train_then_evaluate_robustness(tiny, tmp_path, capsys):
    config = tiny(
        training={"epochs": 1},
        data={"holdout_fraction": 0.5, "val_fraction": 0.2, "synthetic_shape": [32, 64]},
    )
    path = _write(tmp_path, config)
    assert main(["train", "--config", str(path), "--quick"]) == 0
    best = tmp_path / "runs" / "tiny" / "best.safetensors"
    assert best.exists()
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--config",
                str(path),
                "--checkpoint",
                str(best),
                "--robustness",
                "--resolutions",
                "16",
                "32",
                "64",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    text = (out / "robustness.md").read_text()
    assert text.count("\n| ") == 4  # header + 3 rows
    assert (out / "robustness.csv").read_text().startswith("factor,")
    from matplotlib.image import imread

    assert imread(out / "robustness.png").shape == (350, 500, 4)  # the saved plot decodes
    # --resample scores what `predict --resample` gives: at the training spacing (factor 1)
    # the same as without, at twice as coarse the tiles were resampled to the training spacing
    import csv

    def rows(folder, *extra):
        args = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--robustness"]
        assert main([*args, "--factors", "1", "2", "--output", str(folder), *extra]) == 0
        with open(folder / "robustness.csv") as fh:
            return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]

    told, resampled = rows(tmp_path / "told"), rows(tmp_path / "resampled", "--resample")
    assert (
        "resampled to the training spacing"
        in (tmp_path / "resampled" / "robustness.md").read_text()
    )
    assert told[0] == resampled[0]
    assert told[1]["otsu_dice"] == resampled[1]["otsu_dice"]  # the floor resamples nothing
    assert told[1] != resampled[1]
    card = best.read_bytes()
    args = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--resample"]
    assert main([*args, "--write-card"]) == 2
    assert "leave out --resample" in capsys.readouterr().err and best.read_bytes() == card
    assert (
        main(
            [
                "run",
                "--config",
                str(path),
                "--evaluation-only",
                "--checkpoint",
                str(best),
                "--output",
                str(out),
                "--no-baseline",
            ]
        )
        == 0
    )


def test_cli_errors_before_any_worker(tiny, tmp_path, capsys):
    config = tiny(
        data={"source": "tiff", "paths": ["missing.tif"], "label_paths": ["missing_labels.tif"]}
    )
    path = _write(tmp_path, config)
    assert main(["train", "--config", str(path), "--backend", "ray"]) == 2
    assert "missing.tif" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  feture_dims: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "feture_dims" in capsys.readouterr().err
