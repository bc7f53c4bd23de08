"""`napari-rat predict` end to end on real OME-Zarr stores on disk."""

import numpy as np
import pytest

from napari_rat.cli import main
from napari_rat.config import ModelConfig
from napari_rat.io import open_pyramid, write_image
from napari_rat.model import save_checkpoint
from napari_rat.synthetic import synthetic_nuclei


@pytest.fixture(scope="module")
def files(tmp_path_factory, model2d, small_model_config):
    tmp = tmp_path_factory.mktemp("predict")
    cfg = ModelConfig(**small_model_config)
    ckpt = save_checkpoint(model2d, tmp / "m.safetensors", cfg)
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
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my lab notes!\n\n")
    args = ["predict", str(src), "--checkpoint", str(notes), "--output", str(tmp_path / "o.zarr")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{notes}: not a checkpoint file" in err and "truncated" not in err
    assert not (tmp_path / "o.zarr").exists()
    assert main(["predict", str(src), "--checkpoint", str(ckpt)]) == 2
    assert "--output" in capsys.readouterr().err
    out = tmp_path / "o.zarr"
    args = ["predict", str(src), "--checkpoint", str(ckpt), "--output", str(out)]
    assert main([*args, "--min-size", "-1"]) == 2
    assert "--min-size -1.0 is negative" in capsys.readouterr().err and not out.exists()


def _voxel_at(level, world):
    """Index of the voxel of ``level`` (scale/translation metadata) whose extent holds each
    world position (voxel j spans translation + (j -/+ 0.5) * scale)."""
    return np.floor((world - level.translation[-1]) / level.scale[-1] + 0.5).astype(int)


def test_labels_from_a_coarser_level_region_land_where_they_were_predicted(files):
    """--level 1 --region: the labels written into the image at level 0 are, voxel by voxel,
    those of the prediction's own OME-Zarr at the same world position."""
    tmp, ckpt, img = files
    src = write_image(
        tmp / "coarse.zarr", img, axes="yx", scale=(0.5, 0.5), translation=(3.0, -7.0), levels=3
    )
    out = tmp / "coarse-out.zarr"
    common = ["--checkpoint", str(ckpt), "--tile", "32", "--level", "1", "--region", "x=5:50"]
    args = ["predict", str(src), *common, "--output", str(out), "--into-labels", "rat"]
    assert main(args) == 0
    predicted = open_pyramid(out).labels["instances"].levels[0]
    pred = np.asarray(predicted.data)
    written = open_pyramid(src).labels["rat"].levels[0]
    lab = np.asarray(written.data)
    assert pred.max() > 0
    x_world = written.translation[1] + np.arange(lab.shape[1]) * written.scale[1]
    j = np.floor((x_world - predicted.translation[1]) / predicted.scale[1] + 0.5).astype(int)
    inside = (j >= 0) & (j < pred.shape[1])
    # Rows: level-0 row y sits in level-1 row y // 2 (the whole y axis was predicted).
    expected = pred[np.arange(lab.shape[0]) // 2][:, j[inside]]
    np.testing.assert_array_equal(lab[:, inside], expected)
    assert not lab[:, ~inside].any()
    # No scratch folder is left next to the input.
    assert not list(tmp.glob(".napari-rat-predict-*"))


def test_unwritable_targets_are_refused_before_predicting(files, tmp_path, capsys):
    tmp, ckpt, img = files
    src = write_image(tmp_path / "i.zarr", img, axes="yx", scale=(0.5, 0.5))
    taken = tmp_path / "taken.zarr"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        (["--output", str(taken)], "already exists"),
        (["--output", str(tmp_path / "no" / "o.zarr")], "is not a folder"),
        (["--into-labels", "a/b"], "invalid label name"),
        (["--output", str(tmp_path / "o.zarr"), "--into-labels", "x:y"], "invalid label name"),
        (["--into-labels", "rat", "--levels", "0"], "1 or more"),
    ]
    for extra, message in cases:
        assert main(["predict", str(src), "--checkpoint", str(ckpt), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    # Nothing was written or half-written: the output of the combined case does not exist.
    assert not (tmp_path / "o.zarr").exists()
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.zarr", "taken.zarr"]


def test_the_default_model_of_a_volume_is_the_3d_starter(tmp_path, capsys):
    """`predict VOLUME` without --checkpoint runs the bundled 3D starter (what `--checkpoint
    starter-3d` gives); the 2D one, named, is refused for a volume."""
    vol, truth = synthetic_nuclei((6, 40, 36), (2.0, 1.0, 1.0), radius=6.0, seed=3)
    src = write_image(tmp_path / "vol.zarr", vol, axes="zyx", scale=(2.0, 1.0, 1.0), levels=1)
    outputs = {}
    for name, extra in (("default", []), ("3d", ["--checkpoint", "starter-3d"])):
        out = tmp_path / f"{name}.zarr"
        assert main(["predict", str(src), "--output", str(out), "--tile", "32", *extra]) == 0
        pred = open_pyramid(out)
        assert pred.levels[0].shape == (3, 6, 40, 36)
        assert pred.levels[0].scale[1:] == (2.0, 1.0, 1.0)
        outputs[name] = np.asarray(pred.levels[0].data)
    np.testing.assert_array_equal(outputs["default"], outputs["3d"])
    found, nuclei = outputs["default"][1] > 0.5, truth > 0  # the trained model finds them
    assert 2 * (found & nuclei).sum() / (found.sum() + nuclei.sum()) > 0.9
    capsys.readouterr()
    out = tmp_path / "2d.zarr"
    assert main(["predict", str(src), "--output", str(out), "--checkpoint", "starter-2d"]) == 2
    err = capsys.readouterr().err
    assert "starter-2d is a 2D model but the image has 3 spatial axes (zyx)" in err
    assert "--checkpoint starter-3d" in err
    assert not out.exists()


def test_a_volume_plane_by_plane_with_the_2d_starter(tmp_path, capsys):
    """`predict VOLUME --planes`: the 2D starter on each z plane, stacked and placed like the
    volume, each plane what predicting that plane alone gives; the instance labels go into
    the volume too."""
    vol, truth = synthetic_nuclei((3, 48, 40), (2.0, 1.0, 1.0), radius=6.0, seed=4)
    place = {"scale": (2.0, 1.0, 1.0), "translation": (5.0, -3.0, 7.0)}
    src = write_image(tmp_path / "vol.zarr", vol, axes="zyx", levels=1, **place)
    out = tmp_path / "planes.zarr"
    args = ["predict", str(src), "--tile", "32", "--planes"]
    assert main([*args, "--output", str(out), "--into-labels", "rat"]) == 0
    assert "instances)" in capsys.readouterr().out
    pred = open_pyramid(out)
    assert pred.levels[0].shape == (3, 3, 48, 40)
    assert pred.levels[0].scale[1:] == (2.0, 1.0, 1.0)
    assert pred.levels[0].translation[1:] == (5.0, -3.0, 7.0)
    probs = np.asarray(pred.levels[0].data)
    labels = np.asarray(pred.labels["instances"].levels[0].data)
    plane = write_image(
        tmp_path / "plane1.zarr", vol[1], axes="yx", scale=(1.0, 1.0), translation=(-3.0, 7.0)
    )
    alone = tmp_path / "plane1-out.zarr"
    assert main(["predict", str(plane), "--tile", "32", "--output", str(alone)]) == 0
    np.testing.assert_allclose(probs[:, 1], np.asarray(open_pyramid(alone).levels[0].data))
    found, nuclei = probs[1] > 0.5, truth > 0  # the 2D starter finds the nuclei of each plane
    assert 2 * (found & nuclei).sum() / (found.sum() + nuclei.sum()) > 0.85
    ids = [set(np.unique(labels[z])) - {0} for z in range(3)]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    np.testing.assert_array_equal(
        np.asarray(open_pyramid(src).labels["rat"].levels[0].data), labels
    )
    # Refused, with the way out: a 2D model on a volume without --planes, --planes on a
    # plane, --planes on a cluster; nothing is written.
    capsys.readouterr()
    refused = tmp_path / "refused.zarr"
    cases = [
        (
            [str(src), "--checkpoint", "starter-2d"],
            "starter-2d is a 2D model but the image has 3 spatial axes (zyx); give a 3D "
            "checkpoint (the bundled one: --checkpoint starter-3d), or add --planes",
        ),
        ([str(plane), "--planes"], "leave out --planes"),
        ([str(src), "--planes", "--cluster", "local"], "leave out --cluster"),
    ]
    for extra, message in cases:
        assert main(["predict", *extra, "--output", str(refused)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not refused.exists()


def test_as_trained_runs_a_dense_model_in_tiles_of_its_training_crop(files, tmp_path, capsys):
    """`--as-trained`: a dense-attention checkpoint runs with the dense maths in tiles of the
    crop it was trained on (what its training validated), exactly as the options spelled out
    would run it; refused where it cannot say what that is, or beside options it sets."""
    from napari_rat.inference.model_loading import as_trained
    from napari_rat.model import CheckpointError, load_checkpoint, read_checkpoint_info

    tmp, ckpt, img = files
    model = load_checkpoint(ckpt)
    assert read_checkpoint_info(ckpt).model_config.sga_attention_type == "dense"
    trained = save_checkpoint(
        model,
        tmp_path / "trained.safetensors",
        model.checkpoint_info.model_config,
        extra={"crop_size": [32, 32]},
    )
    assert as_trained(trained) == ("exact", (24, 24), (4, 4))
    assert as_trained("starter-3d") == ("local", None, None)  # windowed models run as stored
    with pytest.raises(CheckpointError, match="does not record the crop size"):
        as_trained(ckpt)
    src = write_image(tmp_path / "i.zarr", img, axes="yx", scale=(0.5, 0.5))
    outputs = {}
    for name, extra in (
        ("as-trained", ["--as-trained"]),
        ("spelled", ["--attention", "exact", "--tile", "24", "--halo", "4"]),
        ("default", []),
    ):
        out = tmp_path / f"{name}.zarr"
        args = ["predict", str(src), "--checkpoint", str(trained), "--output", str(out), *extra]
        assert main(args) == 0
        outputs[name] = np.asarray(open_pyramid(out).levels[0].data)
    np.testing.assert_array_equal(outputs["as-trained"], outputs["spelled"])
    assert np.abs(outputs["as-trained"] - outputs["default"]).max() > 1e-3  # another run
    capsys.readouterr()
    refused = tmp_path / "refused.zarr"
    for extra, message in (
        (["--checkpoint", str(trained), "--tile", "64"], "leave out --tile"),
        (["--checkpoint", str(ckpt)], "does not record the crop size"),
    ):
        args = ["predict", str(src), "--as-trained", *extra, "--output", str(refused)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not refused.exists()
