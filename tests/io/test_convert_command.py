"""``napari-rat convert``: exit codes, messages and the written image."""

from __future__ import annotations

import numpy as np
import ome_zarr_models
import pytest
from ome_zarr_helpers import volume

from napari_rat.cli import main
from napari_rat.io import open_pyramid


def test_convert_npy(tmp_path, capsys):
    np.save(tmp_path / "in.npy", volume((6, 40, 40)))
    out = tmp_path / "out.zarr"
    args = ["convert", str(tmp_path / "in.npy"), str(out), "--spacing", "2", "0.5", "0.5"]
    code = main([*args, "--ngff", "0.4", "--levels", "2", "--chunks", "4", "16", "16"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "convert: level 2/2 100.0%" in captured.err
    ome_zarr_models.open_ome_zarr(out)
    pyramid = open_pyramid(out)
    assert pyramid.ngff_version == "0.4"
    assert [lv.scale for lv in pyramid.levels] == [(2.0, 0.5, 0.5), (2.0, 1.0, 1.0)]
    assert pyramid.levels[0].chunks == (4, 16, 16)


def test_convert_user_errors_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "in.npy", volume((6, 40, 40)))
    assert main(["convert", str(tmp_path / "missing.tif"), str(tmp_path / "o.zarr")]) == 2
    assert main(["convert", str(tmp_path / "in.npy"), str(tmp_path / "o.zarr"), "--spacing", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith("napari-rat convert: error:") and "missing.tif" in err[0]
    assert "3 spatial axes" in err[1]
    assert not (tmp_path / "o.zarr").exists()


def test_convert_units_are_checked_before_anything_is_written(tmp_path, capsys):
    """An invalid unit was written into the image and only refused by a later `predict`."""
    np.save(tmp_path / "in.npy", volume((6, 40, 40)))
    out = tmp_path / "out.zarr"
    for unit, hint in [("furlong", "use one of"), ("micrometr", "did you mean 'micrometer'?")]:
        with pytest.raises(SystemExit) as info:
            main(["convert", str(tmp_path / "in.npy"), str(out), "--units", unit])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"napari-rat convert: error: argument --units: {unit!r} is not an OME-NGFF" in err
        assert hint in err and "micrometer" in err and not out.exists()
    # A symbol is written as its OME-NGFF name, valid for ome-zarr-models and for predict.
    assert main(["convert", str(tmp_path / "in.npy"), str(out), "--units", "nm", "--quiet"]) == 0
    ome_zarr_models.open_ome_zarr(out)
    assert open_pyramid(out).units == ("nanometer",) * 3
