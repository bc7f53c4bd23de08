"""Ray Train with 2 workers on a local head started by the test and stopped by its pid."""

import json
import os
import signal
import time

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

    from napari_rat.train import ray_backend
    from napari_rat.train.ray_backend import train_with_ray
    from napari_rat.train.ray_head import driver_env

    real_worker = ray_backend._worker
    marker = tmp_path / "killed"

    def worker_killed_once(loop_config):
        """The real worker, except that rank 1 SIGKILLs itself once, after its first checkpoint.

        Defined here so that Ray ships it by value to the worker processes, where it wraps the
        checkpoint store's save (in that process only).
        """
        real_save = ray_backend.RayStore.save

        def save_then_die(self, *args, **kwargs):
            real_save(self, *args, **kwargs)
            if self.dist.rank == 1 and not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(5.0)  # mid-run: the controller has registered the checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

        ray_backend.RayStore.save = save_then_die
        real_worker(loop_config)

    # train_with_ray hands the module's _worker to TorchTrainer when it is called.
    monkeypatch.setattr(ray_backend, "_worker", worker_killed_once)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tiny(
        training={"backend": "ray", "epochs": 2},
        deepspeed={"enabled": True, "zero_stage": 2},
        cluster={"max_failures": 1, "num_workers": 2, "num_to_keep": 2},
    )
    with driver_env(ray_head):
        ray.init(address=ray_head.address, logging_level="ERROR", log_to_driver=False)
        try:
            best = train_with_ray(config, log=lambda s: None)
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


def test_ray_run_resumes_by_name_with_resume(ray_head, tiny, tmp_path, monkeypatch, capsys):
    """``napari-rat train --backend ray --resume`` continues a finished or interrupted run of
    the same name from its newest checkpoint; without ``--resume`` an existing run is refused."""
    import ray

    from napari_rat.cli import main
    from napari_rat.config import save_config
    from napari_rat.train.ray_head import driver_env

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def write_config(epochs: int):
        config = tiny(
            training={"backend": "ray", "epochs": epochs, "steps_per_epoch": 1},
            cluster={"num_workers": 1, "num_to_keep": 3},
        )
        return save_config(config, tmp_path / "tiny.yaml")

    storage = tmp_path / "ray" / "tiny"
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"

    def train_steps():
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
        return [(r["step"], r["epoch"]) for r in records if r["kind"] == "train"]

    def checkpoints():
        return sorted(p.name for p in storage.iterdir() if p.name.startswith("checkpoint-"))

    cli = ["train", "--config", str(tmp_path / "tiny.yaml"), "--num-workers", "1"]
    with driver_env(ray_head):
        ray.init(address=ray_head.address, logging_level="ERROR", log_to_driver=False)
        try:
            write_config(epochs=2)
            assert main(cli) == 0
            assert train_steps() == [(1, 0), (2, 1)]
            assert checkpoints() == ["checkpoint-step-00000001", "checkpoint-step-00000002"]

            write_config(epochs=3)
            capsys.readouterr()
            assert main(cli) == 2  # the run exists: refused before any worker starts
            err = capsys.readouterr().err
            assert "already has checkpoints" in err and "--resume" in err
            assert train_steps() == [(1, 0), (2, 1)]

            assert main([*cli, "--resume"]) == 0
        finally:
            ray.shutdown()
    # one more step, numbered after the saved ones: continued, not restarted
    assert train_steps() == [(1, 0), (2, 1), (3, 2)]
    assert checkpoints() == [f"checkpoint-step-0000000{i}" for i in (1, 2, 3)]
    trainer = json.loads(
        (storage / checkpoints()[-1] / "state" / "step-00000003" / "trainer.json").read_text()
    )
    assert (trainer["step"], trainer["epoch"]) == (3, 3)
    last = load_checkpoint(tmp_path / "runs" / "tiny" / "last.safetensors")
    assert last.checkpoint_info.extra["step"] == 3
    best = load_checkpoint(tmp_path / "runs" / "tiny" / "best.safetensors")
    assert best.checkpoint_info.extra["step"] in (1, 2, 3)
    assert "consolidated_from" in best.checkpoint_info.extra
