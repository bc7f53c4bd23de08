"""Predict across a Ray cluster: the tiled engine run block by block by Ray tasks.

The image's output grid (the engine's zarr chunks, one tile core each) is cut into **blocks** of
``block`` chunks per axis. A Ray task per block runs the engine's own tile step
(:func:`napari_rat.inference.tiled_predict.predict_tiles_into`) on every tile whose core meets
the block, and writes only inside the block: blocks cover whole chunks, so no two tasks ever
write the same chunk of the shared store, and every pixel comes from the same tile, read with
the same halo, as in a single-process run (a tile that straddles two blocks is run by both; an
image whose sides are multiples of the tile has none). The plan (tiles, intensity statistics,
levels) is made once on the driver, so the result equals :func:`~napari_rat.inference.predict`'s.
The instance step then runs on the driver, chunk by chunk, as in the engine (the union-find
across chunk faces of :mod:`~napari_rat.inference.chunked_labels`).

The model goes into the object store once, and as the run starts a warm-up task per worker
imports torch and deserialises it while the driver plans (:func:`warm_worker`); the plan (every
tile), options and the image's (lazy) description go into the object store once too. Each
worker process fetches both once and keeps them for the blocks it runs, its torch threads set
to its CPUs. Tasks, not one actor per worker: Ray reuses its pooled worker processes from task
to task and run to run, where an actor starts a fresh process (4-10 s here) for every run.

The store is a folder every worker reads and writes (a shared file system on a real cluster;
``OUT.zarr`` on this machine for the local head). It is built in ``.OUT.zarr.cluster-work``
beside the destination and moved into place only when complete (the package's build-aside
rule): nothing partial is visible at the destination. Each finished block leaves a marker in
the work folder's ``done/`` list, so a run that was stopped or crashed resumes
(``resume=True``) with the blocks not yet written; a worker killed mid-block is retried by Ray
(``max_retries``) and its block recomputed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_rat.cluster.client import ClusterError

#: Chunks per axis in a block: 2D blocks of 4x4 tiles, 3D blocks of 2x2x2.
DEFAULT_BLOCK = {2: 4, 3: 2}
#: How often Ray retries a block whose worker died (a killed process, a lost node).
MAX_RETRIES = 3
WORK_SUFFIX = ".cluster-work"
DONE = "done"
RUN_FILE = "cluster-run.json"
#: How long an address may take to answer before the run gives up.
CONNECT_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class Block:
    """One block: ``index`` in the block grid, ``region`` (slices of the image) it writes."""

    index: int
    region: tuple[slice, ...]


@dataclass(frozen=True)
class BlockReport:
    """What a block's task reports: its non-finite input pixels, the seconds it computed (wall
    and the worker process's CPU time), the worker's process id, peak resident memory (bytes)
    and CPU priority (POSIX nice: Ray starts its workers at 15 unless the head says otherwise)."""

    index: int
    nan_pixels: int
    seconds: float
    pid: int
    peak_rss: int
    cpu_seconds: float = 0.0
    niceness: int = 0


def plan_blocks(shape: Sequence[int], chunks: Sequence[int], block: int | Sequence[int]):
    """The image cut into blocks of ``block`` chunks per axis (whole chunks: no two blocks
    share one)."""
    block = [int(block)] * len(shape) if isinstance(block, int) else [int(b) for b in block]
    if len(block) != len(shape) or any(b < 1 for b in block):
        raise ValueError(f"block must be 1 or more chunks per axis, got {block}")
    axes = []
    for n, c, b in zip(shape, chunks, block, strict=True):
        step = c * b
        axes.append([slice(lo, min(lo + step, n)) for lo in range(0, n, step)])
    return [Block(i, tuple(r)) for i, r in enumerate(itertools.product(*axes))]


def work_folder(store: str | os.PathLike) -> Path:
    """Where a cluster run builds ``store`` (kept when it stops, for a resume)."""
    store = Path(store)
    return store.parent / f".{store.name}{WORK_SUFFIX}"


def done_blocks(work: str | os.PathLike) -> dict[int, int]:
    """The done-list of a work folder: ``{block index: its non-finite pixel count}``."""
    folder = Path(work) / DONE
    if not folder.is_dir():
        return {}
    done = {}
    for marker in folder.iterdir():
        if marker.name.isdigit():
            done[int(marker.name)] = int(json.loads(marker.read_text() or "{}").get("nan", 0))
    return done


def _mark_done(work: Path, index: int, nan_pixels: int) -> None:
    tmp = work / DONE / f".{index}.{os.getpid()}"
    tmp.write_text(json.dumps({"nan": int(nan_pixels)}))
    os.replace(tmp, work / DONE / str(index))  # a marker is there whole or not at all


# --- the worker side ---------------------------------------------------------------------------
#: What a worker process keeps between the blocks of a run: the model, and the run's context.
_WORKER_MODEL: dict[str, Any] = {}
_WORKER_RUN: dict[str, Any] = {}


def _worker_model(model_ref, device):
    """The model, deserialised once per worker process (kept for the blocks that follow)."""
    import ray

    key = model_ref.hex()
    if key not in _WORKER_MODEL:
        _WORKER_MODEL.clear()
        _WORKER_MODEL[key] = ray.get(model_ref).to(device).eval()
    return _WORKER_MODEL[key]


def _worker_run(run_ref):
    """The run's ``(plan, options, image, work group, work folder)``, fetched and opened once
    per worker process: the plan lists every tile of the image, too much to send per block."""
    import ray
    import zarr

    from napari_rat.inference.devices import resolve_device

    key = run_ref.hex()
    if key not in _WORKER_RUN:
        plan, options, image, work = ray.get(run_ref)
        plan = dataclasses.replace(plan, device=resolve_device(options.device))
        _WORKER_RUN.clear()
        _WORKER_RUN[key] = (plan, options, image, zarr.open_group(work, mode="r+"), Path(work))
    return _WORKER_RUN[key]


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0 and torch.get_num_threads() != threads:  # the CPUs Ray gave the task
        torch.set_num_threads(threads)


def warm_worker(boxed, device: str, threads: int) -> tuple[int, float]:
    """A Ray task sent as the run starts, one per worker, while the driver plans: the worker
    process imports torch and deserialises the model before its first block. Returns its pid
    and when it was done (``time.time()``)."""
    from napari_rat.inference.devices import resolve_device

    _set_threads(threads)
    _worker_model(boxed[0], resolve_device(device))
    return os.getpid(), time.time()


def run_block(boxed, block: Block, threads: int) -> BlockReport:
    """A Ray task: the engine's tile step over the tiles meeting ``block``, written inside it
    into the work store; then the block's done marker. ``boxed`` holds the object refs of the
    model and of the run's context (in a list, so that Ray hands them over unresolved and the
    worker process fetches each once)."""
    from napari_rat.inference.tiled_predict import (
        predict_tiles_into,
        run_prediction,
        tiles_within,
    )

    start, cpu = time.perf_counter(), time.process_time()
    _set_threads(threads)
    model_ref, run_ref = boxed
    plan, options, image, root, work = _worker_run(run_ref)
    model = _worker_model(model_ref, plan.device)
    steps = predict_tiles_into(
        model,
        image,
        plan,
        root["probabilities"],
        root["semantic"],
        options=options,
        tiles=tiles_within(plan, block.region),
        within=block.region,
    )
    nan_pixels = run_prediction(steps)  # drives the generator, returns its value
    _mark_done(work, block.index, nan_pixels)
    return BlockReport(
        block.index,
        nan_pixels,
        time.perf_counter() - start,
        os.getpid(),
        _peak_rss(),
        time.process_time() - cpu,
        os.nice(0),
    )


# --- connecting --------------------------------------------------------------------------------
def _check_address(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"{address!r} is not a Ray cluster address; give HOST:PORT (the head's GCS port, "
            "6379 by default), 'local' for the local head, or 'auto' inside a Ray job"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            # Ray's GCS is a gRPC (HTTP/2) server: it answers the HTTP/2 preface with a SETTINGS
            # frame. Something else at that port would leave ray.init() waiting for minutes.
            conn.sendall(_HTTP2_PREFACE)
            frame = conn.recv(9)
    except TimeoutError:
        raise ClusterError(
            f"the Ray cluster at {address} did not answer within {timeout:.0f} s; check the "
            "address (the head's GCS port, 6379 by default) and that the cluster is up"
        ) from None
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check the "
            "address and port (the head's GCS port, 6379 by default) and that the cluster is up"
        ) from None
    if len(frame) < 4 or frame[3] != _HTTP2_SETTINGS:
        raise ClusterError(
            f"{address} answers, but not as a Ray head (no GCS there); give the head's GCS "
            "port (6379 by default), not the dashboard's"
        )


#: The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113, 3.4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


@contextmanager
def connect_ray(cluster: str = "local", *, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[None]:
    """Within: Ray connected to ``cluster``, disconnected after (an already connected Ray is
    used as it is).

    ``cluster`` is ``local`` (the recorded local head, started and recorded as
    ``napari-rat cluster start`` does when none runs), ``auto`` (the cluster of the Ray job this
    runs in) or the ``HOST:PORT`` of a head (token from ``RAY_AUTH_TOKEN``).

    Raises
    ------
    ClusterError
        An address that is not one, or that does not answer within ``timeout`` seconds.
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the train extra is installed in CI
        raise ImportError('Ray is not installed: pip install "napari-rat[train]"') from exc
    from napari_rat.train.ray_head import driver_env

    if ray.is_initialized():
        yield
        return
    head, address = None, cluster
    if cluster == "local":
        from napari_rat.cluster.local_head import start_local_head

        head, _ = start_local_head()
        address = head.address
    elif cluster != "auto":
        _check_address(cluster, timeout)
    if cluster == "auto":  # a job's driver: the cluster tells it its address in RAY_ADDRESS
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level="ERROR")
        try:
            yield
        finally:
            ray.shutdown()
        return
    with driver_env(head):
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise ClusterError(
                f"could not connect to the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
                "check the address and the token (RAY_AUTH_TOKEN)"
            ) from None
        try:
            yield
        finally:
            ray.shutdown()


# --- the driver --------------------------------------------------------------------------------
def _fingerprint(plan, blocks, options) -> dict:
    return {
        "shape": list(plan.shape),
        "chunks": list(plan.chunks),
        "tiles": len(plan.tiles),
        "blocks": [[[s.start, s.stop] for s in b.region] for b in blocks],
        "channel_names": plan.channel_names,
        "stats": [list(plan.stats.offset), list(plan.stats.scale)],
        "levels": [list(f) for f in plan.factors],
        "precision": options.precision,
        "resample": options.resample_to_training_spacing,
    }


def _check_work(work: Path, store: Path, fingerprint: dict | None, resume: bool) -> None:
    """Refuse a taken destination, and a stopped run's folder unless resuming it as it was
    (``fingerprint`` ``None``: the run not planned yet, its settings not checked)."""
    if store.exists():
        raise FileExistsError(f"{store} already exists; choose another output or remove it")
    if not work.exists():
        return
    if not resume:
        raise FileExistsError(
            f"{work} holds the blocks of a stopped cluster run of {store.name}; finish it "
            "with --resume (resume=True), or remove the folder to start over"
        )
    saved = work / RUN_FILE
    if fingerprint is None:
        return
    if not saved.is_file() or json.loads(saved.read_text()) != fingerprint:
        raise ValueError(
            f"{work} was made by a run with other settings (image, tile, halo, block, levels "
            "or normalisation); resume with the same ones, or remove the folder to start over"
        )


def _open_work(work: Path, plan, fingerprint: dict):
    """The work folder's zarr group: the stopped run's (checked by :func:`_check_work`), or
    made fresh."""
    import zarr

    from napari_rat.inference.result_store import new_array

    if work.exists():
        return zarr.open_group(work, mode="r+")
    work.parent.mkdir(parents=True, exist_ok=True)
    root = zarr.open_group(work, mode="w")
    n = len(plan.channel_names)
    new_array(root, "probabilities", (n, *plan.shape), (1, *plan.chunks), np.float32)
    new_array(root, "semantic", plan.shape, plan.chunks, np.uint8)
    (work / DONE).mkdir()
    (work / RUN_FILE).write_text(json.dumps(fingerprint))  # last: a run is resumable from now
    return root


def predict_on_cluster(
    model,
    image,
    spacing: Sequence[float],
    translation: Sequence[float] | None = None,
    *,
    store: str | os.PathLike,
    options=None,
    cluster: str = "local",
    workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
    block: int | Sequence[int] | None = None,
    resume: bool = False,
    stats=None,
    units=None,
    cancel: threading.Event | None = None,
    max_retries: int = MAX_RETRIES,
):
    """:func:`~napari_rat.inference.predict` over a Ray cluster, block by block.

    A generator: yields a :class:`~napari_rat.inference.Progress` per finished block (stage
    ``"blocks"``), then during the instance step, and returns the
    :class:`~napari_rat.inference.Prediction` read from ``store``; its ``extra`` holds
    ``blocks`` (the block count), ``blocks_computed`` (this run's; fewer on a resume) and
    ``reports`` (a :class:`BlockReport` per computed block) and ``blocks_seconds`` (the block
    phase's wall time).

    Parameters
    ----------
    store
        The destination zarr folder, on storage every worker reads and writes.
    cluster
        ``local``, ``auto`` or ``HOST:PORT`` (see :func:`connect_ray`).
    workers
        Blocks computed at once; each task takes ``cpus_per_worker`` CPUs (torch threads) and
        ``gpus_per_worker`` GPUs.
    block
        Chunks (tile cores) per block and axis; default :data:`DEFAULT_BLOCK`.
    resume
        Finish the stopped run whose work folder is beside ``store``, computing only the blocks
        its done-list lacks.
    cancel
        Set it to stop between blocks (closing the generator stops too); the work folder stays
        for a resume.

    Raises
    ------
    ClusterError
        No cluster at the address, or too few resources on it for one worker.
    FileExistsError
        ``store`` exists, or a stopped run's work folder does and ``resume`` is false.
    """
    import ray

    from napari_rat.inference.result_store import publish_work
    from napari_rat.inference.tiled_predict import (
        Prediction,
        PredictionCancelled,
        PredictOptions,
        Progress,
        checkpoint_head,
        grow_radius_for,
        instances_into,
        plan_prediction,
    )

    options = options or PredictOptions()
    if workers < 1 or cpus_per_worker < 1 or gpus_per_worker < 0:
        raise ValueError(
            f"need workers >= 1, cpus_per_worker >= 1 and gpus_per_worker >= 0; got {workers}, "
            f"{cpus_per_worker}, {gpus_per_worker}"
        )
    store = Path(store)
    work = work_folder(store)
    _check_work(work, store, None, resume)  # before connecting: a taken destination, said fast
    reports: list[BlockReport] = []
    was_training = model.training
    with connect_ray(cluster):
        _check_resources(ray, cpus_per_worker, gpus_per_worker)
        timings = {"start": time.time()}
        resources = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
        try:
            model_ref = ray.put(model.cpu().eval())
        finally:
            model.train(was_training)
        # The workers import torch and load the model while this process plans the run; the
        # blocks then run in the same worker processes, which Ray reuses from run to run.
        warm = ray.remote(warm_worker).options(**resources, max_retries=0)
        warming = [
            warm.remote([model_ref], options.device, cpus_per_worker) for _ in range(workers)
        ]
        pending: dict[Any, Block] = {}
        try:
            plan = plan_prediction(
                model, image, spacing, translation, options=options, stats=stats, units=units
            )
            block = block or DEFAULT_BLOCK.get(len(plan.shape), 2)
            blocks = plan_blocks(plan.shape, plan.chunks, block)
            fingerprint = _fingerprint(plan, blocks, options)
            _check_work(work, store, fingerprint, resume)
            root = _open_work(work, plan, fingerprint)
            done = done_blocks(work)
            queue = [b for b in blocks if b.index not in done]
            task = ray.remote(run_block).options(**resources, max_retries=max_retries)
            # one object for the run (the plan lists every tile), fetched once per worker
            boxed = [model_ref, ray.put((plan, options, image, str(work)))]
            timings["planned"] = time.time()
            started = time.perf_counter()
            while queue or pending:
                while queue and len(pending) < workers:
                    b = queue.pop(0)
                    pending[task.remote(boxed, b, cpus_per_worker)] = b
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                if cancel is not None and cancel.is_set():
                    raise PredictionCancelled("prediction cancelled")
                for ref in ready:
                    pending.pop(ref)
                    reports.append(_result(ray, ref, max_retries))
                    yield Progress("blocks", len(done) + len(reports), len(blocks))
            blocks_seconds = time.perf_counter() - started
            ready, _ = ray.wait(warming, num_returns=len(warming), timeout=0)
            warmed = [ray.get(r) for r in ready if not _failed(ray, r)]
        finally:
            for ref in [*pending, *warming]:  # stopped: no task may write on after we return
                ray.cancel(ref, force=True)
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=10)
    nan_pixels = sum(done.values()) + sum(r.nan_pixels for r in reports)
    for name in ("seeds", "labels"):  # a resumed run that had reached the instance step
        if name in root:
            del root[name]
    labels, n_instances = None, 0
    if options.instances:
        labels, n_instances = yield from instances_into(
            model, plan, root["probabilities"], root, options=options, cancel=cancel
        )
    result = Prediction(
        root["probabilities"],
        root["semantic"],
        labels,
        plan.class_names,
        plan.channel_names,
        plan.spacing,
        plan.translation,
        num_instances=n_instances,
        extra={
            "stats": plan.stats,
            "levels": plan.factors,
            "blocks": len(blocks),
            "blocks_computed": len(reports),
            "reports": reports,
            "blocks_seconds": blocks_seconds,
            # seconds from the start until the first block was sent, and until each worker
            # had imported torch and loaded the model (overlapping the planning)
            "planned": timings["planned"] - timings["start"],
            "worker_ready": [at - timings["start"] for _, at in warmed],
        },
        nan_pixels=nan_pixels,
        boundary_radius=grow_radius_for(checkpoint_head(model), options),
    )
    shutil.rmtree(work / DONE)
    (work / RUN_FILE).unlink()
    return publish_work(result, work, store, with_labels=options.instances)


def _result(ray, ref, max_retries: int = MAX_RETRIES) -> BlockReport:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise RuntimeError(
            f"a block failed on the cluster: {type(cause).__name__}: {cause}"
        ) from None
    except ray.exceptions.WorkerCrashedError:
        raise RuntimeError(
            f"a block's worker died more than {max_retries} times (out of memory?); the blocks "
            "done so far are kept: resume with --resume, with a smaller --tile or --block"
        ) from None


def _failed(ray, ref) -> bool:
    """Whether a finished warm-up task failed (its worker then loads the model with a block)."""
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayError:
        return True
    return False


def _check_resources(ray, cpus: int, gpus: float) -> None:
    have = ray.cluster_resources()
    if have.get("CPU", 0) < cpus or have.get("GPU", 0) < gpus:
        raise ClusterError(
            f"the cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; one "
            f"worker needs {cpus} CPUs and {gpus:g} GPUs (lower --gpus-per-worker, or add nodes)"
        )
