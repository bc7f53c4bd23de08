"""The ``--cluster`` cases of ``napari-rat bench predict``: the engine over a Ray cluster.

Each case runs in its own child process (:func:`napari_rat.bench._measure.measure`). For
``--cluster local`` the child starts a private head on 127.0.0.1 with the benchmark's cores
(stopped by its pid when the child exits; its start is timed apart), so every case gets fresh
worker processes and their peak memory belongs to that case alone. The head runs its workers at
the engine's CPU priority: Ray starts worker processes at nice 15 by default
(``RAY_worker_niceness``), which on a machine shared with other work measures the priority, not
the code (a 1-worker run 2x slower than the engine on a loaded machine, 10% faster with nice
0). Worker processes are pre-started (python and torch imported, not timed, as the engine's
imports are not; a local head keeps its workers between runs); the timed run includes
everything :func:`predict_on_cluster` does: sending the workers the model, planning, the blocks,
the instance step and publishing.

Reported per case: time, pixels per second, the highest peak resident memory of a worker
process (absolute: torch and the model included), the head's start, the seconds until the
workers had their model and until the first block was sent, the workers' CPU seconds, and the
scheduling overhead per block: ``(busy workers x block-phase wall time - sum of the blocks' own
compute times) / blocks`` (busy workers: the workers, or the blocks if fewer).
"""

from __future__ import annotations

import time


def _warm():
    import torch  # noqa: F401

    import napari_rat.cluster.predict  # noqa: F401
    import napari_rat.inference.tiled_predict  # noqa: F401
    import napari_rat.model  # noqa: F401  (the model's classes: timm and the layer packages)

    time.sleep(0.5)  # held, so that each warm-up task gets a worker of its own
    return 0


def case_cluster(
    image: str,
    config: str,
    dims: int,
    tile: int,
    halo: int,
    store: str,
    device: str,
    attention: str | None,
    precision: str = "auto",
    model: str = "config",
    workers: int = 1,
    cores: int = 2,
    cluster: str = "local",
    block: int | None = None,
):
    """Set-up of a cluster case: returns ``(run, device)``."""
    import multiprocessing.util
    import os

    import ray

    from napari_rat.bench.predict import _model
    from napari_rat.cluster.predict import predict_on_cluster
    from napari_rat.inference import PredictOptions, run_prediction
    from napari_rat.inference.sources import input_from_pyramid
    from napari_rat.io import open_pyramid
    from napari_rat.train.ray_head import driver_env, start_head

    net = _model(config, dims, attention, model)
    source = input_from_pyramid(open_pyramid(image))
    options = PredictOptions(
        tile=(tile,) * dims, halo=(halo,) * dims, device=device, precision=precision
    )
    cpus = max(1, cores // workers)
    head, head_start = None, None
    if cluster == "local":
        os.environ["RAY_worker_niceness"] = "0"  # the raylet's: workers at the engine's nice
        start = time.perf_counter()
        head = start_head(num_cpus=cores, include_dashboard=False)
        head_start = time.perf_counter() - start
        # run when the child exits (multiprocessing runs finalizers with a priority)
        multiprocessing.util.Finalize(None, head.stop, exitpriority=10)
    env = driver_env(head)
    env.__enter__()
    # Held until the child exits (before the head stops): a context manager left to the garbage
    # collector when this function returns would close, taking the token from under Ray (whose
    # next call to the head then aborts the process: "couldn't find an authentication token").
    multiprocessing.util.Finalize(None, env.__exit__, args=(None, None, None), exitpriority=11)
    multiprocessing.util.Finalize(None, ray.shutdown, exitpriority=12)  # first: Ray, then token
    ray.init(address=head.address if head else cluster, logging_level="ERROR")
    start = time.perf_counter()
    warm = ray.remote(_warm).options(num_cpus=cpus)
    ray.get([warm.remote() for _ in range(workers)])
    startup = time.perf_counter() - start

    def run():
        result = run_prediction(
            predict_on_cluster(
                net,
                source.image,
                source.spacing,
                source.translation,
                units=source.units,
                store=store,
                options=options,
                workers=workers,
                cpus_per_worker=cpus,
                block=block,
            )
        )
        extra = result.extra
        reports = extra["reports"]
        blocks = len(reports)
        busy = sum(r.seconds for r in reports)
        busy_workers = min(workers, blocks)  # fewer blocks than workers: some stay idle
        return {
            "instances": result.num_instances,
            "blocks": blocks,
            "worker_peak": max(r.peak_rss for r in reports),
            "worker_processes": len({r.pid for r in reports}),
            "overhead_per_block": (busy_workers * extra["blocks_seconds"] - busy) / blocks,
            "worker_cpu": sum(r.cpu_seconds for r in reports),
            "worker_nice": max(r.niceness for r in reports),
            "blocks_seconds": extra["blocks_seconds"],
            "planned": extra["planned"],
            "worker_ready": max(extra["worker_ready"], default=0.0),
            "startup": startup,
            "head_start": head_start,
        }

    return run, device
