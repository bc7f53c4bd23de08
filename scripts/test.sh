#!/usr/bin/env bash
# Run the whole test suite (GUI tests on a virtual X server started by pytest-xvfb).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not gui"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest "$@"
