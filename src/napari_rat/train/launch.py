"""Several local DeepSpeed processes without a launcher: ``--backend deepspeed --num-workers N``.

On a cluster, use the scheduler's launcher (``srun``, ``jsrun``, ``torchrun``): the loop reads
``RANK``/``WORLD_SIZE`` or SLURM/LSF variables itself.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
from collections.abc import Callable
from pathlib import Path

from napari_rat.config import ExperimentConfig
from napari_rat.config.experiment import config_from_yaml_text, dump_config
from napari_rat.train.distributed import DistEnv, free_port

_logger = logging.getLogger(__name__)


def _rank_main(
    rank: int, world: int, port: int, config_yaml: str, resume: bool, init_from, lines=None
):
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
    from napari_rat.train.loop import event_line, train_events

    config = config_from_yaml_text(config_yaml)
    dist = DistEnv(rank, world, rank, world, "local")
    for event in train_events(
        config, backend="deepspeed", resume=resume, init_from=init_from, dist=dist
    ):
        if rank == 0 and lines is not None:
            lines.put(str(event))
            line = event_line(event)
            if line is not None:
                lines.put(line)


def train_multiprocess(
    config: ExperimentConfig,
    num_workers: int,
    *,
    resume: bool = False,
    init_from=None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run ``num_workers`` DeepSpeed ranks on this machine (gloo on CPU); returns best path.

    Rank 0 sends each event of the loop here, where it reaches ``log`` (default: this module's
    logger, at INFO) as :func:`napari_rat.train.run.run_training` says: a human line, then the
    machine line of progress, validation and checkpoint events.
    """
    from napari_rat.train.loop import BEST_NAME, run_dir

    log = log or _logger.info
    ctx = mp.get_context("spawn")
    lines = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(r, num_workers, port, dump_config(config), resume, init_from, lines),
        )
        for r in range(num_workers)
    ]
    for p in procs:
        p.start()
    # Until every rank has ended, and then what is left: a rank may put its last lines just
    # before it exits.
    while any(p.is_alive() for p in procs):
        try:
            log(lines.get(timeout=0.2))
        except queue.Empty:
            pass
    for p in procs:
        p.join()
    while True:
        try:
            log(lines.get(timeout=0.2))
        except queue.Empty:
            break
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} DeepSpeed rank(s) failed (exit codes {failed})")
    return run_dir(config) / BEST_NAME
