"""Shared test configuration: tiny torch threads so tests share 2 cores well."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
