"""``napari-rat bench predict``: which cases run at which sizes, the table, the starter model."""

import argparse

import pytest

from napari_rat.bench import predict
from napari_rat.cli import build_parser


def _args(*argv):
    return build_parser().parse_args(["bench", "predict", *argv])


def test_defaults_keep_the_config_model_and_bare_at_every_size():
    args = _args()
    assert args.model == "config" and args.func is predict._main
    assert predict.plan_cases(args) == [
        ("engine", (2048, 2048)),
        ("bare forward", (2048, 2048)),
        ("engine", (5792, 5792)),
        ("bare forward", (5792, 5792)),
    ]


def test_no_bare_at_large_runs_the_bare_forward_at_the_first_size_only():
    args = _args("--model", "starter", "--no-bare-at-large", "--sizes", "64x64", "128x128")
    assert args.model == "starter"
    assert predict.plan_cases(args) == [
        ("engine", (64, 64)),
        ("bare forward", (64, 64)),
        ("engine", (128, 128)),
    ]
    assert predict.plan_cases(_args("--quick", "--skip-bare")) == [
        ("engine", (512, 512)),
        ("engine", (1448, 1448)),
    ]


def test_table_has_the_throughput_ratio_at_1x_and_the_memory_ratio_between_sizes():
    def row(case, shape, seconds, peak):
        px = shape[0] * shape[1]
        return {
            "case": case,
            "shape": f"{shape[0]}x{shape[1]}",
            "seconds": seconds,
            "px_per_s": px / seconds,
            "peak": peak,
            "error": None,
        }

    rows = [
        row("engine", (100, 100), 10.0, 100 * 2**20),
        row("bare forward", (100, 100), 8.0, 90 * 2**20),
        row("engine", (283, 283), 80.0, 110 * 2**20),
    ]
    args = argparse.Namespace(model="starter", device="cpu", tile=None, precision="auto", repeat=3)
    table = predict.format_table(rows, args)
    assert "model starter" in table and "fastest of 3 run(s)" in table
    assert "- 100x100: engine throughput = 0.80 x bare forward (overhead 20%)" in table
    assert "- peak memory 283x283 / 100x100: 1.10 x" in table
    assert "283x283: engine throughput" not in table


def test_repeats_interleave_and_keep_the_fastest_time_and_the_highest_peak(capsys):
    args = _args("--model", "starter", "--sizes", "48x40", "--tile", "32", "--repeat", "2")
    rows = predict.run_bench(args)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    # engine, bare, engine, bare: the repeats go round the plan.
    assert [line.split("|")[1].strip() for line in printed] == ["engine", "bare forward"] * 2
    assert [r["case"] for r in rows] == ["engine", "bare forward"]
    for row in rows:
        assert row["error"] is None and row["runs"] == 2
        times = [float(line.split("|")[3].split()[0]) for line in printed if row["case"] in line]
        assert row["seconds"] == pytest.approx(min(times), abs=0.05)
        assert row["px_per_s"] == pytest.approx(48 * 40 / row["seconds"])
        assert row["peak"] > 0


def test_a_row_keeps_the_fastest_time_and_the_highest_peak_of_its_runs():
    from napari_rat.bench._measure import CaseResult

    runs = [
        CaseResult(3.0, 100, 400, {"cpu": 5.0}),
        CaseResult(2.0, 90, 390, {"cpu": 3.0}),
        CaseResult(4.0, 120, 420, {"cpu": 6.0}),
    ]
    row = predict._row("engine", (10, 20), runs)
    assert (row["seconds"], row["peak"], row["runs"], row["error"]) == (2.0, 120, 3, None)
    assert row["result"] == {"cpu": 3.0}  # the fastest run's details, not the last one's
    assert row["px_per_s"] == 100.0
    failed = predict._row("engine", (10, 20), [*runs, CaseResult(None, None, None, error="boom")])
    assert failed["error"] == "boom" and failed["seconds"] is None and failed["peak"] == 120
    nothing = predict._row("bare forward", (4, 4), [CaseResult(None, None, None, error="x")])
    assert nothing["peak"] is None and "failed: x" in predict._format_row(nothing)


def test_starter_model_cases_build_and_run_on_tiny_inputs(tmp_path):
    common = {
        "config": "",
        "dims": 2,
        "tile": 64,
        "halo": 8,
        "device": "cpu",
        "attention": None,
        "model": "starter",
    }
    run, device = predict.case_bare(shape=[96, 80], **common)
    assert device == "cpu" and run() == {"tiles": 4}
    image = predict.make_image(tmp_path / "img.zarr", (96, 80), (0.5, 0.5))
    run, _ = predict.case_engine(image=str(image), store=str(tmp_path / "out.zarr"), **common)
    assert run()["instances"] >= 0
    assert (tmp_path / "out.zarr").is_dir()
    # --dims 3 takes the bundled 3D starter
    assert predict._model("", 3, None, "starter").spatial_dims == 3


def test_cluster_cases_follow_the_engine_and_the_table_compares_them():
    """``--cluster local --workers 1 2``: per size the engine then 1 and 2 workers; the table
    gives each against the engine, the worker's peak memory between sizes, and the overhead."""
    args = _args("--cluster", "local", "--sizes", "64x64", "64x512", "--skip-bare")
    assert args.workers == [1, 2] and args.cores >= 1
    assert predict.plan_cases(args) == [
        ("engine", (64, 64)),
        ("cluster 1", (64, 64)),
        ("cluster 2", (64, 64)),
        ("engine", (64, 512)),
        ("cluster 1", (64, 512)),
        ("cluster 2", (64, 512)),
    ]

    def row(case, shape, seconds, peak, **result):
        return {
            "case": case,
            "shape": shape,
            "seconds": seconds,
            "px_per_s": 1000 / seconds,
            "peak": peak,
            "error": None,
            "result": result or None,
        }

    extra = {"overhead_per_block": 0.05, "blocks": 4, "startup": 3.0, "head_start": 7.5}
    rows = [
        row("engine", "64x64", 10.0, 100, cpu=19.0),
        row("cluster 1", "64x64", 11.0, 500, worker_cpu=18.5, **extra),
        row("engine", "64x512", 60.0, 100),
        row("cluster 1", "64x512", 80.0, 550, **extra),
    ]
    lines = predict._cluster_lines(rows)
    assert lines[0].startswith("- 64x64: cluster 1 worker(s) = 0.91 x single-process engine")
    assert "(11.0 s against 10.0 s; within 15%)" in lines[0]
    assert "overhead 0.050 s per block (4 blocks" in lines[0]
    assert "workers' CPU 18.5 s against the engine's 19.0 s" in lines[0]
    assert "head start 7.5 s" in lines[0]
    assert "(80.0 s against 60.0 s; outside 15%)" in lines[1]
    # without --sizes, a cluster run compares a small image with one 16x larger
    assert predict.bench_sizes(_args("--cluster", "local")) == [(512, 512), (2048, 2048)]
    assert lines[-1] == "- cluster 1: peak memory per worker 64x512 / 64x64: 1.10 x"


@pytest.mark.slow
def test_cluster_case_runs_on_a_private_head_with_workers_at_the_engines_priority(capsys):
    """A real ``--cluster local`` case: its workers run at nice 0 like the engine (Ray's default
    15 measured the machine's load, not the code), and the table reports the head's start apart,
    the workers' CPU against the engine's, and the ratio to the engine."""
    pytest.importorskip("ray")
    args = _args(
        "--model", "starter", "--sizes", "96x80", "--tile", "32", "--skip-bare",
        "--cluster", "local", "--workers", "1", "--cores", "1", "--block", "2",
    )  # fmt: skip
    rows = predict.run_bench(args)
    capsys.readouterr()
    engine, cluster = rows
    assert cluster["case"] == "cluster 1" and cluster["error"] is None, cluster["error"]
    result = cluster["result"]
    assert result["worker_nice"] == 0 and result["worker_processes"] == 1
    assert result["blocks"] == 4 and result["head_start"] > 0 and result["worker_cpu"] > 0
    assert 0 < result["planned"] and 0 < result["worker_ready"]
    assert cluster["peak"] == result["worker_peak"] > 0
    assert engine["result"]["cpu"] > 0
    table = predict.format_table(rows, args)
    assert "96x80: cluster 1 worker(s) = " in table and "(workers at nice 0)" in table
