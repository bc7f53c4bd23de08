"""``napari-rat bench sga``: planning, table, and a quick end-to-end run."""

from pathlib import Path

import numpy as np
import pytest

from napari_rat.bench import sga
from napari_rat.cli import build_parser, main


def _args(*argv):
    return build_parser().parse_args(["bench", "sga", *argv])


def test_sizes_parse_per_dimensionality():
    assert sga.parse_sizes(None, [2, 3], sga.DEFAULT_SIZES) == {
        2: [64, 128, 256, 512, 1024],
        3: [16, 32, 64, 128],
    }
    assert sga.parse_sizes(["64", "3d:16,32"], [2, 3], sga.DEFAULT_SIZES) == {
        2: [64],
        3: [64, 16, 32],
    }
    with pytest.raises(ValueError, match="2d:N"):
        sga.parse_sizes(["4d:8"], [2], sga.DEFAULT_SIZES)


def test_plan_skips_dense_over_the_memory_cap_and_exact_over_the_work_cap():
    args = _args("--dims", "2", "--sizes", "128", "1024", "--max-memory-gb", "12")
    cases = sga.plan_cases(args, dict(sga.DEFAULT_CONFIG))
    by = {(c.what, c.size, c.mode): c for c in cases}
    assert len(cases) == 2 * 2 * 3
    assert by["rat", 128, "package"].skip is None  # 1849 x 16384 x 16 x 4 B = 1.9 GB
    assert "max-memory-gb" in (by["layer", 1024, "package"].skip or "")
    assert "max-exact-work" in (by["rat", 1024, "exact"].skip or "")
    assert by["rat", 1024, "local"].skip is None


def test_table_reports_ratios_against_the_package():
    cases = [
        sga.Case("rat", "package", 2, 128, seconds=28.0, peak=8 * 1024**3),
        sga.Case("rat", "exact", 2, 128, seconds=7.0, peak=512 * 1024**2, diff=3e-6),
        sga.Case("rat", "local", 2, 1024, seconds=50.0, peak=3 * 1024**3),
        sga.Case("rat", "package", 2, 1024, skip="too big"),
    ]
    table = sga.format_table(cases)
    lines = table.splitlines()
    assert lines[0].startswith("| case |") and len(lines) == 2 + len(cases)
    assert "| 4.0x | 16.0x |" in lines[3]
    assert "20,972" in lines[4]  # 1024² pixels / 50 s
    assert "too big" in lines[5]


def test_register_adds_the_command(capsys):
    args = _args("--quick", "--what", "layer", "--output", "t.md")
    assert args.func is sga._run and args.quick and args.what == "layer"
    assert args.output == Path("t.md")
    assert args.dims == [2, 3] and args.modes == list(sga.MODES) and args.sizes is None
    with pytest.raises(SystemExit):
        _args("--what", "everything")
    assert "invalid choice: 'everything'" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "sga.md"
    code = main(
        ["bench", "sga", "--quick", "--dims", "2", "--sizes", "12", "--what", "layer",
         "--modes", "package", "exact", "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "| layer | 2D | 12 | exact |" in text
    row = next(line for line in text.splitlines() if "| exact |" in line)
    assert float(row.split("|")[10]) < 1e-4  # max abs diff vs package
    assert "speed-up" in capsys.readouterr().out


def test_setup_functions_run_in_process():
    config = dict(sga.QUICK_CONFIG)
    outs = {}
    for mode in sga.MODES:
        run, device = sga.setup_rat(mode, 2, 10, config, "cpu", None, 0)
        assert device == "cpu"
        outs[mode] = run()
    assert np.abs(outs["package"] - outs["exact"]).max() < 1e-4
    run, _ = sga.setup_layer("local", 3, 6, config, "cpu", None, 0)
    assert run().shape[0] == 1
