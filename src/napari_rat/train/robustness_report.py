"""The resolution-robustness report: Markdown and CSV tables and a plot.

A row holds ``factor`` and, per scored model, ``<name>_dice``, ``<name>_iou`` and
``<name>_ap50``: ``model`` is the evaluated checkpoint, ``otsu`` the floor, and any other name a
checkpoint compared side by side (``napari-rat evaluate --compare``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from napari_rat.atomic_files import atomic_path


def factors_for_resolutions(longest: int, resolutions: Sequence[int]) -> list[float]:
    """Spacing factors that resample a region whose longest axis has ``longest`` pixels to
    each of ``resolutions`` pixels (``factor > 1``: coarser)."""
    return [longest / r for r in resolutions]


def scored_models(rows: list[dict[str, float]]) -> list[str]:
    """The model names of a table's rows: ``model`` first, compared checkpoints, then ``otsu``."""
    names = [k.removesuffix("_dice") for k in rows[0] if k.endswith("_dice")] if rows else []
    return sorted(names, key=lambda n: (n != "model", n == "otsu"))


def markdown_table(
    rows: list[dict[str, float]],
    resolutions: Sequence[int] | None = None,
    factor_label: str = "spacing factor",
) -> str:
    """A Markdown table: one row per spacing factor; Dice, IoU and AP@0.5 of the model and of
    every compared checkpoint, then Otsu's Dice and AP@0.5. ``factor_label`` heads the first
    column (e.g. "z spacing factor" when only z was coarsened)."""
    models = scored_models(rows)
    head = [factor_label] + (["pixels (longest axis)"] if resolutions else [])
    for name in models:
        label = "Otsu" if name == "otsu" else name
        metrics = ("Dice", "AP@0.5") if name == "otsu" else ("Dice", "IoU", "AP@0.5")
        head += [f"{label} {m}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        cells = [f"{r['factor']:.3g}x"] + ([str(resolutions[i])] if resolutions else [])
        for name in models:
            keys = ("dice", "ap50") if name == "otsu" else ("dice", "iou", "ap50")
            cells += [f"{r[f'{name}_{k}']:.3f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: ``robustness.png`` is 5 x 3.5 inches at 100 dpi: 500 x 350 pixels.
PLOT_SIZE_INCHES = (5.0, 3.5)
PLOT_DPI = 100

_MISSING_MATPLOTLIB = (
    "the robustness plot needs matplotlib; install the training extra: "
    'pip install "napari-rat[train]"'
)


def plot_robustness(
    rows: list[dict[str, float]],
    path: str | Path,
    *,
    title: str = "",
    factor_label: str = "spacing factor",
) -> Path:
    """Plot Dice and AP@0.5 against the spacing factor (log axis), the model, every compared
    checkpoint and Otsu, as a PNG.

    Drawn on matplotlib's non-interactive Agg canvas without pyplot, so it neither needs a
    display nor switches the backend of a session (napari's Qt) that also uses matplotlib.
    Written atomically.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MISSING_MATPLOTLIB) from exc
    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [r["factor"] for r in rows]
    # Fixed colours: the model's Dice and AP are C0 and C1 and Otsu's C2 and C3, whether or not
    # checkpoints are compared; those take the next ones.
    colours = {"model": ("C0", "C1"), "otsu": ("C2", "C3")}
    others = [n for n in scored_models(rows) if n not in colours]
    colours |= {n: (f"C{4 + 2 * i}", f"C{5 + 2 * i}") for i, n in enumerate(others)}
    for name in scored_models(rows):
        label = "Otsu" if name == "otsu" else name
        line = "--" if name == "otsu" else ("-" if name == "model" else ":")
        for metric, marker, colour in zip(("dice", "ap50"), "os", colours[name], strict=True):
            ax.plot(
                x,
                [r[f"{name}_{metric}"] for r in rows],
                marker + line,
                color=colour,
                label=f"{label} {'Dice' if metric == 'dice' else 'AP@0.5'}",
            )
    ax.set_xscale("log", base=2)
    # ticks at the measured factors, labelled as in the table ("0.5x", "2x")
    ax.set_xticks(x, labels=[f"{f:.3g}x" for f in x])
    ax.minorticks_off()
    ax.set_xlabel(f"{factor_label} (x native, coarser to the right)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8 if len(scored_models(rows)) <= 2 else 6)
    if title:
        ax.set_title(title[:60], fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        # Fixed size: no bbox_inches="tight", so the image is always PLOT_SIZE_INCHES * PLOT_DPI.
        fig.savefig(tmp, format="png", dpi=PLOT_DPI)
    return path


def write_report(
    rows: list[dict[str, float]],
    folder: str | Path,
    *,
    title: str = "",
    resolutions: Sequence[int] | None = None,
    factor_label: str = "spacing factor",
) -> list[Path]:
    """Write ``robustness.md``, ``robustness.csv`` and ``robustness.png`` into ``folder``.

    Returns the files written.

    Raises
    ------
    ImportError
        Without matplotlib (``pip install "napari-rat[train]"``); the table files are written
        first.
    """
    if not rows:
        raise ValueError("no rows to report: the robustness table is empty")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    md = folder / "robustness.md"
    with atomic_path(md) as tmp:
        tmp.write_text(
            (f"{title}\n\n" if title else "") + markdown_table(rows, resolutions, factor_label)
        )
    written.append(md)
    path = folder / "robustness.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(path)
    written.append(
        plot_robustness(rows, folder / "robustness.png", title=title, factor_label=factor_label)
    )
    return written
