"""The `napari-rat` command line: options spelled in full, nearest-option hints, bad --output."""

import numpy as np
import pytest

from napari_rat.cli import main


def _refused(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_option_prefixes_are_refused_with_the_full_name(tmp_path, capsys):
    """`--unit` was taken as `--units`, `--out` as `--output`: a prefix is now an error."""
    np.save(tmp_path / "in.npy", np.zeros((8, 8), dtype=np.uint8))
    out = tmp_path / "out.zarr"
    err = _refused(capsys, ["convert", str(tmp_path / "in.npy"), str(out), "--unit", "nm"])
    assert (
        "napari-rat convert: error: unrecognized arguments: --unit (did you mean '--units'?)" in err
    )
    assert not out.exists()
    err = _refused(capsys, ["predict", "in.zarr", "--out", str(out)])
    assert "napari-rat predict: error:" in err and "--out (did you mean '--output'?)" in err
    err = _refused(capsys, ["demo", "--headles", "--output", str(tmp_path / "demo")])
    assert "--headles (did you mean '--headless'?)" in err
    assert not (tmp_path / "demo").exists()


def test_misspelled_options_name_the_nearest_one(tmp_path, capsys):
    err = _refused(capsys, ["predict", "in.zarr", "--output", "o.zarr", "--tiles", "64"])
    assert "unrecognized arguments: --tiles (did you mean '--tile'?) 64" in err
    err = _refused(capsys, ["predict", "in.zarr", "--output", "o.zarr", "--min_size=5"])
    assert "--min_size=5 (did you mean '--min-size'?)" in err
    err = _refused(capsys, ["--verison"])
    assert "napari-rat: error: unrecognized arguments: --verison (did you mean '--version'?)" in err
    err = _refused(capsys, ["config", "check", "a.yaml", "--strict"])
    assert "napari-rat config check: error: unrecognized arguments: --strict" in err
    assert "did you mean" not in err  # nothing close: no guess


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_demo_output_that_is_a_file_is_one_line(tmp_path, capsys, where):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    output = notes if where == "file" else notes / "demo-out"
    assert main(["demo", "--headless", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-rat demo: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and str(notes) in err and "--output" in err
    assert notes.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [notes]
