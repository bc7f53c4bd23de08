import numpy as np
import pytest

from napari_rat.config import ExperimentConfig
from napari_rat.train.crops import (
    Region,
    apply_orientation,
    random_orientation,
    resample_box,
    sample_crop,
    split_regions,
)
from napari_rat.train.data_sources import DatasetError, LabeledImage
from napari_rat.train.datasets import build_data, collate, level_factors


def test_split_regions_bands_along_last_axis():
    boxes = split_regions((512, 512), 0.1, 0.25)
    assert boxes["holdout"] == ((0, 384), (512, 512))
    assert boxes["val"][0][1] == 333 and boxes["train"] == ((0, 0), (512, 333))


def test_2d_dataset_batches_share_spacing_and_stay_in_region(tiny):
    config = tiny(data={"spacing_augmentation": (0.5, 2.0), "val_fraction": 0.25})
    data = build_data(config)
    assert data.val and data.val[0].labels.shape == (32, 12)
    items = [data.train[i] for i in range(4)]
    assert items[0]["spacings"] == items[1]["spacings"]
    batch = collate(items[:2])
    assert batch["images"][0].shape == (2, 1, 16, 16)
    assert set(np.unique(batch["classes"][0].numpy())) <= {-1, 0, 1}
    # deterministic per (seed, epoch, index), different across epochs
    again = data.train[0]
    assert np.array_equal(again["images"][0].numpy(), items[0]["images"][0].numpy())
    data.train.set_epoch(1)
    assert not np.array_equal(data.train[0]["images"][0].numpy(), items[0]["images"][0].numpy())


def test_multi_scale_levels_and_spacings(tiny):
    config = tiny(data={"scales": [1, 2]})
    item = build_data(config).train[0]
    assert [tuple(x.shape) for x in item["images"]] == [(1, 16, 16), (1, 8, 8)]
    s0, s1 = item["spacings"]
    assert np.allclose(np.array(s1), 2 * np.array(s0))
    assert level_factors(config.data) == [[1, 1], [2, 2]]
    assert len(build_data(tiny()).train[0]["images"]) == 1  # scales [1]: one level


def test_spacing_augmentation_rescales_physically():
    labels = np.zeros((64, 64), np.int32)
    labels[16:48, 16:48] = 1
    image = LabeledImage("sq", labels[None].astype(np.float32), labels, (1.0, 1.0))
    region = Region(0, (0, 0), (64, 64))
    fine = sample_crop(
        image,
        region,
        [16, 16],
        [1],
        np.random.default_rng(0),
        factor=1.0,
        flips=False,
        rotations=False,
    )
    coarse = sample_crop(
        image,
        region,
        [16, 16],
        [1],
        np.random.default_rng(0),
        factor=4.0,
        flips=False,
        rotations=False,
    )
    assert coarse.spacings[0] == (4.0, 4.0) and fine.spacings[0] == (1.0, 1.0)
    # at 4x the whole 32-pixel square (8 coarse pixels across) fits in the crop
    assert (coarse.labels[0] == 1).sum() == 64


def test_pyramid_level_is_used_for_coarse_spacing():
    labels = np.zeros((32, 32), np.int32)
    base = np.zeros((1, 32, 32), np.float32)
    coarse = np.full((1, 16, 16), 7.0, np.float32)
    image = LabeledImage("p", base, labels, (1.0, 1.0), levels=[(coarse, (2.0, 2.0))])
    out, _ = resample_box(image, (0.0, 0.0), (2.0, 2.0), (8, 8))
    assert np.allclose(out, 7.0)


def test_rotations_respect_anisotropy():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        perm, flip = random_orientation((4.0, 1.0, 1.0), rng, flips=True, rotations=True)
        assert perm[0] == 0
        seen.add(tuple(perm))
    assert seen == {(0, 1, 2), (0, 2, 1)}
    a = np.arange(24).reshape(1, 2, 3, 4)
    assert apply_orientation(a, [0, 2, 1], [False] * 3).shape == (1, 2, 4, 3)


def test_3d_dataset(tmp_path):
    config = ExperimentConfig.model_validate(
        {
            "model": {
                "spatial_dims": 3,
                "feature_dims": 8,
                "num_heads": 2,
                "num_blocks": 1,
                "sga_kernel_size": 3,
                "stride": [1, 2, 2],
                "proj_kernel_size": 3,
                "sga_attention_type": "dense",
            },
            "data": {
                "spacing": [3.0, 1.0, 1.0],
                "crop_size": [4, 16, 16],
                "num_samples": 2,
                "synthetic_images": 1,
                "synthetic_shape": [6, 24, 24],
                "synthetic_radius": 4.0,
                "spacing_augmentation": [0.8, 1.5],
            },
            "training": {"batch_size": 2},
        }
    )
    data = build_data(config)
    batch = collate([data.train[0], data.train[1]])
    assert batch["images"][0].shape == (2, 1, 4, 16, 16)
    assert batch["spacings"][0][0] > batch["spacings"][0][1]


def test_tiff_pairs_and_missing_file(tmp_path, tiny):
    import tifffile

    from napari_rat.synthetic import synthetic_nuclei

    img, lab = synthetic_nuclei((32, 40), radius=3.0)
    tifffile.imwrite(tmp_path / "i.tif", img)
    tifffile.imwrite(tmp_path / "l.tif", lab)
    config = tiny(
        data={
            "source": "tiff",
            "paths": [str(tmp_path / "i.tif")],
            "label_paths": [str(tmp_path / "l.tif")],
        }
    )
    assert build_data(config).train[0]["images"][0].shape == (1, 16, 16)
    config = tiny(
        data={
            "source": "tiff",
            "paths": [str(tmp_path / "no.tif")],
            "label_paths": [str(tmp_path / "l.tif")],
        }
    )
    with pytest.raises(DatasetError, match="no.tif"):
        build_data(config)


def test_stardist_source_and_mixing(tiny):
    config = tiny(
        data={
            "source": "stardist_nuclei_2d",
            "holdout_fraction": 0.25,
            "val_fraction": 0.1,
            "synthetic_fraction": 0.5,
        }
    )
    data = build_data(config)
    assert data.holdout[0].labels.shape == (512, 128)
    assert len(data.train.regions) == 2
    assert data.normalization.to_dict()["method"] == "percentile"


def test_ome_zarr_source(tmp_path, tiny):
    io = pytest.importorskip("napari_rat.io")
    from napari_rat.synthetic import synthetic_nuclei

    img, lab = synthetic_nuclei((32, 48), radius=3.0)
    path = tmp_path / "img.zarr"
    io.write_image(path, img, axes="yx", scale=[0.5, 0.5], levels=2)
    io.write_labels(path, lab, "nuclei")
    config = tiny(data={"source": "ome_zarr", "paths": [str(path)]})
    data = build_data(config)
    assert data.spacing == (0.5, 0.5)
    assert data.train.images[0].levels  # the stored coarser level is available
    assert data.train[0]["images"][0].shape == (1, 16, 16)


def test_decoy_images_look_like_nuclei_at_another_spacing_and_stay_unlabelled(tiny):
    """``synthetic_decoy_radius``: every second generated image holds smaller objects drawn
    like the nuclei, with no labels; a decoy image is the nucleus image of the same seed with
    everything scaled by the radii's ratio (only the spacing tells them apart)."""
    from napari_rat.synthetic import synthetic_nuclei
    from napari_rat.train.data_sources import synthetic_images
    from napari_rat.train.normalization import Normalization
    from napari_rat.train.training_card import data_description

    config = tiny(
        data={
            "synthetic_images": 4,
            "synthetic_shape": [48, 64],
            "synthetic_radius": 5.0,
            "synthetic_decoy_radius": 2.0,
            "val_fraction": 0.25,
            "holdout_fraction": 0.25,
        }
    )
    images = synthetic_images(config.data, 2, Normalization())
    assert [bool(np.asarray(im.labels).any()) for im in images] == [True, False, True, False]
    # The decoy image is what the generator draws at the decoy radius: objects, just unlabelled.
    _, decoy_labels = synthetic_nuclei((48, 64), radius=2.0, seed=1)
    _, nucleus_labels = synthetic_nuclei((48, 64), radius=5.0, seed=1)
    sizes = [np.bincount(lab.ravel())[1:].mean() for lab in (decoy_labels, nucleus_labels)]
    assert sizes[0] < 0.3 * sizes[1]  # (2/5)^2 = 0.16 of a nucleus's area
    decoy_image = np.asarray(images[1].image)[0]
    assert decoy_image[decoy_labels > 0].mean() > 2 * decoy_image[decoy_labels == 0].mean()
    data = build_data(config)
    assert [bool(r.labels.any()) for r in data.holdout] == [True, False, True, False]
    assert "unlabelled decoys of radius 2" in data_description(config, data)
    with pytest.raises(ValueError, match="synthetic_decoy_radius"):
        tiny(data={"synthetic_decoy_radius": 0.0})
