"""Prediction across a real local Ray head (127.0.0.1, token auth, stopped by its pid): the same
result as the single-process engine, a killed worker, a stop and a resume, a missing cluster.

Images are tiny and their sides are not multiples of the tile, so tile cores straddle block
borders (the case where a block must write only inside itself).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest
import torch

from napari_rat.config import ModelConfig
from napari_rat.inference import PredictOptions, predict, run_prediction
from napari_rat.model import build_model
from napari_rat.synthetic import synthetic_nuclei

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The recorded local head (``--cluster local``) in a private state folder."""
    pytest.importorskip("ray")
    from napari_rat.cluster import start_local_head, stop_local_head

    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    head, started = start_local_head(num_cpus=3)
    assert started
    yield head
    assert stop_local_head() is not None
    mp.undo()
    assert not head.alive()


def _case(dims, small):
    """``(model, image, spacing, tile, halo)``: the small model (``small_model_config``) and a
    generated image, 2D or an anisotropic 3D volume."""
    torch.manual_seed(0)
    if dims == 2:
        model = build_model(ModelConfig(**small)).eval()
        img, _ = synthetic_nuclei((72, 60), (0.5, 0.5), seed=3)
        return model, img[None], (0.5, 0.5), (24, 24), (8, 8)
    cfg = {**small, "sga_kernel_size": [1, 3, 3], "stride": [1, 2, 2]}
    model = build_model(ModelConfig(spatial_dims=3, **cfg)).eval()
    img, _ = synthetic_nuclei((10, 36, 30), (2.0, 0.5, 0.5), seed=4)
    return model, img[None], (2.0, 0.5, 0.5), (4, 12, 12), (2, 4, 4)


def _options(model, img, spacing, tile, halo):
    """Options whose threshold gives many instances (random weights: pick it from the data)."""
    probe = run_prediction(
        predict(model, img, spacing, options=PredictOptions(tile=tile, halo=halo, instances=False))
    )
    fg = 1.0 - np.asarray(probe.probabilities[0])
    threshold = float(np.quantile(fg, 0.6))
    return PredictOptions(tile=tile, halo=halo, threshold=threshold, boundary_radius=2)


def _single(model, img, spacing, options, store):
    return run_prediction(predict(model, img, spacing, options=options, store=store))


def _assert_same(a, b):
    np.testing.assert_allclose(
        np.asarray(a.probabilities), np.asarray(b.probabilities), rtol=0, atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(a.semantic), np.asarray(b.semantic))
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    assert a.num_instances == b.num_instances


@pytest.mark.parametrize("dims", [2, 3])
def test_cluster_run_equals_the_single_process_run(head, tmp_path, dims, small_model_config):
    from napari_rat.cluster.predict import _check_address, predict_on_cluster, work_folder

    _check_address(head.address, timeout=5)  # a real head's GCS passes the address check
    model, img, spacing, tile, halo = _case(dims, small_model_config)
    options = _options(model, img, spacing, tile, halo)
    single = _single(model, img, spacing, options, tmp_path / "single.zarr")
    assert single.num_instances > 5
    for block in (1, 2):
        out = tmp_path / f"cluster-{block}.zarr"
        gen = predict_on_cluster(
            model, img, spacing, store=out, options=options, workers=2, block=block
        )
        stages = []
        result = run_prediction(gen, lambda p, stages=stages: stages.append(p))
        _assert_same(result, single)
        assert result.boundary_radius == single.boundary_radius == 2  # as grown
        assert result.store == out and out.is_dir() and not work_folder(out).exists()
        assert result.extra["blocks_computed"] == result.extra["blocks"] > 1
        # blocks came back as they finished, from two worker processes at most at once
        assert [p.done for p in stages if p.stage == "blocks"] == list(
            range(1, result.extra["blocks"] + 1)
        )
        assert len({r.pid for r in result.extra["reports"]}) >= 1


def _worker_pids(head) -> set[int]:
    import psutil

    pids = set()
    for proc in psutil.Process(head.pid).children(recursive=True):
        try:
            if "run_block" in " ".join(proc.cmdline()):
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_a_killed_worker_is_retried_and_the_result_is_the_same(head, tmp_path, small_model_config):
    from napari_rat.cluster.predict import predict_on_cluster

    model, img, spacing, tile, halo = _case(2, small_model_config)
    options = _options(model, img, spacing, tile, halo)
    single = _single(model, img, spacing, options, tmp_path / "single.zarr")
    gen = predict_on_cluster(
        model, img, spacing, store=tmp_path / "c.zarr", options=options, workers=2, block=1
    )
    result, killed = {}, []
    runner = threading.Thread(target=lambda: result.update(r=run_prediction(gen)))
    runner.start()
    deadline = time.monotonic() + 120
    while not killed and runner.is_alive() and time.monotonic() < deadline:
        pids = _worker_pids(head)  # a worker process running a block right now
        if pids:
            pid = min(pids)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.05)
    runner.join(300)
    assert killed, "no block was seen running"
    _assert_same(result["r"], single)
    assert killed[0] not in {r.pid for r in result["r"].extra["reports"]}


def test_stop_then_resume_computes_only_the_missing_blocks(head, tmp_path, small_model_config):
    from napari_rat.cluster.predict import done_blocks, predict_on_cluster, work_folder
    from napari_rat.inference import PredictionCancelled

    model, img, spacing, tile, halo = _case(2, small_model_config)
    options = _options(model, img, spacing, tile, halo)
    single = _single(model, img, spacing, options, tmp_path / "single.zarr")
    out = tmp_path / "c.zarr"
    cancel = threading.Event()
    gen = predict_on_cluster(
        model, img, spacing, store=out, options=options, workers=1, block=1, cancel=cancel
    )
    with pytest.raises(PredictionCancelled):
        for p in gen:
            if p.done == 3:
                cancel.set()
    done = done_blocks(work_folder(out))
    assert 3 <= len(done) < 9 and not out.exists()  # nothing at the destination yet
    with pytest.raises(FileExistsError, match="--resume"):
        next(predict_on_cluster(model, img, spacing, store=out, options=options, block=1))
    result = run_prediction(
        predict_on_cluster(
            model, img, spacing, store=out, options=options, workers=2, block=1, resume=True
        )
    )
    assert result.extra["blocks"] == 9
    assert result.extra["blocks_computed"] == 9 - len(done)
    assert {r.index for r in result.extra["reports"]}.isdisjoint(done)
    _assert_same(result, single)
    # a resume with other settings is refused, naming the fix
    cancel.clear()
    gen = predict_on_cluster(
        model, img, spacing, store=tmp_path / "d.zarr", options=options, block=1, cancel=cancel
    )
    cancel.set()
    with pytest.raises(PredictionCancelled):
        run_prediction(gen)
    with pytest.raises(ValueError, match="other settings"):
        next(
            predict_on_cluster(
                model,
                img,
                spacing,
                store=tmp_path / "d.zarr",
                options=options,
                block=2,
                resume=True,
            )
        )


def test_a_missing_cluster_is_a_clear_error_within_10_s(tmp_path, capsys, small_model_config):
    pytest.importorskip("ray")
    from napari_rat.cluster import ClusterError
    from napari_rat.cluster.predict import predict_on_cluster

    model, img, spacing, tile, halo = _case(2, small_model_config)
    options = PredictOptions(tile=tile, halo=halo)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    silent = socket.socket()  # something listening that is not Ray and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    cases = {
        f"127.0.0.1:{port}": "cannot reach the Ray cluster",
        f"127.0.0.1:{silent.getsockname()[1]}": "did not answer within",
    }
    for address, message in cases.items():
        start = time.monotonic()
        with pytest.raises(ClusterError, match=message):
            next(
                predict_on_cluster(
                    model,
                    img,
                    spacing,
                    store=tmp_path / "o.zarr",
                    options=options,
                    cluster=address,
                )
            )
        assert time.monotonic() - start < 10
    silent.close()
    # the command says it in one line, and leaves nothing behind
    from napari_rat.cli import main
    from napari_rat.io import write_image
    from napari_rat.model import save_checkpoint

    ckpt = save_checkpoint(model, tmp_path / "m.safetensors", ModelConfig(**small_model_config))
    src = write_image(tmp_path / "img.zarr", img[0], axes="yx", scale=spacing)
    before = sorted(tmp_path.iterdir())
    argv = ["predict", str(src), "--checkpoint", str(ckpt), "--output", str(tmp_path / "o.zarr")]
    assert main([*argv, "--cluster", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-rat predict: error: cannot reach the Ray cluster at 127.0.0.1:")
    assert len(err.strip().splitlines()) == 1 and "6379" in err
    assert sorted(tmp_path.iterdir()) == before
    with pytest.raises(ClusterError, match="not a Ray cluster address"):
        next(predict_on_cluster(model, img, spacing, store=tmp_path / "o.zarr", cluster="nowhere"))
    assert not (tmp_path / "o.zarr").exists()


def test_predict_command_on_the_local_head_writes_what_predict_writes(
    head, tmp_path, capsys, small_model_config
):
    """``napari-rat predict --cluster local``: the same OME-Zarr (probabilities, instance labels)
    as the single-process command; no scratch left; cluster options need --cluster."""
    import zarr

    from napari_rat.cli import main
    from napari_rat.io import write_image
    from napari_rat.model import save_checkpoint

    model, img, spacing, tile, halo = _case(2, small_model_config)
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors", ModelConfig(**small_model_config))
    src = write_image(tmp_path / "img.zarr", img[0], axes="yx", scale=spacing)
    common = ["predict", str(src), "--checkpoint", str(ckpt), "--tile", "24", "--halo", "8"]
    assert main([*common, "--output", str(tmp_path / "one.zarr")]) == 0
    cluster = ["--cluster", "local", "--workers", "2", "--block", "1"]
    assert main([*common, "--output", str(tmp_path / "many.zarr"), *cluster]) == 0
    one, many = zarr.open_group(tmp_path / "one.zarr"), zarr.open_group(tmp_path / "many.zarr")
    np.testing.assert_allclose(many["0"][:], one["0"][:], atol=1e-5, rtol=0)
    a, b = one["labels/instances/0"][:], many["labels/instances/0"][:]
    np.testing.assert_array_equal(b, a)
    assert a.max() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img.zarr",
        "m.safetensors",
        "many.zarr",
        "one.zarr",
    ]
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "x.zarr"), "--resume"]) == 2
    assert "--resume only apply with --cluster" in capsys.readouterr().err
    # the same command as a job on the head (submit-predict): it runs `predict --cluster auto`
    from napari_rat.cluster import connect

    job = [*common[1:], "--output", str(tmp_path / "job.zarr"), "--block", "1"]
    assert main(["submit-predict", *job]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    client = connect()
    status = client.wait(job_id, timeout=400)
    assert status == "SUCCEEDED", client.logs(job_id)[-3000:]
    assert head.token not in client.logs(job_id)
    done = zarr.open_group(tmp_path / "job.zarr")
    np.testing.assert_allclose(done["0"][:], one["0"][:], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(done["labels/instances/0"][:], a)
