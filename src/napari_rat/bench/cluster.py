"""``napari-rat bench cluster``: a training job through the Jobs API against the same training in
the foreground, measured in one run.

Cases, each in its own process for the foreground one:

- **train (foreground)**: ``napari-rat train --backend ray`` of the config; it starts its own local
  head, trains and consolidates. Times: to the first metric line on its output, to the end.
- **submit (Jobs API)**: on a local head started once by the benchmark (its start-up reported on
  its own), ``napari-rat submit`` of the same config through :mod:`napari_rat.cluster`, polled
  as the dock and ``napari-rat logs --follow`` poll it. Times from Submit: to the first metric
  line seen in the job's log, to SUCCEEDED.

Both train the same number of steps with the same workers; the difference is what the Jobs API
costs (upload, job driver start, log polling) against a head started for the run.

With ``--gui``, a third run: the "Train on cluster" dock in a real viewer (Xvfb when there is no
display) submits the same training on the running head, and the viewer's event loop is timed
(:mod:`napari_rat.bench._loop_latency`) while the job's log and metrics stream in; once per
``--gui-niceness`` value, the head restarted at that CPU priority (the local head's default,
:data:`~napari_rat.cluster.local_head.LOCAL_HEAD_NICENESS`, against 0 shows what the priority
buys the viewer when the job's workers want every core).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from napari_rat.cluster.local_head import LOCAL_HEAD_NICENESS


def _config(path: str, steps: int, workers: int, out: Path, name: str):
    from napari_rat.config import load_config, save_config

    config = load_config(path)
    raw = config.model_dump()
    raw["training"].update(
        epochs=1,
        steps_per_epoch=steps,
        log_every=1,
        run_name=name,
        output_dir=str(out / "runs"),
        backend="ray",
    )
    raw["cluster"].update(num_workers=workers, storage_path=str(out / "ray"))
    return save_config(type(config).model_validate(raw), out / f"{name}.yaml")


def _foreground(config: Path, timeout: float) -> dict:
    from napari_rat.train.loop import EVENT_MARKER

    start = time.perf_counter()
    first = None
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "napari_rat.cli", "train", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None and EVENT_MARKER in line:
            first = time.perf_counter() - start
    code = proc.wait(timeout=timeout)
    return {"first_metric_s": first, "done_s": time.perf_counter() - start, "ok": code == 0}


def _submitted(config: Path, timeout: float, poll_s: float) -> dict:
    from napari_rat.cluster import connect
    from napari_rat.config import load_config

    client = connect()
    start = time.perf_counter()
    job = client.submit(load_config(config))
    submitted = time.perf_counter() - start
    first = None
    status = client.job_status(job)
    while status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.perf_counter() - start > timeout:
            client.stop(job)
            break
        if first is None and client.events(job):
            first = time.perf_counter() - start
        time.sleep(poll_s)
        status = client.job_status(job)
    if first is None and client.events(job):
        first = time.perf_counter() - start
    return {
        "submit_call_s": submitted,
        "first_metric_s": first,
        "done_s": time.perf_counter() - start,
        "ok": status == "SUCCEEDED",
    }


def _dock_streaming(config: Path, timeout: float, idle_s: float) -> dict:
    """The Train on cluster dock in a real viewer submits ``config``'s training on the running
    local head (layers exported from the bundled nuclei image); the viewer's event loop is timed
    while the job runs and its log and metrics stream in, after an idle baseline."""
    import napari
    import numpy as np

    from napari_rat._widgets.cluster_widget import ClusterTrainingWidget
    from napari_rat.bench._loop_latency import contrast_toggle, measure_event_loop
    from napari_rat.config import load_config
    from napari_rat.sample_data import nuclei_2d

    c = load_config(config)
    image, labels = nuclei_2d()
    viewer = napari.Viewer(title="napari-rat bench cluster", show=True)
    try:
        layer = viewer.add_image(np.asarray(image)[:128, :128], name="nuclei")
        viewer.add_labels(np.asarray(labels)[:128, :128].astype(np.int32), name="corrected")
        dock = ClusterTrainingWidget(viewer)
        viewer.window.add_dock_widget(dock, name="Train on cluster")
        dock.image_layer.value, dock.labels_layer.value = "nuclei", "corrected"
        dock.export_dir.value = config.parent / "export"
        dock.run_name.value = f"bench-dock-{int(time.time())}"
        dock.epochs.value = c.training.epochs
        dock.workers.value = c.cluster.num_workers
        dock.precision.value = "fp32"
        interact = contrast_toggle(layer)
        idle = measure_event_loop(viewer, seconds=idle_s, interact=interact)
        dock.submit_button.native.click()

        def ended() -> bool:
            if dock.status.value.startswith("error"):  # refused or failed before any job
                return True
            rows = dock.table.rows()
            return bool(rows) and rows[0][2] in ("SUCCEEDED", "FAILED", "STOPPED")

        start = time.perf_counter()
        busy = measure_event_loop(viewer, until=ended, interact=interact, timeout_s=timeout)
        rows = dock.table.rows()
        if dock.status.value.startswith("error"):
            print(f"the dock: {dock.status.value}", file=sys.stderr)
        dock.close_cluster()
    finally:
        viewer.close()
    return {
        "idle": idle.summary(),
        "job": busy.summary(),
        "job_s": time.perf_counter() - start,
        "ok": bool(rows) and rows[0][2] == "SUCCEEDED",
    }


def _bench(args: argparse.Namespace) -> int:
    from napari_rat.cluster import start_local_head, stop_local_head

    args.config = str(Path(args.config).resolve())
    out = Path(tempfile.mkdtemp(prefix="napari-rat-bench-cluster-"))
    os.chdir(out)  # the dock's run keeps its relative storage (ray_results/) in here
    os.environ["NAPARI_RAT_STATE_DIR"] = str(out / "state")  # a head of the benchmark's own
    fg = _config(args.config, args.steps, args.workers, out, "bench-foreground")
    job = _config(args.config, args.steps, args.workers, out, "bench-job")
    print("train (foreground): running", file=sys.stderr, flush=True)
    foreground = _foreground(fg, args.timeout)
    print("submit (Jobs API): starting the local head", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    start_local_head(num_cpus=max(args.workers + 1, 3), niceness=args.gui_niceness[0])
    head_s = time.perf_counter() - t0
    guis: dict[int, dict] = {}
    try:
        submitted = _submitted(job, args.timeout, args.poll)
        if args.gui:
            from napari_rat.virtual_display import virtual_display

            with virtual_display() as have_display:
                for i, niceness in enumerate(args.gui_niceness if have_display else []):
                    if i:  # the head again, at this priority
                        stop_local_head()
                        start_local_head(num_cpus=max(args.workers + 1, 3), niceness=niceness)
                    print(
                        f"the dock streaming a job (head at nice {niceness}): running",
                        file=sys.stderr,
                        flush=True,
                    )
                    guis[niceness] = _dock_streaming(job, args.timeout, args.idle_seconds)
    finally:
        stop_local_head()

    def cell(value):
        return "-" if value is None else f"{value:.1f} s"

    print(f"config {args.config}, {args.steps} steps, {args.workers} workers; poll {args.poll} s")
    print(f"{'case':<36} {'first metric':>13} {'done':>9} {'ok':>4}")
    print(
        f"{'train --backend ray (own head)':<36} {cell(foreground['first_metric_s']):>13} "
        f"{cell(foreground['done_s']):>9} {str(foreground['ok']):>4}"
    )
    print(
        f"{'submit on a running local head':<36} {cell(submitted['first_metric_s']):>13} "
        f"{cell(submitted['done_s']):>9} {str(submitted['ok']):>4}"
    )
    if foreground["done_s"] and submitted["done_s"]:
        ratio = submitted["done_s"] / foreground["done_s"]
        print(
            f"submit to SUCCEEDED / foreground: {ratio:.2f}x; the local head itself took "
            f"{head_s:.1f} s to start (once, before Submit)"
        )
    for niceness, gui in guis.items():
        print(
            f"\nthe dock in a viewer while its job runs on a head at nice {niceness} "
            f"({gui['job_s']:.1f} s, ok {gui['ok']}): a 10 ms timer's lateness and a contrast "
            "change's handling, median / p99 / max ms"
        )
        for phase in ("idle", "job"):
            late, resp = gui[phase]["lateness_ms"], gui[phase]["response_ms"]
            print(
                f"  {phase:<5} timer {late['median']:.1f} / {late['p99']:.1f} / "
                f"{late['max']:.1f}   interaction {resp['median']:.1f} / {resp['p99']:.1f} / "
                f"{resp['max']:.1f}"
            )
    if args.gui and not guis:
        print("(no display and no Xvfb: the dock's event-loop lateness was not measured)")
    return 0 if foreground["ok"] and submitted["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cluster", help="a training job through the Jobs API vs train --backend ray, in one run"
    )
    parser.add_argument("--config", default="configs/quick.yaml", metavar="C")
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between log polls")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--gui", action="store_true", help="also time the viewer while the dock streams a job"
    )
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle baseline (--gui)")
    parser.add_argument(
        "--gui-niceness",
        type=int,
        nargs="+",
        default=[LOCAL_HEAD_NICENESS],
        metavar="N",
        help="the head's CPU priority for each --gui run (e.g. 10 0: the default against none)",
    )
    parser.set_defaults(func=_bench)
