"""`napari-rat predict` end to end on real OME-Zarr stores on disk."""

import numpy as np
import pytest
import torch

from napari_rat.cli import main
from napari_rat.config import ModelConfig
from napari_rat.io import open_pyramid, write_image
from napari_rat.model import build_model, save_checkpoint
from napari_rat.synthetic import synthetic_nuclei


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    cfg = ModelConfig(
        feature_dims=16,
        num_heads=2,
        num_blocks=2,
        sga_kernel_size=3,
        stride=2,
        iters=1,
        head={"decoder_dims": 8},
    )
    ckpt = save_checkpoint(build_model(cfg), tmp / "m.safetensors", cfg)
    img, _ = synthetic_nuclei((64, 56), (0.5, 0.5))
    return tmp, ckpt, img


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_predict_writes_valid_ome_zarr_placed_like_the_region(files, ngff):
    tmp, ckpt, img = files
    src = write_image(
        tmp / f"img{ngff}.zarr",
        img,
        axes="yx",
        scale=(0.5, 0.5),
        translation=(10.0, 20.0),
        levels=2,
        ngff_version=ngff,
    )
    out = tmp / f"out{ngff}.zarr"
    code = main(
        [
            "predict",
            str(src),
            "--checkpoint",
            str(ckpt),
            "--output",
            str(out),
            "--into-labels",
            "rat",
            "--tile",
            "32",
            "--region",
            "y=8:40",
        ]
    )
    assert code == 0
    pred = open_pyramid(out)  # validated with ome-zarr-models
    assert pred.axis_names == ("c", "y", "x")
    assert pred.levels[0].shape == (3, 32, 56)
    assert pred.levels[0].translation[1:] == (14.0, 20.0)
    assert "instances" in pred.labels
    image = open_pyramid(src)
    labels = image.labels["rat"]
    assert labels.levels[0].shape == (64, 56)
    assert len(labels.levels) == len(image.levels)
    assert labels.levels[0].translation == (10.0, 20.0)
    # Outside the region nothing was labelled.
    lab0 = np.asarray(labels.levels[0].data)
    assert not lab0[:8].any() and not lab0[40:].any()
    # The existing label image is not overwritten without --overwrite.
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--into-labels", "rat"]) == 2


def test_predict_errors_are_one_line(files, tmp_path, capsys):
    tmp, ckpt, img = files
    assert (
        main(
            [
                "predict",
                str(tmp_path / "absent.zarr"),
                "--checkpoint",
                str(ckpt),
                "--output",
                str(tmp_path / "o.zarr"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "absent.zarr" in err and "Traceback" not in err
    src = write_image(tmp_path / "i.zarr", img, axes="yx", scale=(0.5, 0.5))
    assert (
        main(
            [
                "predict",
                str(src),
                "--checkpoint",
                str(tmp_path / "nope.safetensors"),
                "--output",
                str(tmp_path / "o.zarr"),
            ]
        )
        == 2
    )
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["predict", str(src), "--checkpoint", str(ckpt)]) == 2
    assert "--output" in capsys.readouterr().err
    out = tmp_path / "o.zarr"
    args = ["predict", str(src), "--checkpoint", str(ckpt), "--output", str(out)]
    assert main([*args, "--min-size", "-1"]) == 2
    assert "--min-size -1.0 is negative" in capsys.readouterr().err and not out.exists()
