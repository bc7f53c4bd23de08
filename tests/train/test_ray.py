"""Ray Train with 2 workers on a local head started by the test and stopped by its pid."""

import json

import pytest

from napari_rat.model import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray")
    from napari_rat.train.ray_head import start_head

    head = start_head(num_cpus=3, include_dashboard=False)
    yield head
    head.stop()
    assert not head.alive()


def test_ray_two_workers_survive_a_killed_worker(ray_head, tiny, tmp_path, monkeypatch):
    import ray

    from napari_rat.train.ray_backend import train_with_ray
    from napari_rat.train.ray_head import driver_env

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny(
        training={"backend": "ray", "epochs": 2},
        deepspeed={"enabled": True, "zero_stage": 2},
        cluster={"max_failures": 1, "num_workers": 2, "num_to_keep": 2},
    )
    marker = tmp_path / "killed"
    with driver_env(ray_head):
        ray.init(address=ray_head.address, logging_level="ERROR", log_to_driver=False)
        try:
            best = train_with_ray(
                config,
                fault={"rank": 1, "after_epoch": 0, "marker": str(marker)},
                log=lambda s: None,
            )
        finally:
            ray.shutdown()
    assert marker.exists()  # rank 1 was SIGKILLed after the first checkpoint
    model = load_checkpoint(best)  # the consolidated single file
    assert "consolidated_from" in model.checkpoint_info.extra
    storage = tmp_path / "ray" / "tiny"
    names = sorted(p.name for p in storage.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-step-00000001", "checkpoint-step-00000002"]
    # every rank's ZeRO shard was merged into the reported checkpoint
    shards = list((storage / names[-1] / "state" / "step-00000002").glob("*optim_states.pt"))
    assert len(shards) == 2
    # resumed from the checkpoint after the kill: step 1 was trained once, not twice
    records = [json.loads(x) for x in open(tmp_path / "runs" / "tiny" / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
