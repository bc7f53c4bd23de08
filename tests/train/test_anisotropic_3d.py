"""The 3D starter's data and evaluation: the bundled 3D volume, generated volumes at many z
anisotropies split like real data, z-only spacing augmentation, and robustness across z."""

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from napari_rat.cli import main
from napari_rat.config import ExperimentConfig
from napari_rat.sample_data import NUCLEI_3D_SPACING, nuclei_3d
from napari_rat.train.data_sources import DatasetError, synthetic_spacings
from napari_rat.train.datasets import build_data, collate
from napari_rat.train.evaluation import axis_factors, rescale_image

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)


def _config(tmp_path, **data) -> ExperimentConfig:
    raw = {
        "name": "tiny3d",
        "model": {
            "spatial_dims": 3,
            "feature_dims": 8,
            "num_heads": 2,
            "num_blocks": 1,
            "sga_kernel_size": [3, 3, 3],
            "stride": [1, 4, 4],
            "proj_kernel_size": 3,
            "iters": 1,
            "sga_attention_type": "local",
            "spacing": [2.0, 1.0, 1.0],
            "head": {"decoder_dims": 4},
        },
        "data": {
            "source": "stardist_nuclei_3d",
            "crop_size": [8, 24, 24],
            "num_samples": 4,
            "val_fraction": 0.15,
            "holdout_fraction": 0.25,
            "synthetic_fraction": 0.5,
            "synthetic_images": 3,
            "synthetic_shape": [16, 32, 40],
            "synthetic_radius": 5.0,
            "synthetic_z_anisotropy": [1.0, 4.0],
            "split_synthetic": True,
            **data,
        },
        "training": {
            "epochs": 1,
            "batch_size": 2,
            "warmup_steps": 1,
            "log_every": 1,
            "output_dir": str(tmp_path / "runs"),
            "run_name": "tiny3d",
            "precision": "fp32",
        },
    }
    return ExperimentConfig.model_validate(raw)


def test_the_bundled_volume_sits_at_its_nuclei_s_shape():
    """Its nuclei are half as deep (in voxels) as they are wide: z spacing 2, lateral 1."""
    from scipy import ndimage as ndi

    _, labels = nuclei_3d()
    extents = np.array([[s.stop - s.start for s in o] for o in ndi.find_objects(labels) if o])
    depth, height, width = np.median(extents, axis=0) * np.asarray(NUCLEI_3D_SPACING)
    assert NUCLEI_3D_SPACING == (2.0, 1.0, 1.0)
    assert abs(depth / height - 1) < 0.1 and abs(depth / width - 1) < 0.1  # round physically


def test_generated_volumes_span_the_z_anisotropy_and_keep_their_depth(tmp_path):
    config = _config(tmp_path)
    spacings = synthetic_spacings(config.data, 3)
    np.testing.assert_allclose([s[0] for s in spacings], [1.0, 2.0, 4.0])
    assert all(s[1:] == [1.0, 1.0] for s in spacings)
    data = build_data(config)
    generated = [im for im in data.train.images if im.synthetic]
    # The same physical depth (16 units) in fewer planes as z gets coarser.
    assert [im.shape[0] for im in generated] == [16, 8, 4]
    assert [im.spacing[0] for im in generated] == [1.0, 2.0, 4.0]
    real = data.train.images[0]
    assert real.shape == (31, 61, 57) and real.spacing == (2.0, 1.0, 1.0)


def test_split_synthetic_holds_out_a_band_of_every_generated_volume(tmp_path):
    data = build_data(_config(tmp_path))
    names = [r.name for r in data.holdout]
    assert names[0] == "stardist_nuclei_3d[holdout]" and len(names) == 4
    assert data.holdout[0].labels.shape == (31, 61, 14)  # the far quarter of x
    assert all(r.labels.shape[-1] == 10 for r in data.holdout[1:])  # a quarter of 40
    # The training regions stop before the validation band of every image.
    assert all(
        r.stop[-1] <= im.shape[-1] - 10
        for r, im in zip(data.train.regions, data.train.images, strict=True)
    )
    # Without split_synthetic, generated images are for training only.
    mixed = build_data(_config(tmp_path, split_synthetic=False))
    assert len(mixed.holdout) == 1
    assert [r.shape for r in mixed.train.regions[1:]] == [im.shape for im in mixed.train.images[1:]]


def test_z_augmentation_changes_the_z_spacing_alone(tmp_path):
    plain = build_data(_config(tmp_path, spacing_augmentation=None))
    zaug = build_data(
        _config(tmp_path, spacing_augmentation=None, z_spacing_augmentation=[0.5, 3.0])
    )
    told = set()
    for data in (plain, zaug):
        batch = collate([data.train[0], data.train[1]])
        assert batch["images"][0].shape == (2, 1, 8, 24, 24)
    for i in range(0, 16, 2):
        z, y, x = zaug.train[i]["spacings"][0]
        assert y == x  # the lateral axes keep their (image's) spacing
        told.add(round(z / y, 3))
    assert len(told) > 2  # many z anisotropies


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"z_spacing_augmentation": [2.0, 1.0]}, "0 < low <= high"),
        ({"synthetic_z_anisotropy": [0.0, 2.0]}, "0 < low <= high"),
    ],
)
def test_bad_z_settings_are_refused(tmp_path, data, message):
    with pytest.raises(ValidationError, match=message):
        _config(tmp_path, **data)


def test_z_settings_on_2d_data_are_refused(tiny):
    with pytest.raises(ValidationError, match="varies the z spacing of 3D data"):
        tiny(data={"z_spacing_augmentation": [1.0, 2.0]})


def test_the_3d_source_refuses_a_2d_model(tiny):
    with pytest.raises(DatasetError, match="is a 3D image but model.spatial_dims is 2"):
        build_data(tiny(data={"source": "stardist_nuclei_3d"}))


def test_axis_factors_and_z_only_rescale():
    assert axis_factors(2.0, 3) == (2.0, 2.0, 2.0)
    assert axis_factors(2.0, 3, [0]) == (2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="do not exist in 2D"):
        axis_factors(2.0, 2, [2])
    volume = np.random.default_rng(0).random((1, 12, 10, 8)).astype(np.float32)
    coarse = rescale_image(volume, (2.0, 1.0, 1.0))
    assert coarse.shape == (1, 6, 10, 8)
    # area mode: each z pair averaged, lateral pixels untouched
    np.testing.assert_allclose(coarse[0, 0], volume[0, :2].mean(0), atol=1e-6)
    assert rescale_image(volume, 1.0) is volume


def test_train_then_evaluate_across_z(tmp_path, capsys):
    """`evaluate --robustness --axes z` coarsens z alone, labels the table so, and
    `--write-card` records which axes the held-out factors coarsened."""
    config = _config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["train", "--config", str(path), "--quick"]) == 0
    best = tmp_path / "runs" / "tiny3d" / "best.safetensors"
    out = tmp_path / "eval"
    args = ["evaluate", "--config", str(path), "--checkpoint", str(best), "--robustness"]
    assert (
        main([*args, "--factors", "1", "2", "--axes", "z", "--output", str(out), "--write-card"])
        == 0
    )
    table = (out / "robustness.md").read_text()
    assert "| z spacing factor |" in table and table.count("\n| ") == 3
    assert not (out / "robustness_by_region.md").exists()
    from napari_rat.model_card import read_card

    card = read_card(best)
    assert card.held_out_axes == "z" and [r["factor"] for r in card.held_out] == [1.0, 2.0]
    assert "factors on z alone" in card.text()
    # --per-region: each held-out band alone, the real volume's first
    by_region = tmp_path / "by_region"
    assert main([*args, "--factors", "1", "--per-region", "--output", str(by_region)]) == 0
    parts = (by_region / "robustness_by_region.md").read_text().split("### ")[1:]
    assert len(parts) == 4 and parts[0].startswith("stardist_nuclei_3d[holdout]: (31, 61, 14)")
    assert all(p.count("\n| 1x |") == 1 for p in parts)
    capsys.readouterr()
    assert main([*args, "--factors", "2", "--axes", "q", "--output", str(out)]) == 2
    assert "--axes 'q'" in capsys.readouterr().err


def test_rotations_never_change_a_crop_s_shape():
    """Equal spacing alone let an isotropic volume's z swap with x: a [8, 24, 24] crop came out
    [24, 24, 8] and a batch could not be stacked."""
    from napari_rat.train.crops import random_orientation

    rng = np.random.default_rng(0)
    for _ in range(20):
        perm, _ = random_orientation(
            (1.0, 1.0, 1.0), rng, flips=False, rotations=True, shape=(8, 24, 24)
        )
        assert perm[0] == 0 and sorted(perm[1:]) == [1, 2]


def test_a_3d_crop_s_boundary_band_is_measured_at_its_level_s_spacing(tmp_path, monkeypatch):
    """The targets of an anisotropic crop measure the band in physical units: each level's
    boundary is the band of its labels at the spacing that level tells the model."""
    import napari_rat.train.datasets as datasets
    from napari_rat.inference.instances import boundary_bands

    config = _config(tmp_path)
    head = config.model.head.model_copy(update={"boundary_width": 2})
    config = config.model_copy(update={"model": config.model.model_copy(update={"head": head})})
    seen = []

    def spy(labels, width, spacing=None):
        seen.append((labels.copy(), width, spacing))
        return boundary_bands(labels, width, spacing)

    monkeypatch.setattr(datasets, "boundary_bands", spy)
    data = build_data(config)
    told_spacings = []
    for index in range(4):
        seen.clear()
        item = data.train[index]
        told_spacings += item["spacings"]
        assert len(seen) == len(item["boundary"])
        for (labels, width, spacing), target, told in zip(
            seen, item["boundary"], item["spacings"], strict=True
        ):
            assert width == 2 and tuple(spacing) == tuple(told)
            band = boundary_bands(labels, 2, told)[0]
            np.testing.assert_array_equal(target.numpy() == 1, band & (labels >= 0))
    assert any(s[0] > 1.2 * min(s) for s in told_spacings)  # anisotropic levels were seen
