import numpy as np
import pytest

from napari_rat.train.robustness_report import PLOT_DPI, PLOT_SIZE_INCHES, write_report

#: matplotlib's default colours of the first and third lines: model Dice, Otsu Dice.
MODEL_DICE_RGB = (0x1F, 0x77, 0xB4)
OTSU_DICE_RGB = (0x2C, 0xA0, 0x2C)


def _rows(baseline: bool) -> list[dict[str, float]]:
    rows = []
    for factor, dice in ((0.5, 0.9), (1.0, 0.88), (2.0, 0.8), (4.0, 0.6)):
        row = {"factor": factor, "model_dice": dice, "model_iou": dice - 0.1, "model_ap50": 0.5}
        if baseline:
            row.update({"otsu_dice": 0.7, "otsu_ap50": 0.3})
        rows.append(row)
    return rows


def _has_colour(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    pixels = np.round(image[..., :3] * 255).astype(int)
    return bool((np.abs(pixels - np.array(rgb)).max(axis=-1) <= 2).any())


@pytest.mark.parametrize("baseline", [True, False])
def test_report_writes_tables_and_a_png_plot(tmp_path, baseline):
    from matplotlib.image import imread

    out = tmp_path / "eval"
    files = write_report(_rows(baseline), out, title="tiny: hold-out", resolutions=[64, 32, 16, 8])
    assert [f.name for f in files] == ["robustness.md", "robustness.csv", "robustness.png"]
    # written atomically: nothing but the three files is left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)
    png = out / "robustness.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)  # decodes the whole file
    width, height = (round(s * PLOT_DPI) for s in PLOT_SIZE_INCHES)
    assert image.shape == (height, width, 4)
    assert _has_colour(image, MODEL_DICE_RGB)
    assert _has_colour(image, OTSU_DICE_RGB) == baseline


def test_report_refuses_an_empty_table(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_report([], tmp_path)


def test_a_compared_checkpoint_gets_its_columns_and_its_own_lines(tmp_path):
    from matplotlib.image import imread

    from napari_rat.train.robustness_report import markdown_table

    rows = _rows(True)
    for r in rows:
        r.update({"blind_dice": 0.5, "blind_iou": 0.4, "blind_ap50": 0.2})
    table = markdown_table(rows)
    assert table.splitlines()[0] == (
        "| spacing factor | model Dice | model IoU | model AP@0.5 | blind Dice | blind IoU | "
        "blind AP@0.5 | Otsu Dice | Otsu AP@0.5 |"
    )
    assert "| 4x | 0.600 | 0.500 | 0.500 | 0.500 | 0.400 | 0.200 | 0.700 | 0.300 |" in table
    write_report(rows, tmp_path)
    image = imread(tmp_path / "robustness.png")
    # model and Otsu keep their colours; the compared model's Dice is matplotlib's fifth (C4)
    assert _has_colour(image, MODEL_DICE_RGB) and _has_colour(image, OTSU_DICE_RGB)
    assert _has_colour(image, (0x94, 0x67, 0xBD))
    assert not _has_colour(imread_plain(tmp_path, _rows(True)), (0x94, 0x67, 0xBD))


def imread_plain(folder, rows):
    from matplotlib.image import imread

    out = folder / "plain"
    write_report(rows, out)
    return imread(out / "robustness.png")
