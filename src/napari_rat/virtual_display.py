"""A private X display (Xvfb) for the front doors that open a napari window without a screen.

``napari-rat demo --headless`` takes its screenshot on it, and the GUI benchmarks run their
viewer on it. Only a subprocess: no Qt here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

#: Size of the virtual screen: room for the demo's screenshot window
#: (:data:`napari_rat._widgets.demo_viewer.SCREENSHOT_WINDOW`).
VIRTUAL_SCREEN = (1920, 1200)


@contextlib.contextmanager
def virtual_display():
    """A private Xvfb display when there is no ``DISPLAY``; yields whether one is available."""
    if os.environ.get("DISPLAY"):
        yield True
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        yield False
        return
    for number in range(99, 140):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            break
    proc = subprocess.Popen(
        [
            xvfb,
            f":{number}",
            "-screen",
            "0",
            "{}x{}x24".format(*VIRTUAL_SCREEN),
            "-nolisten",
            "tcp",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                break
            time.sleep(0.05)
        os.environ["DISPLAY"] = f":{number}"
        yield True
    finally:
        os.environ.pop("DISPLAY", None)
        proc.terminate()
        proc.wait(10)
