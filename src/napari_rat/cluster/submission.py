"""A validated :class:`~napari_rat.config.ExperimentConfig` as a Ray job: what is uploaded, the
entrypoint, the runtime environment and the metadata, all checked before anything is sent.
:func:`build_predict_job` lays out a ``napari-rat predict --cluster auto`` job the same way.

The job runs ``napari-rat train --config config.yaml --backend ray`` on the cluster (as
``python -m napari_rat.cli``: the local head's job gets this very interpreter) with the same
package: the job's ``runtime_env`` carries the client's napari-rat version, and the job's
``napari-rat train`` refuses to start under any other version (installing the package on the
cluster is the cluster's business until napari-rat is on PyPI). The config travels in the job's
working folder (with the ``--init-from`` checkpoint when it is a local file); data travel by path
or URL that the cluster can read. Paths relative to this machine mean nothing to a remote cluster
and are refused; for the local head they are made absolute. No token ever goes into the
entrypoint, the runtime environment or the metadata.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from napari_rat import __version__
from napari_rat.config import ExperimentConfig, save_config
from napari_rat.job_environment import JOB_VERSION_ENV
from napari_rat.pretrained import STARTERS

#: Ray's limit on a job's uploaded working folder.
UPLOAD_LIMIT_BYTES = 100 * 1024**2
CONFIG_NAME = "config.yaml"
INIT_NAME = "init.safetensors"


class SubmissionError(ValueError):
    """The config or a file cannot be sent as a job; the message says what to change."""


@dataclass
class JobSpec:
    """Everything ``JobSubmissionClient.submit_job`` gets, plus the folder to remove after."""

    submission_id: str
    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    workdir: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _is_url(path: str) -> bool:
    return "://" in path


def _placed(config: ExperimentConfig, *, local_cluster: bool) -> ExperimentConfig:
    """The config as the job sees it: Ray, the job's own cluster, paths usable there."""
    raw = config.model_dump(mode="json")
    raw["training"]["backend"] = "ray"
    raw["cluster"]["address"] = None  # inside the job, Ray Train runs on the job's own cluster
    data = raw["data"]
    for key in ("paths", "label_paths"):
        data[key] = [_place_path(f"data.{key}", path, local_cluster) for path in data[key]]
    raw["training"]["output_dir"] = _place_path(
        "training.output_dir", raw["training"]["output_dir"], local_cluster
    )
    raw["cluster"]["storage_path"] = _place_path(
        "cluster.storage_path", raw["cluster"]["storage_path"], local_cluster
    )
    return type(config).model_validate(raw)


def _place_path(name: str, path: str, local_cluster: bool) -> str:
    if _is_url(path):
        return path
    p = Path(path).expanduser()
    if local_cluster:
        return str(p.resolve())
    if not p.is_absolute():
        raise SubmissionError(
            f"{name} {path!r} is relative to this machine; a remote cluster cannot see it. Give "
            "an absolute path on storage the cluster reads (a shared folder) or an s3:// URL"
        )
    return str(p)


def check_upload_size(folder: Path, limit: int = UPLOAD_LIMIT_BYTES) -> int:
    """The size of a job's working folder; :class:`SubmissionError` when Ray would refuse it."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if size > limit:
        raise SubmissionError(
            f"the job's upload is {size / 1024**2:.0f} MiB, over Ray's {limit / 1024**2:.0f} MiB "
            "limit; put the --init-from checkpoint on storage the cluster reads (a shared folder "
            "or s3://) and pass that path"
        )
    return size


def build_job(
    config: ExperimentConfig,
    *,
    local_cluster: bool,
    init_from: str | None = None,
    resume: bool = False,
    num_workers: int | None = None,
    num_gpus: float | None = None,
) -> JobSpec:
    """Check ``config`` and the files it names and lay out the job (nothing is sent).

    Raises
    ------
    SubmissionError
        A path the cluster cannot use, a missing local data file, or an upload over Ray's
        100 MiB limit.
    """
    placed = _placed(config, local_cluster=local_cluster)
    if local_cluster:
        for path in [*placed.data.paths, *placed.data.label_paths]:
            if not _is_url(path) and not Path(path).exists():
                raise SubmissionError(
                    f"data file {path!r} does not exist; fix data.paths / data.label_paths"
                )
    if not resume:
        _refuse_taken_run(placed)
    if num_workers is not None and num_workers < 1:
        raise SubmissionError(f"the number of workers must be at least 1, got {num_workers}")
    run = placed.training.run_name
    workdir = Path(tempfile.mkdtemp(prefix="napari-rat-job-"))
    try:
        save_config(placed, workdir / CONFIG_NAME)
        # The local head runs this very environment; a remote cluster's `python` is its own.
        python = shlex.quote(sys.executable) if local_cluster else "python"
        args = [python, "-m", "napari_rat.cli", "train", "--config", CONFIG_NAME]
        args += ["--backend", "ray"]
        if init_from is not None:
            args += ["--init-from", _ship_checkpoint(init_from, workdir)]
        if resume:
            args.append("--resume")
        if num_workers is not None:
            args += ["--num-workers", str(int(num_workers))]
        if num_gpus is not None:
            args += ["--num-gpus", str(float(num_gpus))]
        check_upload_size(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    from napari_rat.train.ray_backend import run_storage

    return JobSpec(
        submission_id=f"napari-rat-{run}-{secrets.token_hex(4)}",
        entrypoint=" ".join(args),
        runtime_env={
            "working_dir": str(workdir),
            "env_vars": {JOB_VERSION_ENV: __version__, "PYTHONUNBUFFERED": "1"},
        },
        metadata={
            "napari_rat_version": __version__,
            "run_name": run,
            "storage": run_storage(placed),
            "resume": "yes" if resume else "no",
        },
        workdir=workdir,
    )


def build_predict_job(
    image: str,
    output: str,
    *,
    local_cluster: bool,
    checkpoint: str = "starter",
    predict_args: list[str] | None = None,
) -> JobSpec:
    """Lay out ``napari-rat predict IMAGE --output OUTPUT --cluster auto PREDICT_ARGS`` as a job
    (nothing is sent): the same package pinned as a training job's, the checkpoint shipped in
    the upload (bundled starters' names and URLs are passed on), ``image`` and ``output``
    placed as the cluster sees them (a URL, or an absolute path on storage the cluster shares).

    Raises
    ------
    SubmissionError
        A relative path for a remote cluster, a missing local image, an unreadable checkpoint,
        or an upload over Ray's 100 MiB limit.
    """
    image = _place_path("the image", image, local_cluster)
    output = _place_path("--output", output, local_cluster)
    if local_cluster and not _is_url(image) and not Path(image).exists():
        raise SubmissionError(f"the image {image!r} does not exist; give an OME-Zarr path or URL")
    workdir = Path(tempfile.mkdtemp(prefix="napari-rat-job-"))
    try:
        python = shlex.quote(sys.executable) if local_cluster else "python"
        model = checkpoint if checkpoint in STARTERS else _ship_checkpoint(checkpoint, workdir)
        args = [python, "-m", "napari_rat.cli", "predict", image, "--output", output]
        args += ["--checkpoint", model, "--cluster", "auto", *(predict_args or [])]
        check_upload_size(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    name = Path(output).name
    return JobSpec(
        submission_id=f"napari-rat-predict-{Path(name).stem}-{secrets.token_hex(4)}",
        entrypoint=" ".join(shlex.quote(a) if i else a for i, a in enumerate(args)),
        runtime_env={
            "working_dir": str(workdir),
            "env_vars": {JOB_VERSION_ENV: __version__, "PYTHONUNBUFFERED": "1"},
        },
        metadata={
            "napari_rat_version": __version__,
            "run_name": name,
            "kind": "predict",
            "output": output,
            "resume": "yes" if "--resume" in (predict_args or []) else "no",
        },
        workdir=workdir,
    )


def _refuse_taken_run(config: ExperimentConfig) -> None:
    """A run name whose storage already holds checkpoints is refused here, before a job is
    sent that would fail on it, when this machine can read the storage."""
    from napari_rat.train.ray_backend import run_storage, saved_run_entries

    try:
        saved = saved_run_entries(config)
    except Exception:  # noqa: BLE001 - storage only the cluster reads: the job will say
        return
    if saved:
        raise SubmissionError(
            f"the run {config.training.run_name!r} already has checkpoints in "
            f"{run_storage(config)}; resume it (Resume, or submit --resume) or choose another "
            "run name"
        )


def _ship_checkpoint(init_from: str, workdir: Path) -> str:
    """A local checkpoint (or ``starter``) is copied into the upload; a URL is passed on."""
    if _is_url(init_from):
        return init_from
    from napari_rat.inference.model_loading import checkpoint_path
    from napari_rat.model import CheckpointError, read_checkpoint_info

    try:
        path = checkpoint_path(init_from)
        read_checkpoint_info(path)
    except (FileNotFoundError, CheckpointError) as exc:
        raise SubmissionError(f"--init-from {init_from}: {exc}") from None
    shutil.copyfile(path, workdir / INIT_NAME)
    return INIT_NAME
