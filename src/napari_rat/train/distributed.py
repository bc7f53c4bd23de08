"""Rank, world size and threads: from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, SLURM or LSF.

Precedence: the torch launcher's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, also
set by Ray Train and DeepSpeed), then SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``), then LSF/jsrun (``JSM_NAMESPACE_RANK`` ... or Open MPI's
``OMPI_COMM_WORLD_*`` under ``LSB_JOBID``), else one process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    scheduler: str = "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs and writes."""
        return self.rank == 0


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        return default


def detect_dist_env(env: Mapping[str, str] | None = None) -> DistEnv:
    """Read the rank layout from the environment (see the module docstring)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE", 1)
        return DistEnv(
            _int(env, "RANK", 0),
            world,
            _int(env, "LOCAL_RANK", 0),
            _int(env, "LOCAL_WORLD_SIZE", world),
            "torch",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = _int(env, "SLURM_NTASKS", 1)
        nodes = max(_int(env, "SLURM_NNODES", 1), 1)
        return DistEnv(
            _int(env, "SLURM_PROCID", 0),
            world,
            _int(env, "SLURM_LOCALID", 0),
            _int(env, "SLURM_NTASKS_PER_NODE", max(world // nodes, 1)),
            "slurm",
        )
    if "JSM_NAMESPACE_RANK" in env:
        return DistEnv(
            _int(env, "JSM_NAMESPACE_RANK", 0),
            _int(env, "JSM_NAMESPACE_SIZE", 1),
            _int(env, "JSM_NAMESPACE_LOCAL_RANK", 0),
            _int(env, "JSM_NAMESPACE_LOCAL_SIZE", 1),
            "lsf",
        )
    if "LSB_JOBID" in env and "OMPI_COMM_WORLD_RANK" in env:
        return DistEnv(
            _int(env, "OMPI_COMM_WORLD_RANK", 0),
            _int(env, "OMPI_COMM_WORLD_SIZE", 1),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0),
            _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1),
            "lsf",
        )
    return DistEnv()


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_threads(local_world_size: int = 1, env: dict[str, str] | None = None) -> int:
    """Share the node's CPUs among its ranks: set ``OMP_NUM_THREADS`` unless the user did.

    Returns the number of intra-op threads torch uses afterwards.
    """
    import torch

    env = os.environ if env is None else env
    if "OMP_NUM_THREADS" in env:
        threads = max(_int(env, "OMP_NUM_THREADS", 1), 1)
    else:
        threads = max(available_cpus() // max(local_world_size, 1), 1)
        env["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return threads


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free right now on ``host``. Each socket stays bound until
    all are chosen: asking :func:`free_port` ``count`` times can give the same port twice (the
    system may hand a just-released port out again), which Ray refuses at start-up."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def communication_backend(requested: str, device_type: str) -> str:
    """``nccl`` on CUDA, ``gloo`` on the CPU, unless the config asks for one."""
    if requested != "auto":
        return requested
    return "nccl" if device_type == "cuda" else "gloo"
