#!/usr/bin/env bash
# What a user and a cluster get: build the sdist and the wheel, check that a wheel built from the
# sdist equals one built from the checkout, install the wheel (not editable) into a fresh venv with
# only the core dependencies, and run there `napari-rat --help`, a real `convert` + `predict` with
# the bundled model, and the core tests (no Qt, no napari, no Ray). Then add the napari extra and
# validate the npe2 manifest from the installed wheel. CI runs this after the test suite.
#
# Usage: bash scripts/check_wheel.sh [WORKDIR]   (default: a new temporary folder, removed after)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
bash scripts/setup.sh

work=${1:-$(mktemp -d)}
[ $# -ge 1 ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
step() { echo "check_wheel: $*"; }

step "building the sdist, then the wheel from it"
rm -rf "$work/dist" "$work/direct"
.venv/bin/python -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log"; exit 1; }
step "building the wheel from the checkout"
.venv/bin/python -m pip wheel --no-deps --quiet --wheel-dir "$work/direct" . 2>&1 |
  grep -v "^WARNING: Location" || true
whl=$(ls "$work"/dist/napari_rat-*.whl)
rm -rf "$work/a" "$work/b" && mkdir -p "$work/a" "$work/b"
(cd "$work/a" && python3 -m zipfile -e "$whl" .)
(cd "$work/b" && python3 -m zipfile -e "$(ls "$work"/direct/napari_rat-*.whl)" .)
diff -r "$work/a" "$work/b" >/dev/null || {
  echo "check_wheel: the wheel built from the sdist differs from the checkout's:" >&2
  diff -r "$work/a" "$work/b" | head -20 >&2; exit 1; }
n_manifest=$(python3 -m zipfile -l "$whl" | grep -c "napari_rat/napari.yaml" || true)
[ "$n_manifest" = 1 ] || { echo "check_wheel: $n_manifest manifests in the wheel" >&2; exit 1; }
cmp -s "$work/a/napari_rat/napari.yaml" napari.yaml || {
  echo "check_wheel: the wheel's napari.yaml is not the top-level manifest" >&2; exit 1; }
size_kb=$(( $(stat -c %s "$whl") / 1024 ))
step "wheel $(basename "$whl"): ${size_kb} KiB"

step "installing the wheel into a fresh venv (core dependencies only)"
rm -rf "$work/venv"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet "$whl" 2>&1 | grep -v "^WARNING: Location" || true
found=$("$py" -c "
import importlib.util as u, napari_rat
print(napari_rat.__file__)
print(sorted(m for m in ('napari', 'magicgui', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'ray',
                           'deepspeed')
             if u.find_spec(m)))")
echo "$found"
case "$found" in "$repo"/*) echo "check_wheel: napari_rat imported from the checkout" >&2; exit 1;; esac
echo "$found" | tail -1 | grep -qx "\[\]" || {
  echo "check_wheel: the core install pulled in GUI or cluster packages" >&2; exit 1; }

step "napari-rat --help, convert and predict with the bundled model"
cd "$work"
"$work/venv/bin/napari-rat" --help >/dev/null
"$py" - <<'EOF'
from importlib.resources import files

import numpy as np
import tifffile

image = tifffile.imread(files("napari_rat.sample_data").joinpath("img2d.tif"))
np.save("nuclei.npy", image[:192, :192])
EOF
"$work/venv/bin/napari-rat" convert nuclei.npy nuclei.zarr --spacing 1 1 --units micrometer \
  --levels 2 --quiet
"$work/venv/bin/napari-rat" predict nuclei.zarr --output pred.zarr | tee predict.log
grep -Eq "\(([1-9][0-9]*) instances\)" predict.log || {
  echo "check_wheel: predict found no instances on the nuclei crop" >&2; exit 1; }
"$py" -c "from napari_rat.io import open_pyramid; print(open_pyramid('pred.zarr'))" >/dev/null
cd "$repo"

step "core tests against the installed wheel"
"$py" -m pip install --quiet pytest pytest-timeout "ome-zarr>=0.10" "scikit-image>=0.22" \
  "resolution-aware-transformer==2025.9.29.2036" 2>&1 | grep -v "^WARNING: Location" || true
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$py" -m pytest -q -m "not gui and not slow" \
  -p no:cacheprovider tests/test_package.py tests/config tests/model tests/io tests/inference

step "npe2 validate from the installed wheel, with the napari extra"
"$py" -m pip install --quiet "$whl[napari]" 2>&1 | grep -v "^WARNING: Location" || true
"$work/venv/bin/npe2" validate napari-rat
step "ok"
