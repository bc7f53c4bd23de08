import pytest
import torch

from napari_rat.model import load_checkpoint
from napari_rat.train.deepspeed_backend import consolidate_zero_checkpoint, deepspeed_config
from napari_rat.train.loop import train_events

from .conftest import BF16_PROBE


def test_deepspeed_config_from_section(tiny):
    config = tiny(
        deepspeed={
            "enabled": True,
            "zero_stage": 3,
            "offload_optimizer": True,
            "offload_params": True,
            "activation_checkpointing": True,
        },
        training={"accumulation_steps": 2, "grad_clip": 0.5},
    )
    ds = deepspeed_config(config, world_size=4, precision="bf16", device_type="cuda")
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # CPU Adam for ZeRO-Offload
    assert ds["train_batch_size"] == 2 * 2 * 4 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert "activation_checkpointing" in ds
    ds2 = deepspeed_config(
        tiny(deepspeed={"enabled": True}), world_size=1, precision="fp32", device_type="cpu"
    )
    assert ds2["zero_optimization"]["stage"] == 2 and "optimizer" not in ds2


@pytest.mark.slow
@pytest.mark.filterwarnings(BF16_PROBE)
@pytest.mark.filterwarnings("ignore::UserWarning:deepspeed")
@pytest.mark.filterwarnings("ignore:.*torch.distributed.*:UserWarning")
def test_deepspeed_zero2_on_cpu_and_consolidation(tiny, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny(
        training={"backend": "deepspeed", "epochs": 1},
        deepspeed={"enabled": True, "zero_stage": 2, "activation_checkpointing": True},
    )
    events = list(train_events(config))
    assert events[-1].kind == "finished"
    assert any("deepspeed on cpu" in e.message for e in events if e.kind == "start")
    folder = config.training.output_dir + "/tiny"
    last = load_checkpoint(folder + "/last.safetensors").state_dict()
    from napari_rat.train.checkpoint_store import LocalStore

    state = LocalStore(folder + "/state").latest_path()
    weights = consolidate_zero_checkpoint(state)
    assert weights.keys() == last.keys()
    for key in last:
        torch.testing.assert_close(weights[key], last[key])
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
