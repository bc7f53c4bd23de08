"""The single-file checkpoint: round trip, metadata, atomic writes, bad files."""

import os

import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.model import (
    CheckpointError,
    build_model,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)

CFG = ModelConfig(
    feature_dims=16,
    num_heads=2,
    num_blocks=1,
    sga_kernel_size=3,
    head={"class_names": ["bg", "nucleus"], "decoder_dims": 8},
)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG).eval()
    path = save_checkpoint(
        model,
        tmp_path / "model.safetensors",
        CFG,
        training_spacing=[0.5, 0.25],
        channel_names=["DAPI"],
        normalization={"mode": "percentile", "low": 1.0, "high": 99.8},
    )
    return model, path


def test_round_trip_gives_the_same_model(checkpoint):
    model, path = checkpoint
    loaded = load_checkpoint(path)
    assert not loaded.training
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    info = loaded.checkpoint_info
    assert info.model_config == CFG
    assert info.training_spacing == [0.5, 0.25]
    assert info.channel_names == ["DAPI"] and info.class_names == ["bg", "nucleus"]
    assert info.normalization["high"] == 99.8
    assert {"torch", "napari-rat", "spatial-grouping-attention"} <= set(info.versions)


def test_level_factors_round_trip_and_bad_ones_are_refused(checkpoint, tmp_path):
    model, path = checkpoint
    assert read_checkpoint_info(path).level_factors is None  # not recorded
    trained = save_checkpoint(
        model, tmp_path / "levels.safetensors", CFG, level_factors=[(1, 1), (4, 4)]
    )
    assert read_checkpoint_info(trained).level_factors == [[1, 1], [4, 4]]
    with pytest.raises(ValueError, match="level_factors must be one list of 2 integers"):
        save_checkpoint(model, tmp_path / "bad.safetensors", CFG, level_factors=[[2, 2]])
    assert not (tmp_path / "bad.safetensors").exists()
    # A file whose stored factors are malformed (here: 3 axes for a 2D model) is named.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(trained), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta["level_factors"] = "[[1, 1, 1], [2, 2, 2]]"
    broken = tmp_path / "broken.safetensors"
    save_file(load_file(str(trained)), str(broken), metadata=meta)
    with pytest.raises(
        CheckpointError, match=r"broken.safetensors: checkpoint metadata is invalid"
    ):
        read_checkpoint_info(broken)


def test_metadata_reads_without_weights(checkpoint):
    _, path = checkpoint
    assert read_checkpoint_info(path).units == "micrometer"


def test_write_is_atomic_and_leaves_no_temp_file(checkpoint, tmp_path, monkeypatch):
    model, path = checkpoint
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, CFG)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_truncated_file(checkpoint, tmp_path):
    _, path = checkpoint
    data = path.read_bytes()
    for cut in (4, 200, len(data) // 2):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(bad.name)) as info:
            load_checkpoint(bad)
        assert "truncated" in str(info.value) and "copy" in str(info.value)


def test_a_file_that_is_no_checkpoint_at_all_is_called_that(tmp_path):
    """Text (or any other file) is named as not a checkpoint, not as a truncated one."""
    for name, content in [
        ("notes.safetensors", b"these are my lab notes!\n\n"),  # 25 bytes of text
        ("image.safetensors", b"\x89PNG\r\n\x1a\n" + bytes(64)),
        ("config.safetensors", b'{"model": {"feature_dims": 32}}'),
    ]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        message = str(info.value)
        assert f"{bad}: not a checkpoint file" in message
        assert "truncated" not in message and "header says" not in message
        assert "'starter'" in message  # and what to give instead
        assert bad.read_bytes() == content


def test_corrupt_header(checkpoint, tmp_path):
    _, path = checkpoint
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)


def test_pickle_is_refused_without_unpickling(checkpoint, tmp_path):
    model, _ = checkpoint
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "model.pt"
    torch.save({"state": model.state_dict(), "evil": Evil()}, bad)
    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_header_length_starting_with_the_pickle_opcode_still_loads(checkpoint, tmp_path):
    """A header of 128 (mod 256) bytes makes the file start with 0x80, a pickle's first byte."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, path = checkpoint
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    moved = tmp_path / "moved.safetensors"
    for pad in range(600):
        save_file(tensors, str(moved), metadata={**meta, "note": "x" * pad})
        if moved.read_bytes()[0] == 0x80:
            break
    assert moved.read_bytes()[0] == 0x80
    loaded = load_checkpoint(moved)
    x = [torch.rand(1, 1, 16, 16)]
    with torch.no_grad():
        assert torch.equal(
            loaded(x, input_spacing=[(1.0, 1.0)])[0], model(x, input_spacing=[(1.0, 1.0)])[0]
        )


def test_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(bad))
    with pytest.raises(CheckpointError, match="not a napari-rat checkpoint"):
        load_checkpoint(bad)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_weights_not_matching_config(checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, path = checkpoint
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors.pop(next(iter(tensors)))
    bad = tmp_path / "partial.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)
