#!/usr/bin/env bash
# Run the whole test suite (GUI tests on a virtual X server started by pytest-xvfb), after
# import-linter's contracts (pyproject.toml: the layers, and Qt only in the docks).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not gui"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PYTHONPATH="$PWD/src" .venv/bin/lint-imports  # this checkout's sources, whatever the venv has installed
exec .venv/bin/python -m pytest "$@"
