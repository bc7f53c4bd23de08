"""``napari-rat bench interactive``: the scripted strokes and clicks, the parser, the table."""

import numpy as np
from scipy import ndimage

from napari_rat.bench import interactive
from napari_rat.cli import build_parser
from napari_rat.synthetic import synthetic_nuclei


def test_the_kind_is_registered_with_its_options():
    args = build_parser().parse_args(["bench", "interactive", "--quick", "--strokes", "5"])
    assert args.func is interactive._main and args.quick and args.strokes == 5
    assert args.strokes_3d == 10 and args.cache_dir is None


def test_only_selects_the_cases_and_gui_alone_runs_none_of_them():
    parse = build_parser().parse_args
    assert len(interactive.selected_cases(parse(["bench", "interactive"]))) == 6
    names = [
        c[0]
        for c in interactive.selected_cases(parse(["bench", "interactive", "--only", "2d", "gui"]))
    ]
    assert len(names) == 3 and all(n.startswith("2D") for n in names)
    assert interactive.selected_cases(parse(["bench", "interactive", "--only", "gui"])) == []
    assert not parse(["bench", "interactive"]).gui


def test_scripted_strokes_stay_inside_objects_or_far_from_them():
    _, truth = synthetic_nuclei((128, 128), (1.0, 1.0), radius=5.0, seed=2)
    scribbles = np.zeros(truth.shape, np.uint8)
    strokes = list(interactive.scripted_strokes(truth, 10, columns=(0, 96)))
    assert [v for v, _ in strokes] == [1, 2] * 5
    for value, index in strokes:
        scribbles[index] = value
    inside = np.zeros(truth.shape, bool)
    for i in np.unique(truth)[1:]:
        inside |= ndimage.binary_erosion(truth == i, iterations=2)
    assert inside[scribbles == 2].all()  # never an object's edge: its middle
    assert (ndimage.distance_transform_edt(truth == 0)[scribbles == 1] > 4).all()
    assert not scribbles[:, 96:].any()  # the held-out columns are left alone
    # object strokes are lines through distinct objects, not the masks
    ids = {int(truth[i][0]) for v, i in strokes if v == 2}
    assert len(ids) == 5
    assert all(len(np.unique(i[0])) == 1 for v, i in strokes if v == 2)


def test_format_table_reports_times_cache_and_quality():
    rows = [
        {"name": "2D features, first process", "seconds": 12.0, "error": None,
         "result": {"from_cache": False, "shape": [96, 64, 64]}},
        {"name": "2D features, second process", "seconds": 0.4, "error": None,
         "result": {"from_cache": True, "shape": [96, 64, 64]}},
        {"name": "2D scribbles", "seconds": 3.0, "error": None,
         "result": {"times": [0.1] * 19 + [0.9], "from_cache": True}},
        {"name": "3D features", "seconds": None, "error": "Traceback\nMemoryError: x",
         "result": None},
        {"name": "quality", "seconds": 9.0, "error": None,
         "result": {"forest": [0.9, 0.91], "mlp": [0.8, 0.82], "auto_ap50": 0.75,
                    "clicks_ap50": 0.79, "clicks": 20}},
    ]  # fmt: skip
    table = interactive.format_table(rows)
    assert (
        "| 2D features, second process | 0.4 s | features [96, 64, 64], from the cache: True |"
        in table
    )
    assert "p95 0.14 s" in table and "max 0.90 s" in table
    assert "| 3D features | failed | MemoryError: x |" in table
    assert "random forest: 0.900 0.910" in table and "torch MLP:     0.800 0.820" in table
    assert "automatic 0.750, after 20 clicks 0.790" in table
