"""``napari-rat bench train``: training samples/s in-process vs DeepSpeed vs Ray Train.

Every case trains the same config for the same number of steps in a fresh process (Ray cases
start their own local head, stopped by its pid); the rate excludes start-up (first epoch
warm-up, JIT builds, worker start) by timing from the first to the last progress report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    ("in-process", "local", 1),
    ("DeepSpeed ZeRO-2", "deepspeed", 1),
    ("Ray Train 1 worker", "ray", 1),
    ("Ray Train 2 workers", "ray", 2),
]


def _child(config_path: str, backend: str, workers: int, steps: int, out: str) -> None:
    """Run one case and write ``{"samples_per_s": ...}`` to ``out``."""
    import tempfile

    from napari_rat.config import load_config

    config = load_config(config_path)
    tmp = tempfile.mkdtemp(prefix="napari-rat-bench-")
    raw = config.model_dump()
    raw["training"].update(
        {
            "epochs": 1,
            "steps_per_epoch": steps,
            "log_every": 1,
            "output_dir": tmp,
            "run_name": f"bench-{backend}-{workers}",
            "val_every": 10**6,
            "backend": backend,
        }
    )
    raw["data"]["val_fraction"] = 0.0
    raw["data"]["holdout_fraction"] = 0.0
    raw["deepspeed"]["enabled"] = backend != "local"
    raw["cluster"].update({"num_workers": workers, "storage_path": f"{tmp}/ray"})
    config = type(config).model_validate(raw)
    times: list[tuple[float, int]] = []
    if backend == "ray":
        from napari_rat.train.ray_backend import train_with_ray

        # Rank 0 prints progress lines; their step counts and arrival times give the rate.
        start = time.perf_counter()
        train_with_ray(config, num_workers=workers, log=lambda s: None)
        total = time.perf_counter() - start
        metrics = Path(tmp) / config.training.run_name / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        train = [r for r in records if r["kind"] == "train"]
        t0, t1 = train[0]["time"], train[-1]["time"]
        n = (train[-1]["step"] - train[0]["step"]) * config.training.batch_size * workers
        rate = n / max(t1 - t0, 1e-9)
    else:
        from napari_rat.train.loop import train_events

        start = time.perf_counter()
        for event in train_events(config, backend=backend):
            if event.kind == "progress":
                times.append((time.perf_counter(), event.step))
        total = time.perf_counter() - start
        (t0, s0), (t1, s1) = times[0], times[-1]
        rate = (s1 - s0) * config.training.batch_size / max(t1 - t0, 1e-9)
    Path(out).write_text(json.dumps({"samples_per_s": rate, "wall_s": total}))


def _bench(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from napari_rat.config import load_config

    # Same threads per worker in every case: Ray gives each worker cluster.cpus_per_worker.
    threads = str(max(int(load_config(args.config).cluster.cpus_per_worker), 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    rows = []
    for name, backend, workers in CASES:
        if args.cases and backend not in args.cases:
            continue
        out = Path(tempfile.mkdtemp()) / "result.json"
        code = (
            "import sys; from napari_rat.bench.train import _child; "
            f"_child({args.config!r}, {backend!r}, {workers}, {args.steps}, {str(out)!r})"
        )
        proc = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", code],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            env=env,
        )
        if proc.returncode or not out.exists():
            rows.append((name, None, None, proc.stderr.strip().splitlines()[-1:]))
        else:
            r = json.loads(out.read_text())
            rows.append((name, r["samples_per_s"], r["wall_s"], None))
        print(f"{name}: done", file=sys.stderr, flush=True)
    base = rows[0][1] if rows and rows[0][1] else None
    print(f"config {args.config}, {args.steps} steps per case, OMP_NUM_THREADS={threads}")
    print(f"{'case':<22} {'samples/s':>10} {'vs in-process':>14} {'wall s':>8}")
    for name, rate, wall, err in rows:
        if rate is None:
            print(f"{name:<22} {'failed':>10}  {err}")
            continue
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{name:<22} {rate:>10.2f} {ratio:>14} {wall:>8.1f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="training samples/s: in-process vs DeepSpeed vs Ray Train (1, 2 workers)"
    )
    parser.add_argument("--config", default="configs/quick.yaml", metavar="C")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per case")
    parser.add_argument("--cases", nargs="+", choices=["local", "deepspeed", "ray"])
    parser.add_argument("--timeout", type=float, default=900)
    parser.set_defaults(func=_bench)
