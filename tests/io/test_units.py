"""Length units: the image's spacing reaches the model in the checkpoint's unit."""

import numpy as np
import pytest

from napari_rat.inference import PredictOptions, predict, run_prediction
from napari_rat.io.units import (
    NGFF_SPACE_UNITS,
    meters,
    ngff_space_unit,
    ngff_unit,
    to_model_units,
)


def test_unit_names_and_factors():
    assert meters("micrometer") == meters("um") == meters("µm") == pytest.approx(1e-6)
    assert meters("nanometer") == pytest.approx(1e-9) and meters("angstrom") == 1e-10
    assert meters(None) is None and meters("pixel") is None
    assert to_model_units(["nanometer", "micrometer"], "micrometer", 2) == pytest.approx(
        (1e-3, 1.0)
    )
    assert to_model_units("millimeter", "micrometer", 3) == pytest.approx((1e3,) * 3)
    assert to_model_units(None, "micrometer", 2) == (1.0, 1.0)  # no unit: the model's
    with pytest.raises(ValueError, match="unknown length unit 'furlong'"):
        to_model_units("furlong", "micrometer", 2)


def test_symbols_become_ngff_names_and_the_converter_uses_them():
    from napari_rat.io.convert import _ome_physical

    assert ngff_unit("µm") == ngff_unit("micron") == ngff_unit("Micrometer") == "micrometer"
    assert ngff_unit("Å") == "angstrom" and ngff_unit("nm") == "nanometer"
    assert ngff_unit("pixel") is None and ngff_unit("furlong") is None
    xml = (
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels '
        'PhysicalSizeX="0.25" PhysicalSizeXUnit="µm" PhysicalSizeY="0.25" '
        'PhysicalSizeZ="500" PhysicalSizeZUnit="nm"/></Image></OME>'
    )
    sizes, unit, _ = _ome_physical(xml)
    assert unit == "micrometer" and sizes == pytest.approx({"x": 0.25, "y": 0.25, "z": 0.5})


def test_user_units_are_checked_against_ngffs_list():
    from ome_zarr.axes import KNOWN_SPATIAL_UNITS  # ome-zarr-py's copy of the spec's list

    assert set(KNOWN_SPATIAL_UNITS) == NGFF_SPACE_UNITS
    assert ngff_space_unit("µm") == ngff_space_unit("um") == "micrometer"
    assert ngff_space_unit("parsec") == "parsec" and ngff_space_unit("Å") == "angstrom"
    with pytest.raises(ValueError, match="'furlong' is not an OME-NGFF length unit; use one of"):
        ngff_space_unit("furlong")
    with pytest.raises(ValueError, match="did you mean 'micrometer'"):
        ngff_space_unit("micrometr")
    for outside_ngff in ("decameter", "micrometres", "pixel", ""):
        with pytest.raises(ValueError, match="not an OME-NGFF length unit"):
            ngff_space_unit(outside_ngff)


@pytest.mark.parametrize("resample", [False, True])
def test_the_same_image_in_nanometres_gives_the_same_result(resample):
    """The starter model (trained in micrometres) on one image given in um and in nm: the same
    probabilities and the same instances (minimum size included), placed in the image's unit."""
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.sample_data import nuclei_2d

    model = load_model_for_inference("starter")
    img = nuclei_2d()[0][:96, 300:396].astype(np.float32)[None]
    options = PredictOptions(tile=(48, 48), halo=(16, 16), resample_to_training_spacing=resample)
    um = run_prediction(predict(model, img, (1.25, 1.25), options=options, units="micrometer"))
    nm = run_prediction(
        predict(model, img, (1250.0, 1250.0), (0.0, 0.0), options=options, units="nanometer")
    )
    np.testing.assert_allclose(nm.probabilities, um.probabilities, atol=1e-5)
    np.testing.assert_array_equal(nm.labels, um.labels)
    assert nm.num_instances == um.num_instances > 3
    assert nm.spacing == (1250.0, 1250.0)
    # Without its unit the same numbers mean 1250 um pixels: a different result, or, when
    # resampling to the training spacing, a refusal naming the units (not 40 GB tiles).
    if resample:
        with pytest.raises(ValueError, match="check the image's units"):
            run_prediction(predict(model, img, (1250.0, 1250.0), options=options))
    else:
        lost = run_prediction(predict(model, img, (1250.0, 1250.0), options=options))
        assert not np.array_equal(lost.labels, um.labels)
    with pytest.raises(ValueError, match="unknown length unit"):
        run_prediction(predict(model, img, (1.0, 1.0), options=options, units="furlong"))
