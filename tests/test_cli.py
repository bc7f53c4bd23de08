"""The `napari-rat` command line: options spelled in full, nearest-option hints, bad --output."""

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from napari_rat.cli import build_parser, main


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


def _synopses() -> dict[str, str]:
    """The README's command-line synopses, one string per command (continuation lines joined)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Command line", 1)[1].split("```", 2)[1]
    text = re.sub(r"\\\n\s*", " ", section)
    out = {}
    for line in text.splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["napari-rat"]:
            name = " ".join(words[1:3]) if words[1] == "config" else words[1]
            out[name] = " ".join(words)
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_readme_synopses_show_every_option_of_every_command():
    synopses = _synopses()
    commands = _subparsers(build_parser())
    commands |= {f"config {k}": v for k, v in _subparsers(commands.pop("config")).items()}
    bench = commands.pop("bench")
    assert set(synopses) == {*commands, "bench"}
    assert set(synopses["bench"].split()[2].split("|")) == set(_subparsers(bench))
    for name, parser in commands.items():
        synopsis = synopses[name]
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert re.search(rf"(?<![\w-]){option}(?![\w-])", synopsis), (name, option)
                    if action.required:  # not shown as optional
                        assert f"[{option}" not in synopsis, (name, option)
    # predict needs at least one of its two destinations; the checkpoint defaults to the starter.
    assert "(--output OUT.zarr | --into-labels NAME" in synopses["predict"]
    assert "[--checkpoint CKPT|starter]" in synopses["predict"]


@pytest.mark.slow
def test_readme_starter_scores_are_what_demo_and_evaluate_measure(tmp_path):
    """The README's two starter scores of the held-out quarter (the demo's, evaluate's) are
    what the two commands' code paths give, with the counts the README and the model's page
    give for them."""
    import numpy as np

    from napari_rat.commands.demo import prepare_samples, segment_nuclei
    from napari_rat.config import load_config
    from napari_rat.inference import PredictOptions
    from napari_rat.inference.model_loading import load_model_for_inference
    from napari_rat.train.datasets import build_data
    from napari_rat.train.evaluation import evaluate_regions

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    page = " ".join((root / "docs" / "starter_model.md").read_text().split())
    demo = segment_nuclei(prepare_samples(tmp_path)["nuclei_2d"], "starter", "cpu")
    demo = demo["held_out_quarter"]
    model = load_model_for_inference("starter")  # as `evaluate` loads it
    config = load_config(root / "configs" / "starter_nuclei_2d.yaml")
    config = config.model_copy(update={"model": model.checkpoint_info.model_config})
    # evaluate's options: predict's defaults
    held_out = build_data(config).holdout
    evaluated = evaluate_regions(model, held_out, config, options=PredictOptions())

    assert f"Dice {demo['dice']:.3f} / AP@0.5 {demo['ap50']:.3f}" in readme
    assert f"| native | {evaluated['dice']:.3f} | {evaluated['ap50']:.3f} |" in readme
    assert f"`evaluate`'s {evaluated['dice']:.3f} / {evaluated['ap50']:.3f}" in readme
    # The demo scores the slivers column 384 cuts too: more objects than the band's nuclei.
    demo_objects = demo["tp"] + demo["fp"] + demo["fn"]
    assert f"({demo['tp']:.0f} of {demo_objects:.0f} matched)" in page
    # AP@0.5 = TP / (nuclei + FP), with the band's nuclei counted from its labels.
    nuclei = len(np.unique(held_out[0].labels[held_out[0].labels > 0]))
    (matched, false_positives), *_ = [
        (round(evaluated["ap50"] * (nuclei + fp)), fp)
        for fp in range(60)
        if evaluated["ap50"] * (nuclei + fp)
        == pytest.approx(round(evaluated["ap50"] * (nuclei + fp)))
    ]
    said = "no false positive" if false_positives == 0 else f"{false_positives} false positive"
    assert f"({matched} of {nuclei} nuclei, {said}" in readme


def test_python_m_cli_reports_command_errors_in_one_line(tmp_path):
    """How a cluster job runs the command: a refusal is one line and exit code 2 there too."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "napari_rat.cli", "predict", str(tmp_path / "no.zarr"),
         "--output", str(tmp_path / "out.zarr")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("napari-rat predict: error:") and "Traceback" not in out.stderr
