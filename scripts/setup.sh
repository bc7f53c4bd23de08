#!/usr/bin/env bash
# Set up everything napari-rat needs on a fresh Debian/Ubuntu machine, idempotently:
# the X server and OpenGL libraries the GUI tests need (when run as root), a virtual environment
# in .venv, and the project installed editable with its [dev] extra. Re-running skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libgl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
  libxkbcommon0 x11-utils
  g++  # DeepSpeed compiles its CPU Adam (ZeRO-3 CPU offload) on first use
)

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "setup: installing ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "setup: please install (as root): apt-get install ${missing[*]}" >&2
    fi
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.napari-rat-installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing napari-rat[dev] (torch, napari, ray, deepspeed; a few minutes)"
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import napari_rat, torch, napari, ray, deepspeed" 
  rm -f .venv/.napari-rat-installed-*
  touch "$stamp"
fi
