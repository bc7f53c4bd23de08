"""Training on a Ray cluster through Ray's Jobs API: submit, watch, stop, resume, fetch.

No Qt here: the ``napari-rat`` cluster commands and the "Train on cluster" dock are front doors
over these functions.

- :mod:`~napari_rat.cluster.local_head`: the embedded default cluster, a Ray head on 127.0.0.1
  started by napari-rat (:mod:`napari_rat.train.ray_head`), kept and recorded by
  ``napari-rat cluster start`` and stopped by its pid.
- :mod:`~napari_rat.cluster.client`: :func:`connect` to the local head or to a remote dashboard
  URL with a token, and :class:`ClusterClient` over ``ray.job_submission.JobSubmissionClient``.
- :mod:`~napari_rat.cluster.submission`: a validated config becomes a job that runs
  ``napari-rat train --backend ray`` on the cluster (and ``submit-predict``'s job, one that runs
  ``napari-rat predict --cluster auto``).
- :mod:`~napari_rat.cluster.predict`: the tiled prediction engine across a Ray cluster, block
  by block (:func:`~napari_rat.cluster.predict.predict_on_cluster`), resumable.
"""

from napari_rat.cluster.client import ClusterClient, ClusterError, JobSummary, connect
from napari_rat.cluster.local_head import local_head_status, start_local_head, stop_local_head

__all__ = [
    "ClusterClient",
    "ClusterError",
    "JobSummary",
    "connect",
    "local_head_status",
    "start_local_head",
    "stop_local_head",
]
