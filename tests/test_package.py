"""Package-level promises: layer hygiene, the napari manifest, the CLI."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
HEAVY = {"qtpy", "napari", "ray", "deepspeed", "PyQt5", "PySide6", "PySide2", "PyQt6"}


@pytest.mark.parametrize(
    "modules",
    ["napari_rat.model, napari_rat.config", "napari_rat.io", "napari_rat.inference"],
)
def test_core_layers_import_no_gui_or_cluster_packages(modules):
    code = (
        f"import sys, {modules}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_manifest_is_linked_from_the_package():
    link = ROOT / "src" / "napari_rat" / "napari.yaml"
    assert link.resolve() == (ROOT / "napari.yaml").resolve()
    from importlib.resources import files

    assert (
        files("napari_rat").joinpath("napari.yaml").read_text()
        == (ROOT / "napari.yaml").read_text()
    )


MANIFEST_NAMES = [
    c["python_name"]
    for c in yaml.safe_load((ROOT / "napari.yaml").read_text())["contributions"]["commands"]
]


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_every_python_name_in_the_manifest_imports(name):
    module, _, attr = name.partition(":")
    if module.startswith("napari_rat._widgets"):
        # Dock widgets need napari and Qt; the headless install has neither.
        pytest.importorskip("napari")
    assert hasattr(importlib.import_module(module), attr), name


def test_npe2_validates_the_manifest():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_distribution("napari-rat")
    assert pm.name == "napari-rat"


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "napari_rat.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "config" in out.stdout and "bench" in out.stdout
