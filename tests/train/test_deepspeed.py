import json
from pathlib import Path

import pytest
import torch

from napari_rat.model import load_checkpoint
from napari_rat.train.deepspeed_backend import consolidate_zero_checkpoint, deepspeed_config
from napari_rat.train.loop import train_events

from .conftest import BF16_PROBE


@pytest.fixture
def process_group():
    """Tears down the process group a DeepSpeed run leaves behind, through DeepSpeed: it also
    drops DeepSpeed's cached groups, which ``torch.distributed.destroy_process_group`` alone
    leaves dangling (the next ``deepspeed.initialize`` in this process then fails with "Group
    ... is not registered")."""
    yield
    if torch.distributed.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()


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
def test_deepspeed_zero2_on_cpu_and_consolidation(tiny, monkeypatch, process_group):
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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning:deepspeed")
@pytest.mark.filterwarnings("ignore:.*torch.distributed.*:UserWarning")
def test_deepspeed_zero3_cpu_offload_trains_on_cpu_and_consolidates(
    tiny, monkeypatch, process_group
):
    """ZeRO-3 with parameters and optimiser state offloaded to the CPU (DeepSpeed's CPU Adam,
    JIT-built once into ``~/.cache/torch_extensions``): trains, saves shards that resume, and
    consolidates into a single file that loads and predicts."""
    from napari_rat.model import build_model
    from napari_rat.train.checkpoint_store import LocalStore
    from napari_rat.train.distributed import DistEnv
    from napari_rat.train.loop import make_engine, steps_per_epoch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny(
        training={"backend": "deepspeed", "epochs": 1},
        deepspeed={
            "enabled": True,
            "zero_stage": 3,
            "offload_optimizer": True,
            "offload_params": True,
        },
    )
    events = list(train_events(config))
    assert events[-1].kind == "finished"
    progress = [e for e in events if e.kind == "progress"]
    assert [e.step for e in progress] == [1, 2]
    assert all(torch.isfinite(torch.tensor(e.metrics["loss"])) for e in progress)

    folder = config.training.output_dir + "/tiny"
    state = LocalStore(folder + "/state").latest_path()
    assert state.name == "step-00000002"
    # ZeRO-3 shards: parameters and optimiser state partitioned per rank
    assert (state / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file()
    assert (state / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    weights = consolidate_zero_checkpoint(state)
    last = load_checkpoint(folder + "/last.safetensors")
    assert weights.keys() == last.state_dict().keys()
    for key, value in last.state_dict().items():
        torch.testing.assert_close(weights[key], value)
    # the offloaded optimiser really stepped: the weights left their initial values
    torch.manual_seed(config.training.seed)
    initial = build_model(config.model).state_dict()
    assert any(not torch.equal(initial[k], weights[k]) for k in initial)

    # the single file loads and predicts
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        (logits,) = last(x, (1.0, 1.0))
    assert logits.shape[-2:] == (16, 16) and torch.isfinite(logits).all()

    # the config section really offloads, and the shards resume under the same setting
    model = build_model(config.model)
    engine, _ = make_engine(
        "deepspeed",
        model,
        config,
        steps_per_epoch(config, 1),
        torch.device("cpu"),
        DistEnv(0, 1, 0, 1, "local"),
    )
    ds = engine.engine
    assert ds.zero_optimization_stage() == 3
    assert ds.zero_offload_param() and ds.zero_offload_optimizer()
    assert type(engine.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam"
    assert engine.load_state(state)["step"] == 2
    for key, value in engine.full_state_dict().items():
        torch.testing.assert_close(value, weights[key])


@pytest.mark.slow
def test_deepspeed_two_local_ranks_over_gloo(tiny, monkeypatch):
    """``napari-rat train --backend deepspeed --num-workers 2`` without Ray: two spawned ranks
    on the CPU (gloo), each holding its ZeRO-2 shard; rank 0 alone logs and writes, and its
    events reach ``run_training``'s ``log`` as on every other backend."""
    from napari_rat.train.checkpoint_store import LocalStore
    from napari_rat.train.loop import parse_event_line
    from napari_rat.train.run import run_training

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks
    config = tiny(
        training={"backend": "deepspeed", "epochs": 2},
        deepspeed={"enabled": True, "zero_stage": 2},
    )
    lines = []
    best = run_training(config, num_workers=2, log=lines.append)
    events = [e for e in map(parse_event_line, lines) if e is not None]
    assert [e.step for e in events if e.kind == "progress"] == [1, 2]  # from rank 0 alone
    assert any(e.kind == "checkpoint" and Path(e.path).name == best.name for e in events)
    assert sum(line.startswith("step ") for line in lines) == 2  # the human lines too
    folder = best.parent
    assert load_checkpoint(best).checkpoint_info.extra["step"] in (1, 2)
    # 4 samples, 2 ranks, batch 2: one optimiser step per epoch, logged once (by rank 0)
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    state = LocalStore(folder / "state").latest_path()
    shards = sorted(p.name for p in state.glob("*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    weights = consolidate_zero_checkpoint(state)
    last = load_checkpoint(folder / "last.safetensors").state_dict()
    for key, value in last.items():
        torch.testing.assert_close(weights[key], value)


@pytest.mark.slow
def test_deepspeed_zero2_trains_with_the_backbone_frozen(
    tiny, tmp_path, monkeypatch, process_group
):
    from napari_rat.model import build_model, save_checkpoint

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny(
        training={"backend": "deepspeed", "epochs": 1, "freeze_backbone": True},
        deepspeed={"enabled": True, "zero_stage": 2},
    )
    start = save_checkpoint(build_model(config.model), tmp_path / "start.safetensors", config.model)
    initial = load_checkpoint(start).state_dict()
    events = list(train_events(config, init_from=str(start)))
    assert events[-1].kind == "finished"
    trained = load_checkpoint(config.training.output_dir + "/tiny/last.safetensors").state_dict()
    assert all(torch.equal(initial[k], trained[k]) for k in initial if k.startswith("backbone."))
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if k.startswith("out."))
