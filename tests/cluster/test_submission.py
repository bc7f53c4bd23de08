"""What a job carries, checked before anything is sent (no cluster needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from napari_rat import __version__
from napari_rat.cluster.submission import (
    CONFIG_NAME,
    INIT_NAME,
    SubmissionError,
    build_job,
    check_upload_size,
)
from napari_rat.config import load_config
from napari_rat.train.loop import TrainEvent, event_line, parse_event_line
from napari_rat.train.run import JOB_VERSION_ENV, VersionMismatchError, run_training

QUICK = Path(__file__).parents[2] / "configs" / "quick.yaml"


@pytest.fixture
def quick():
    return load_config(QUICK)


def test_local_job_gets_absolute_paths_ray_and_the_config(quick, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = build_job(quick, local_cluster=True, init_from="starter", resume=True, num_workers=2)
    try:
        shipped = load_config(spec.workdir / CONFIG_NAME)
        assert shipped.training.backend == "ray"
        assert shipped.cluster.address is None  # the job trains on its own cluster
        assert shipped.training.output_dir == str(tmp_path / "runs")
        assert shipped.cluster.storage_path == str(tmp_path / "ray_results")
        assert (spec.workdir / INIT_NAME).stat().st_size > 0
        assert spec.entrypoint.endswith(
            f"train --config {CONFIG_NAME} --backend ray --init-from {INIT_NAME} --resume "
            "--num-workers 2"
        )
        assert spec.runtime_env["env_vars"][JOB_VERSION_ENV] == __version__
        assert spec.metadata["run_name"] == "quick"
        assert spec.metadata["storage"] == str(tmp_path / "ray_results" / "quick")
        assert spec.submission_id.startswith("napari-rat-quick-")
        other = build_job(quick, local_cluster=True)
        assert other.submission_id != spec.submission_id
        other.cleanup()
    finally:
        spec.cleanup()
    assert not spec.workdir.exists()


def test_remote_job_refuses_paths_relative_to_this_machine(quick):
    with pytest.raises(SubmissionError, match="training.output_dir 'runs' is relative"):
        build_job(quick, local_cluster=False)
    raw = quick.model_dump()
    raw["training"]["output_dir"] = "/shared/runs"
    raw["cluster"]["storage_path"] = "s3://bucket/ray"
    spec = build_job(type(quick).model_validate(raw), local_cluster=False)
    try:
        assert spec.metadata["storage"] == "s3://bucket/ray/quick"
        assert spec.entrypoint.startswith("python -m napari_rat.cli train")
    finally:
        spec.cleanup()


def test_missing_data_and_bad_checkpoint_are_refused_before_sending(quick, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    raw = quick.model_dump()
    raw["data"].update(source="ome_zarr", paths=[str(tmp_path / "nope.zarr")])
    with pytest.raises(SubmissionError, match="nope.zarr.*does not exist"):
        build_job(type(quick).model_validate(raw), local_cluster=True)
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a checkpoint")
    with pytest.raises(SubmissionError, match="--init-from"):
        build_job(quick, local_cluster=True, init_from=str(bad))
    assert list(scratch.iterdir()) == []  # a refused job leaves no upload folder behind


def test_upload_over_rays_limit_is_refused(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:  # sparse: no real disk use
        fh.truncate(101 * 1024**2)
    with pytest.raises(SubmissionError, match="101 MiB, over Ray's 100 MiB limit"):
        check_upload_size(tmp_path)
    big.unlink()
    (tmp_path / "small").write_bytes(b"x" * 10)
    assert check_upload_size(tmp_path) == 10


def test_event_lines_round_trip_inside_rays_worker_prefix():
    event = TrainEvent("progress", step=3, total_steps=9, epoch=1, metrics={"loss": 0.5})
    line = "\x1b[36m(RayTrainWorker pid=1)\x1b[0m " + event_line(event)
    parsed = parse_event_line(line)
    assert (parsed.kind, parsed.step, parsed.total_steps, parsed.epoch) == ("progress", 3, 9, 1)
    assert parsed.metrics == {"loss": 0.5}
    assert event_line(TrainEvent("note", message="hello")) is None
    assert parse_event_line("step 3/9 loss 0.5") is None
    assert parse_event_line("napari-rat-event {broken") is None


def test_a_job_from_another_version_refuses_to_train(quick, monkeypatch):
    monkeypatch.setenv(JOB_VERSION_ENV, "0.0.0-other")
    with pytest.raises(VersionMismatchError, match="submitted by napari-rat 0.0.0-other"):
        run_training(quick)
    monkeypatch.delenv(JOB_VERSION_ENV)
    assert os.environ.get(JOB_VERSION_ENV) is None


def test_a_taken_run_name_is_refused_unless_resuming(quick, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ray_results" / "quick" / "checkpoint-step-00000002").mkdir(parents=True)
    with pytest.raises(SubmissionError, match="'quick' already has checkpoints.*Resume"):
        build_job(quick, local_cluster=True)
    spec = build_job(quick, local_cluster=True, resume=True)
    spec.cleanup()
    assert "--resume" in spec.entrypoint


def test_a_predict_job_runs_predict_on_its_own_cluster_with_the_same_package(tmp_path):
    """submit-predict's job: `predict --cluster auto` with the forwarded options, the version
    pinned, the checkpoint uploaded; paths relative to this machine refused for a remote
    cluster; no token anywhere."""
    import shlex

    from napari_rat import __version__
    from napari_rat.cli import build_parser
    from napari_rat.cluster.submission import SubmissionError, build_predict_job
    from napari_rat.commands.submit_predict import predict_arguments
    from napari_rat.train.run import JOB_VERSION_ENV

    parser = build_parser()
    argv = ["submit-predict", "s3://bucket/img.zarr", "--output", "/shared/out.zarr"]
    argv += ["--tile", "128", "--region", "y=0:512", "x=0:256", "--resample", "--workers", "8"]
    args = parser.parse_args(argv)
    forwarded = predict_arguments(args.parser, args)
    assert forwarded == [
        "--region",
        "y=0:512",
        "x=0:256",
        "--tile",
        "128",
        "--resample",
        "--workers",
        "8",
    ]
    spec = build_predict_job(
        "s3://bucket/img.zarr", "/shared/out.zarr", local_cluster=False, predict_args=forwarded
    )
    try:
        words = shlex.split(spec.entrypoint)
        assert words[:5] == ["python", "-m", "napari_rat.cli", "predict", "s3://bucket/img.zarr"]
        assert words[5:] == [
            "--output",
            "/shared/out.zarr",
            "--checkpoint",
            "starter",
            "--cluster",
            "auto",
            *forwarded,
        ]
        assert spec.runtime_env["env_vars"][JOB_VERSION_ENV] == __version__
        assert spec.metadata["kind"] == "predict" and spec.metadata["output"] == "/shared/out.zarr"
        assert "TOKEN" not in repr(spec.runtime_env).upper()
    finally:
        spec.cleanup()
    with pytest.raises(SubmissionError, match="relative to this machine"):
        build_predict_job("img.zarr", "/shared/out.zarr", local_cluster=False)
    with pytest.raises(SubmissionError, match="does not exist"):
        build_predict_job(str(tmp_path / "none.zarr"), str(tmp_path / "o"), local_cluster=True)
