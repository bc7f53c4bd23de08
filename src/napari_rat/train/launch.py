"""Several local DeepSpeed processes without a launcher: ``--backend deepspeed --num-workers N``.

On a cluster, use the scheduler's launcher (``srun``, ``jsrun``, ``torchrun``): the loop reads
``RANK``/``WORLD_SIZE`` or SLURM/LSF variables itself.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from napari_rat.config import ExperimentConfig
from napari_rat.config.experiment import config_from_yaml_text, dump_config
from napari_rat.train.distributed import DistEnv, free_port


def _rank_main(rank: int, world: int, port: int, config_yaml: str, resume: bool, init_from):
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    from napari_rat.train.loop import train_events

    config = config_from_yaml_text(config_yaml)
    dist = DistEnv(rank, world, rank, world, "local")
    for event in train_events(
        config, backend="deepspeed", resume=resume, init_from=init_from, dist=dist
    ):
        if rank == 0:
            print(event, flush=True)


def train_multiprocess(
    config: ExperimentConfig, num_workers: int, *, resume: bool = False, init_from=None
) -> Path:
    """Run ``num_workers`` DeepSpeed ranks on this machine (gloo on CPU); returns best path."""
    from napari_rat.train.loop import BEST_NAME, run_dir

    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main, args=(r, num_workers, port, dump_config(config), resume, init_from)
        )
        for r in range(num_workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} DeepSpeed rank(s) failed (exit codes {failed})")
    return run_dir(config) / BEST_NAME
