"""The config schema, the files in configs/, and `napari-rat config check`."""

from pathlib import Path

import pytest
import yaml

from napari_rat.cli import main
from napari_rat.config import (
    ConfigFileError,
    ExperimentConfig,
    check_config_file,
    load_config,
    save_config,
)

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_configs_folder_has_the_documented_recipes():
    names = {p.name for p in CONFIGS}
    assert {"quick.yaml", "nuclei_2d.yaml", "volume_3d.yaml", "cluster_multiscale.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_validates(path):
    config = load_config(path)
    assert config.version == 1
    problems, _ = check_config_file(path)
    assert problems == []


def test_volume_config_is_anisotropic_3d():
    config = load_config(Path(__file__).parents[2] / "configs" / "volume_3d.yaml")
    assert config.model.spatial_dims == 3
    assert len(set(config.data.spacing)) > 1


def test_cluster_config_uses_ray_deepspeed_multiscale():
    config = load_config(Path(__file__).parents[2] / "configs" / "cluster_multiscale.yaml")
    assert config.training.backend == "ray" and config.deepspeed.enabled
    assert len(config.data.scales) >= 2


def test_deprecated_multi_scale_is_checked_against_scales_and_dropped():
    from napari_rat.config import DataConfig

    with pytest.warns(FutureWarning, match="multi_scale is deprecated"):
        agreed = DataConfig.model_validate({"multi_scale": True, "scales": [1, 2]})
    assert agreed.scales == [1, 2] and "multi_scale" not in agreed.model_dump()
    with pytest.warns(FutureWarning):
        single = DataConfig.model_validate({"multi_scale": False})  # a saved run's config.yaml
    assert single.scales == [1]
    # multi_scale: false used to feed one level whatever scales said: refuse the ambiguity.
    with pytest.raises(
        ValueError, match=r"multi_scale: false but scales is \[1, 4\].*scales: \[1\]"
    ):
        DataConfig.model_validate({"multi_scale": False, "scales": [1, 4]})
    with pytest.raises(ValueError, match="multi_scale: true but scales is"):
        DataConfig.model_validate({"multi_scale": True, "scales": [1]})


def _write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_misspelled_key_is_named_with_file_and_path(tmp_path):
    path = _write(tmp_path, {"version": 1, "model": {"feture_dims": 64}})
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert problem.path == "model.feture_dims"
    assert "unknown key" in problem.message
    assert str(path) in str(info.value) and "model.feture_dims" in str(info.value)


def test_cross_field_errors_say_what_to_do(tmp_path):
    path = _write(tmp_path, {"model": {"feature_dims": 30, "num_heads": 4}})
    problems, _ = check_config_file(path)
    assert len(problems) == 1 and "divisible by num_heads" in problems[0].message
    path = _write(tmp_path, {"model": {"spatial_dims": 3}, "data": {"crop_size": [32, 32]}})
    problems, _ = check_config_file(path)
    assert "crop_size" in problems[0].message


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    problems, _ = check_config_file(path)
    assert "not valid YAML" in problems[0].message
    problems, _ = check_config_file(tmp_path / "absent.yaml")
    assert "no such file" in problems[0].message


def test_unsupported_version(tmp_path):
    problems, _ = check_config_file(_write(tmp_path, {"version": 99}))
    assert "version 99" in problems[0].message


def test_large_model_without_deepspeed_warns(tmp_path):
    big = {"model": {"feature_dims": 1024, "num_heads": 16, "num_blocks": 8}}
    _, warnings = check_config_file(_write(tmp_path, big))
    assert warnings and "deepspeed" in warnings[0]
    big["deepspeed"] = {"enabled": True}
    _, warnings = check_config_file(_write(tmp_path, big))
    assert warnings == []


def test_save_load_round_trip_is_atomic_and_identical(tmp_path):
    config = ExperimentConfig(name="round-trip")
    config.model.feature_dims = 64
    path = save_config(config, tmp_path / "sub" / "out.yaml")
    assert load_config(path) == config
    assert [p.name for p in path.parent.iterdir()] == ["out.yaml"]


def test_config_check_command(tmp_path, capsys):
    good = CONFIGS[0]
    bad = _write(tmp_path, {"training": {"epoch": 3}}, "bad.yaml")
    assert main(["config", "check", str(good)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    assert main(["config", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: training.epoch: unknown key 'epoch' (did you mean 'epochs'?)" in out


def test_unknown_keys_name_the_nearest_valid_key_of_their_section(tmp_path):
    path = _write(
        tmp_path,
        {
            "model": {"head": {"decoder_dim": 8}, "feature_dim": 32},
            "trainig": {},
            "data": {"colour": "red"},
        },
    )
    problems = {p.path: p.message for p in check_config_file(path)[0]}
    assert (
        problems["model.head.decoder_dim"]
        == "unknown key 'decoder_dim' (did you mean 'decoder_dims'?)"
    )
    assert (
        problems["model.feature_dim"] == "unknown key 'feature_dim' (did you mean 'feature_dims'?)"
    )
    assert problems["trainig"] == "unknown key 'trainig' (did you mean 'training'?)"
    # Nothing close: the section's keys instead of a guess.
    assert problems["data.colour"].startswith("unknown key 'colour'; valid keys: ")
    assert "crop_size" in problems["data.colour"] and "did you mean" not in problems["data.colour"]


def test_freeze_backbone_needs_a_decoder(tmp_path):
    assert ExperimentConfig.model_validate({"training": {"freeze_backbone": True}})
    path = _write(tmp_path, {"model": {"variant": "rat"}, "training": {"freeze_backbone": True}})
    problems, _ = check_config_file(path)
    assert len(problems) == 1
    assert "variant 'rat' has none" in problems[0].message
    assert "rat_segmentation" in problems[0].message


def test_in_memory_source_trains_on_everything_and_is_refused_from_a_file(tmp_path):
    path = _write(tmp_path, {"data": {"source": "in_memory"}})
    problems, _ = check_config_file(path)
    assert "set val_fraction: 0 and holdout_fraction: 0" in problems[0].message
    config = load_config(_write(tmp_path, {"data": {"source": "in_memory", "val_fraction": 0}}))
    from napari_rat.train.data_sources import DatasetError, load_images

    with pytest.raises(DatasetError, match="export them with napari_rat.train.training_set"):
        load_images(config.data, 2)
