"""The resolution-robustness table: Markdown, CSV and (with matplotlib) a plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from napari_rat.atomic_files import atomic_path


def factors_for_resolutions(longest: int, resolutions: Sequence[int]) -> list[float]:
    """Spacing factors that resample a region whose longest axis has ``longest`` pixels to
    each of ``resolutions`` pixels (``factor > 1``: coarser)."""
    return [longest / r for r in resolutions]


def markdown_table(rows: list[dict[str, float]], resolutions: Sequence[int] | None = None) -> str:
    """A Markdown table: one row per spacing factor, model (and Otsu) Dice, IoU, AP@0.5."""
    has_otsu = any("otsu_dice" in r for r in rows)
    head = ["spacing factor"] + (["pixels (longest axis)"] if resolutions else [])
    head += ["model Dice", "model IoU", "model AP@0.5"]
    if has_otsu:
        head += ["Otsu Dice", "Otsu AP@0.5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        cells = [f"{r['factor']:.3g}x"] + ([str(resolutions[i])] if resolutions else [])
        cells += [f"{r['model_dice']:.3f}", f"{r['model_iou']:.3f}", f"{r['model_ap50']:.3f}"]
        if has_otsu:
            cells += [f"{r['otsu_dice']:.3f}", f"{r['otsu_ap50']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: list[dict[str, float]],
    folder: str | Path,
    *,
    title: str = "",
    resolutions: Sequence[int] | None = None,
) -> list[Path]:
    """Write ``robustness.md``, ``robustness.csv`` and, when matplotlib imports,
    ``robustness.png`` into ``folder``; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    md = folder / "robustness.md"
    with atomic_path(md) as tmp:
        tmp.write_text((f"{title}\n\n" if title else "") + markdown_table(rows, resolutions))
    written.append(md)
    path = folder / "robustness.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written  # the CSV and Markdown table stand in for the plot
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = [r["factor"] for r in rows]
    for key, label, style in (
        ("model_dice", "model Dice", "o-"),
        ("model_ap50", "model AP@0.5", "s-"),
        ("otsu_dice", "Otsu Dice", "o--"),
        ("otsu_ap50", "Otsu AP@0.5", "s--"),
    ):
        if key in rows[0]:
            ax.plot(x, [r[key] for r in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("spacing factor (x native, coarser to the right)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title[:60], fontsize=8)
    fig.tight_layout()
    png = folder / "robustness.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    written.append(png)
    return written
