"""What a napari-rat job submitted to a Ray cluster finds in its environment.

:mod:`napari_rat.cluster.submission` puts these variables into every job's ``runtime_env``;
the job's entrypoint (``python -m napari_rat.cli ...``) reads them.
"""

from __future__ import annotations

import os

#: Set in a submitted job's environment to the submitting client's napari-rat version;
#: training refuses to run under another version (:func:`napari_rat.train.run.check_job_version`).
JOB_VERSION_ENV = "NAPARI_RAT_JOB_VERSION"


def in_submitted_job() -> bool:
    """Whether this process is a job's entrypoint submitted by napari-rat."""
    return bool(os.environ.get(JOB_VERSION_ENV))
