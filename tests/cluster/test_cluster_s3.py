"""A training job whose data and run storage are ``s3://`` URLs, on a local S3-compatible server
(moto's, on 127.0.0.1) and a real local Ray head: the job reads the training set from S3, Ray
Train keeps its checkpoints there, and ``fetch`` reads the best checkpoint back through fsspec."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

BUCKET = "napari-rat-test"


@pytest.fixture(scope="module")
def s3_head(tmp_path_factory):
    pytest.importorskip("ray")
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    mp = pytest.MonkeyPatch()
    # Set before the head starts, so its job drivers and Ray Train workers inherit them.
    mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        mp.setenv(key, value)
    mp.setenv("NAPARI_RAT_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    from napari_rat.cluster import start_local_head, stop_local_head

    head, _ = start_local_head(num_cpus=3)
    try:
        yield head
    finally:
        stop_local_head()
        mp.undo()
        server.stop()


def test_job_with_data_and_storage_on_s3(s3_head, tmp_path, monkeypatch):
    import s3fs

    from napari_rat.cluster import connect
    from napari_rat.model import load_checkpoint
    from napari_rat.sample_data import nuclei_2d
    from napari_rat.train.training_set import (
        base_config_for_checkpoint,
        export_training_set,
        training_config_for,
        with_training_options,
    )

    monkeypatch.chdir(tmp_path)
    image, labels = nuclei_2d()
    local = export_training_set(
        tmp_path / "set.zarr",
        np.asarray(image)[:96, :128],
        np.asarray(labels)[:96, :128].astype(np.int32),
        axes="yx",
        spacing=(1.0, 1.0),
    )
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    fs.put(str(local), f"{BUCKET}/data/set.zarr", recursive=True)
    config = training_config_for(
        base_config_for_checkpoint("starter"),
        f"s3://{BUCKET}/data/set.zarr",
        spatial_shape=(96, 128),
        run_name="s3run",
    )
    config = with_training_options(
        config,
        epochs=1,
        steps_per_epoch=2,
        num_workers=1,
        zero_stage=0,
        precision="fp32",
        batch_size=2,
    )
    raw = config.model_dump()
    raw["cluster"]["storage_path"] = f"s3://{BUCKET}/ray"
    raw["data"].update(num_samples=4, crop_size=[48, 48])
    config = type(config).model_validate(raw)

    client = connect()
    job = client.submit(config, init_from="starter")
    status = client.wait(job, timeout=480)
    assert status == "SUCCEEDED", client.logs(job)[-3000:]
    assert fs.exists(f"{BUCKET}/ray/s3run/best.safetensors")
    assert fs.glob(f"{BUCKET}/ray/s3run/checkpoint-*")
    fetched = client.fetch(job, tmp_path / "fetched")
    model = load_checkpoint(fetched)
    assert model.checkpoint_info.model_config.spatial_dims == 2
    assert not list(tmp_path.glob("ray*"))  # nothing of the run landed on local disk


def test_submit_predict_reads_the_image_from_s3(s3_head, tmp_path, capsys):
    """The README's worked command for a remote cluster: ``submit-predict s3://... --output
    /shared/...`` (the image read from S3 by the job's workers, the output on a shared folder)
    gives what the single-process ``predict`` gives on a local copy of the image."""
    import s3fs
    import zarr

    from napari_rat.cli import main
    from napari_rat.cluster import connect
    from napari_rat.io import write_image
    from napari_rat.sample_data import nuclei_2d

    image, _ = nuclei_2d()
    src = write_image(tmp_path / "img.zarr", np.asarray(image)[:96, :128], axes="yx")
    fs = s3fs.S3FileSystem()
    fs.mkdirs(f"{BUCKET}/images", exist_ok=True)
    fs.put(str(src), f"{BUCKET}/images/img.zarr", recursive=True)
    common = ["--checkpoint", "starter", "--tile", "64", "--halo", "16"]
    assert main(["predict", str(src), "--output", str(tmp_path / "one.zarr"), *common]) == 0
    out = tmp_path / "shared" / "seg.zarr"
    out.parent.mkdir()
    remote = f"s3://{BUCKET}/images/img.zarr"
    assert main(["submit-predict", remote, "--output", str(out), *common, "--workers", "1"]) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    client = connect()
    status = client.wait(job, timeout=400)
    assert status == "SUCCEEDED", client.logs(job)[-3000:]
    one, done = zarr.open_group(tmp_path / "one.zarr"), zarr.open_group(out)
    np.testing.assert_allclose(done["0"][:], one["0"][:], atol=1e-5, rtol=0)
    labels = done["labels/instances/0"][:]
    np.testing.assert_array_equal(labels, one["labels/instances/0"][:])
    assert labels.max() > 0
