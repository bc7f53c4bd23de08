"""The light classifiers of the interactive scribbles (no Qt): a random forest and a small MLP.

Measured on the bundled nuclei image (``napari-rat bench interactive``, 10 scripted strokes,
foreground Dice on the held-out quarter): the forest 0.93, the MLP 0.84; the forest is
:class:`~napari_rat.inference.interactive.InteractiveSegmenter`'s default.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from napari_rat.inference.tiled_predict import PredictionCancelled

#: The random forest's size: on the bundled nuclei image, 10 trees of depth 10 scored as 50
#: of depth 12 at a fifth of the time.
FOREST_TREES, FOREST_DEPTH = 10, 10


def new_mlp(n_inputs: int, n_classes: int, seed: int) -> torch.nn.Module:
    """A two-layer head: ``n_inputs`` -> 32 -> ``n_classes`` logits, seeded."""
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(n_inputs, 32), torch.nn.GELU(), torch.nn.Linear(32, n_classes)
        )


def train_mlp(head, x, y, *, steps: int, cancel: threading.Event) -> None:
    """``steps`` full-batch Adam steps of class-balanced cross-entropy on ``x``, ``y``."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    counts = torch.bincount(yt, minlength=int(yt.max()) + 1).float()
    weight = counts.sum() / (len(counts) * counts.clamp(min=1))  # balance the classes
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    head.train()
    with torch.enable_grad():
        for _ in range(steps):
            if cancel.is_set():
                raise PredictionCancelled("scribble prediction cancelled")
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(xt), yt, weight=weight)
            loss.backward()
            opt.step()
    head.eval()


def fit_forest(x: np.ndarray, y: np.ndarray, seed: int):
    """scikit-learn's random forest fitted on ``x``, ``y`` (classes balanced)."""
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError:
        raise ImportError(
            "the 'forest' classifier needs scikit-learn (pip install scikit-learn); or use "
            "classifier='mlp'"
        ) from None
    forest = RandomForestClassifier(
        n_estimators=FOREST_TREES,
        max_depth=FOREST_DEPTH,
        n_jobs=-1,
        random_state=seed,
        class_weight="balanced",
    )
    return forest.fit(x, y)
