#!/usr/bin/env bash
# The main job: napari with the plugin and sample data, or without a screen
# (`bash scripts/demo.sh --headless`) the same pipeline, writing its results to ./demo-out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/napari-rat demo "$@"
