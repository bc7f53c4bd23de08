"""Run a training config with the backend it names: the one call the CLI, the dock and a cluster
job all make (:func:`run_training`), so no front door chooses backends itself.

Backends: ``local`` (in-process), ``deepspeed`` (in-process, or ``num_workers`` ranks on this
machine), ``ray`` (Ray Train workers: on the cluster that runs this process as a Ray job, on
``cluster.address``, or on a local head started for the run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from napari_rat import __version__
from napari_rat.config import ExperimentConfig
from napari_rat.job_environment import JOB_VERSION_ENV

_logger = logging.getLogger(__name__)


class VersionMismatchError(RuntimeError):
    """A job submitted by one napari-rat version reached a cluster that runs another."""


def check_job_version() -> None:
    """Refuse to train in a job submitted by another napari-rat version (see JOB_VERSION_ENV)."""
    wanted = os.environ.get(JOB_VERSION_ENV)
    if wanted and wanted != __version__:
        raise VersionMismatchError(
            f"this job was submitted by napari-rat {wanted} but the cluster runs napari-rat "
            f"{__version__}; install napari-rat {wanted} on the cluster (or submit from "
            f"{__version__})"
        )


def run_training(
    config: ExperimentConfig,
    *,
    num_workers: int | None = None,
    num_gpus: float | None = None,
    resume: bool = False,
    init_from: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Train ``config`` with ``config.training.backend``; returns the best single-file checkpoint.

    Every event of the loop reaches ``log`` (default: this module's logger, at INFO) as a human
    line, followed for progress, validation and checkpoint events by a machine line
    (:func:`napari_rat.train.loop.event_line`) that a cluster client parses out of the job's
    log. (On Ray the workers write them into the job's log themselves; ``log`` gets the
    driver's messages.)

    Raises
    ------
    napari_rat.train.ray_backend.RunExistsError
        A Ray run of this name has checkpoints and ``resume`` is false (nothing started).
    napari_rat.train.data_sources.DatasetError
        The data cannot be read.
    ImportError
        The backend's extra is not installed (the message names it).
    VersionMismatchError
        Run as a submitted job whose client had another napari-rat version.
    """
    check_job_version()
    log = log or _logger.info
    backend = config.training.backend
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if backend == "ray":
        from napari_rat.train.ray_backend import train_with_ray

        return train_with_ray(
            config,
            num_workers=num_workers,
            num_gpus=num_gpus,
            init_from=init_from,
            resume=resume,
            log=log,
        )
    if backend == "deepspeed" and (num_workers or 1) > 1:
        from napari_rat.train.launch import train_multiprocess

        return train_multiprocess(config, num_workers, resume=resume, init_from=init_from, log=log)
    from napari_rat.train.loop import event_line, train

    def emit(event) -> None:
        log(str(event))
        line = event_line(event)
        if line is not None:
            log(line)

    last = train(config, callback=emit, backend=backend, resume=resume, init_from=init_from)
    return Path(last.path) if last.path else None
