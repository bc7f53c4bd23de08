"""Ray Train: a ``TorchTrainer`` whose workers run the one loop, and consolidation at the end.

Every worker runs :func:`napari_rat.train.loop.train_events` with :class:`RayStore`: at each
epoch end every rank saves its DeepSpeed shards (or rank 0 the plain state) into a fresh local
folder and reports it with ``ray.train.report``; Ray merges the ranks' files into one storage
checkpoint and keeps ``cluster.num_to_keep`` of them (best by validation score). A worker that
dies is restarted up to ``cluster.max_failures`` times and resumes from the newest checkpoint.
Running again with the same ``training.run_name`` and ``cluster.storage_path`` and
``resume=True`` (``napari-rat train --backend ray --resume``) resumes the run: Ray Train finds
its checkpoint list in the run folder and hands the newest checkpoint to the workers, so the step
count continues. Without ``resume`` an existing run is an error, raised before anything starts,
because Ray would silently continue it. At the end the best checkpoint's shards are consolidated
into the single-file format.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_rat.config import ExperimentConfig
from napari_rat.config.experiment import config_from_yaml_text, dump_config
from napari_rat.train.distributed import DistEnv

_logger = logging.getLogger(__name__)

META_FILE = "napari_rat_checkpoint.json"
STATE_DIR = "state"
#: Ray Train's list of a run's reported checkpoints; when present, a new run of the same name
#: restores it (``ray.train.get_checkpoint`` then returns the newest).
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


#: Set by Ray in the environment of a job's driver process.
_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: The consolidated best checkpoint's name in the run's storage folder (what ``fetch`` reads).
STORAGE_BEST_NAME = "best.safetensors"


class RunExistsError(ValueError):
    """A Ray run of this name already has checkpoints and ``resume`` was not asked for."""


def _storage_root(config: ExperimentConfig) -> str:
    root = config.cluster.storage_path
    return root if "://" in root else str(Path(root).resolve())


def run_storage(config: ExperimentConfig) -> str:
    """Where Ray Train keeps the run: ``<cluster.storage_path>/<training.run_name>``."""
    return f"{_storage_root(config).rstrip('/')}/{config.training.run_name}"


def saved_run_entries(config: ExperimentConfig) -> list[str]:
    """Names of the run folder's entries that a new run would continue from (checkpoints and
    Ray's snapshot); empty when the run has never reported a checkpoint."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run_storage(config))
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    names = (info.base_name for info in infos)
    return sorted(n for n in names if n == RAY_SNAPSHOT_FILE or n.startswith("checkpoint-"))


class RayStore:
    """Resumable state through ``ray.train.report`` / ``ray.train.get_checkpoint``."""

    def __init__(self, dist: DistEnv, checkpoint_meta: Callable[[], dict[str, Any]] | None = None):
        self.dist = dist
        self.checkpoint_meta = checkpoint_meta

    def load_latest(self, engine) -> dict[str, Any] | None:
        """Restore from the newest checkpoint Ray holds for this run (``None`` on a fresh run)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            root = Path(folder) / STATE_DIR
            tag = (root / "latest").read_text().strip()
            return engine.load_state(root / tag)

    def save(self, engine, trainer_state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Save this rank's part and report it (every rank calls this: it is a barrier)."""
        import ray.train

        tag = f"step-{int(trainer_state['step']):08d}"
        tmp = Path(tempfile.mkdtemp(prefix="napari-rat-ckpt-"))
        try:
            folder = tmp / STATE_DIR / tag
            folder.mkdir(parents=True)
            engine.save_state(folder, trainer_state, self.dist.is_main)
            if self.dist.is_main:
                (tmp / STATE_DIR / "latest").write_text(tag)
                meta = self.checkpoint_meta() if self.checkpoint_meta else {}
                (tmp / META_FILE).write_text(json.dumps({"tag": tag, **meta}))
            report = {
                "step": int(trainer_state["step"]),
                "epoch": int(trainer_state["epoch"]),
                "score": float(metrics.get("score", trainer_state.get("best_score", -1.0))),
                **{k: float(v) for k, v in metrics.items()},
            }
            has_files = any(p.is_file() for p in tmp.rglob("*"))
            ray.train.report(
                report,
                checkpoint=ray.train.Checkpoint.from_directory(str(tmp)) if has_files else None,
                checkpoint_dir_name=f"checkpoint-{tag}",
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs."""
    import ray.train

    from napari_rat.train.loop import checkpoint_metadata, event_line, train_events

    ctx = ray.train.get_context()
    dist = DistEnv(
        ctx.get_world_rank(),
        ctx.get_world_size(),
        ctx.get_local_rank(),
        ctx.get_local_world_size(),
        "ray",
    )
    config = config_from_yaml_text(loop_config["config_yaml"])
    meta_holder: dict[str, Any] = {}

    store = RayStore(dist, checkpoint_meta=lambda: meta_holder.get("meta", {}))
    # The data bundle is built inside the loop; its metadata is recomputed cheaply here.
    from napari_rat.train.datasets import build_data

    meta_holder["meta"] = checkpoint_metadata(config, build_data(config, rank=dist.rank))
    for event in train_events(
        config,
        backend=loop_config["engine"],
        # Ray hands out a checkpoint only after a worker failure or to a run resumed by name
        # (train_with_ray refuses an existing run without resume).
        resume=True,
        init_from=loop_config.get("init_from"),
        store=store,
        dist=dist,
    ):
        if dist.is_main:
            _to_job_log(f"[napari-rat rank 0] {event}")
            line = event_line(event)
            if line is not None:
                _to_job_log(line)


def _to_job_log(line: str) -> None:
    """One line on the worker's stdout, which Ray copies into the job's log.

    Not a logger: the event lines (:func:`napari_rat.train.loop.event_line`) are the protocol
    the cluster client parses out of that log (:mod:`napari_rat.cluster.client`), and the human
    lines are what the Train on cluster dock shows; a logging configuration must not drop them.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def scaling_config(config: ExperimentConfig, num_workers: int | None, num_gpus: float | None):
    """``ScalingConfig`` from the ``cluster`` section (CLI overrides win)."""
    from ray.train import ScalingConfig

    c = config.cluster
    gpus = c.gpus_per_worker if num_gpus is None else num_gpus
    return ScalingConfig(
        num_workers=num_workers or c.num_workers,
        use_gpu=gpus > 0,
        resources_per_worker={"CPU": c.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})},
    )


def run_config(config: ExperimentConfig):
    """``RunConfig(name, storage_path)`` with failure and checkpoint policies."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    c = config.cluster
    return RunConfig(
        name=config.training.run_name,
        storage_path=_storage_root(config),
        failure_config=FailureConfig(max_failures=c.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=c.num_to_keep,
            checkpoint_score_attribute="score",
            checkpoint_score_order="max",
        ),
    )


def train_with_ray(
    config: ExperimentConfig,
    *,
    num_workers: int | None = None,
    num_gpus: float | None = None,
    init_from: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run ``config`` on Ray Train and return the consolidated best single-file checkpoint.

    Connects to ``cluster.address`` (a Ray address) if set, else starts a local head on
    127.0.0.1 (:mod:`napari_rat.train.ray_head`) and stops it by its pid at the end. An already
    initialised Ray (``ray.is_initialized()``) is used as it is.

    Parameters
    ----------
    resume
        Continue the run of this ``training.run_name`` in ``cluster.storage_path`` from its
        newest checkpoint (a fresh start when it has none).
    log
        Where the driver's own messages go (starting a head, resuming, the result's path);
        default: this module's logger, at INFO. The workers' lines go to the job's log.

    Raises
    ------
    RunExistsError
        When the run already has checkpoints and ``resume`` is false (before anything starts).
    """
    import ray
    from ray.train.torch import TorchConfig, TorchTrainer

    from napari_rat.train.ray_head import driver_env, start_head

    log = log or _logger.info
    saved = saved_run_entries(config)
    if saved and not resume:
        raise RunExistsError(
            f"the Ray run {config.training.run_name!r} already has checkpoints in "
            f"{run_storage(config)} ({', '.join(saved)}); continue it with --resume "
            "(resume=True), or start a new run with another training.run_name"
        )
    if resume:
        log(f"resuming {run_storage(config)}" if saved else "no saved run; starting fresh")
    head = None
    own_init = not ray.is_initialized()
    # A Ray job's driver (``napari-rat submit``) runs on the cluster, which tells it its GCS
    # address in RAY_ADDRESS; anywhere else RAY_ADDRESS is ignored (it would redirect silently).
    job_address = os.environ.get("RAY_ADDRESS") if _JOB_ENV in os.environ else None
    if own_init and config.cluster.address is None and job_address is None:
        log("starting a local Ray head on 127.0.0.1")
        workers = num_workers or config.cluster.num_workers
        head = start_head(
            num_cpus=max(int(workers * config.cluster.cpus_per_worker) + 1, 2),
            include_dashboard=False,
        )
    try:
        with driver_env(head):
            if own_init:
                address = head.address if head is not None else job_address
                address = address or config.cluster.address
                ray.init(address=address, logging_level="ERROR", log_to_driver=True)
            engine = "deepspeed" if config.deepspeed.enabled else "local"
            trainer = TorchTrainer(
                _worker,
                train_loop_config={
                    "config_yaml": dump_config(config),
                    "engine": engine,
                    "init_from": str(Path(init_from).resolve()) if init_from else None,
                },
                torch_config=TorchConfig(backend="nccl" if (num_gpus or 0) > 0 else "gloo"),
                scaling_config=scaling_config(config, num_workers, num_gpus),
                run_config=run_config(config),
            )
            result = trainer.fit()
            best = _best_checkpoint(result)
            if best is None:
                raise RuntimeError("the Ray Train run reported no checkpoint")
            with best.as_directory() as folder:
                out = consolidate(folder, config)
            log(f"consolidated the best checkpoint into {out}")
            log(f"published it as {publish_best(out, config)}")
            if own_init:
                ray.shutdown()
            return out
    finally:
        if head is not None:
            head.stop()


def publish_best(path: str | os.PathLike, config: ExperimentConfig) -> str:
    """Copy the consolidated checkpoint into the run's storage (a folder or an ``s3://`` URL),
    where a client that shares no disk with the job's driver fetches it; returns its URL/path.

    Written under a temporary name, then moved, so a reader never sees a partial file.
    """
    import fsspec

    target = f"{run_storage(config)}/{STORAGE_BEST_NAME}"
    fs, fs_path = fsspec.core.url_to_fs(target)
    partial = f"{fs_path}.partial"
    fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)
    fs.put_file(str(path), partial)
    fs.mv(partial, fs_path)
    return target


def _best_checkpoint(result):
    pairs = [(c, m) for c, m in (result.best_checkpoints or []) if c is not None]
    if pairs:
        return max(pairs, key=lambda cm: cm[1].get("score", -1.0))[0]
    return result.checkpoint


def consolidate(checkpoint_folder: str | os.PathLike, config: ExperimentConfig) -> Path:
    """Turn a reported checkpoint (DeepSpeed shards or plain state) into the single-file format.

    Written to ``<training.output_dir>/<run_name>/best.safetensors`` (atomically).
    """
    from safetensors.torch import load_file

    from napari_rat.model import save_checkpoint
    from napari_rat.train.loop import BEST_NAME, _StateHolder, run_dir

    folder = Path(checkpoint_folder)
    meta = json.loads((folder / META_FILE).read_text())
    state_folder = folder / STATE_DIR / meta.pop("tag")
    if (state_folder / "weights.safetensors").exists():
        weights = load_file(str(state_folder / "weights.safetensors"))
    else:
        from napari_rat.train.deepspeed_backend import consolidate_zero_checkpoint

        weights = consolidate_zero_checkpoint(state_folder)
    trainer = json.loads((state_folder / "trainer.json").read_text())
    meta.setdefault("extra", {})
    meta["extra"] = {
        **meta["extra"],
        "step": trainer["step"],
        "metrics": trainer["best_metrics"],
        "consolidated_from": str(folder),
    }
    return save_checkpoint(_StateHolder(weights), run_dir(config) / BEST_NAME, config.model, **meta)
