"""The `napari-rat` command line: options spelled in full, nearest-option hints, bad --output."""

import pytest

from napari_rat.cli import main


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
