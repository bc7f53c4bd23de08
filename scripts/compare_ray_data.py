"""Why `predict --cluster` runs Ray tasks, not Ray Data (issue 16).

Ray Data's ``map_batches`` against plain Ray tasks over the same block list, on a local head of
2 CPUs: per-run and per-block scheduling cost (each block is a fixed 0.2 s CPU loop, the same for
both, so only the scheduling differs). Run: ``python scripts/compare_ray_data.py``.
"""

import os
import tempfile
import time

os.environ["NAPARI_RAT_STATE_DIR"] = tempfile.mkdtemp()  # a head of its own
import ray

from napari_rat.train.ray_head import driver_env, start_head


def work(b):
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    return b


def batch(rows):
    return {"b": [work(int(b)) for b in rows["b"]]}


head = start_head(num_cpus=2, include_dashboard=False)
try:
    with driver_env(head):
        ray.init(address=head.address, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        rem = ray.remote(work).options(num_cpus=1, max_retries=3)
        for n in (4, 16, 64):
            for via in ("tasks", "data", "tasks", "data"):
                t = time.perf_counter()
                if via == "tasks":
                    out = sorted(ray.get([rem.remote(b) for b in range(n)]))
                else:
                    ds = ray.data.from_items([{"b": b} for b in range(n)], override_num_blocks=n)
                    out = sorted(
                        r["b"] for r in ds.map_batches(batch, batch_size=1, num_cpus=1).take_all()
                    )
                dt = time.perf_counter() - t
                assert out == list(range(n))
                ideal = n * 0.2 / 2
                print(
                    f"{via:5s} {n:3d} blocks: {dt:6.2f} s, ideal {ideal:.1f} s, "
                    f"overhead {(dt - ideal) / n * 1000:6.1f} ms/block",
                    flush=True,
                )
        ray.shutdown()
finally:
    head.stop()
