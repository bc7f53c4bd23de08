"""The ``--cluster`` cases of ``napari-rat bench predict``: the engine over a Ray cluster.

Each case runs in its own child process (:func:`napari_rat.bench._measure.measure`). For
``--cluster local`` the child starts a private head on 127.0.0.1 with the benchmark's cores
(stopped by its pid when the child exits), so every case gets fresh worker processes and their
peak memory belongs to that case alone; the workers are started and have imported torch before
the timing starts (their start-up is reported apart), as the single-process engine's imports and
model are set up before its timing. Reported per case: time, pixels per second, the highest peak
resident memory of a worker process (absolute: torch and the model included), and the
scheduling overhead per block: ``(busy workers x block-phase wall time - sum of the blocks' own
compute times) / blocks`` (busy workers: the workers, or the blocks if fewer).
"""

from __future__ import annotations

import time


def _warm():
    import torch  # noqa: F401

    import napari_rat.cluster.predict  # noqa: F401
    import napari_rat.inference.tiled_predict  # noqa: F401

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
    head = None
    if cluster == "local":
        head = start_head(num_cpus=cores, include_dashboard=False)
        # run when the child exits (multiprocessing runs finalizers with a priority)
        multiprocessing.util.Finalize(None, head.stop, exitpriority=10)
    env = driver_env(head)
    env.__enter__()
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
        reports = result.extra["reports"]
        blocks = len(reports)
        busy = sum(r.seconds for r in reports)
        busy_workers = min(workers, blocks)  # fewer blocks than workers: some stay idle
        return {
            "instances": result.num_instances,
            "blocks": blocks,
            "worker_peak": max(r.peak_rss for r in reports),
            "worker_processes": len({r.pid for r in reports}),
            "overhead_per_block": (busy_workers * result.extra["blocks_seconds"] - busy) / blocks,
            "startup": startup,
        }

    return run, device
