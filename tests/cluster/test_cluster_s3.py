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
