"""Interactive segmentation on cached RAT features (no Qt): scribbles, clicks, commit.

- **Scribbles**: a label array the user paints, ``0`` unlabelled, ``1`` background, ``2, 3, ...``
  the classes. A light classifier (scikit-learn's random forest; or a small MLP trained in
  torch, warm-started from the previous stroke's) learns them on the per-pixel features
  (:mod:`~napari_rat.inference.features`) and predicts a region (a view box, a slice, a 3D box
  or the whole image); instances follow with the package's instance step
  (:func:`~napari_rat.inference.instances.instances_from_probabilities`, the model's boundary
  probability separating touching objects). :meth:`InteractiveSegmenter.scribble_job` gives a
  :class:`ScribbleJob` to run off the GUI thread; its ``cancel()`` stops it between steps.
- **Clicks**: :meth:`InteractiveSegmenter.click_object`: a positive click on an object gives
  the model's instance there, or (where the model found none) the region grown from the click
  over the features; negative clicks split or trim it along the model's boundaries. Points are
  pixel coordinates of the image, 2D or 3D.
- **Commit**: :func:`~napari_rat.inference.commit.commit_object` writes an object into an
  instance label array under a new id, leaving other committed objects alone unless asked.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from napari_rat.inference.chunked_labels import grow_steps
from napari_rat.inference.commit import Region, region_box
from napari_rat.inference.features import FeatureMaps
from napari_rat.inference.instances import instances_from_probabilities
from napari_rat.inference.scribble_classifier import fit_forest, new_mlp, train_mlp
from napari_rat.inference.tiled_predict import PredictionCancelled

Classifier = Literal["mlp", "forest"]

#: Pixels predicted per classifier step (the cancel is checked between steps).
PREDICT_CHUNK = 1 << 18
#: Most training pixels kept per class (a random subset beyond: fitting stays cheap).
MAX_SAMPLES_PER_CLASS = 5_000


@dataclass
class ScribbleResult:
    """A scribble prediction over ``region`` (a box in the image).

    ``probabilities`` ``[K, *box]`` for the scribble values ``classes`` (``1`` background
    first, then the painted classes); ``semantic`` the winning value per pixel (the scribbles'
    own numbering); ``labels`` the instances of the non-background classes (int32, numbered
    from 1 within the box).
    """

    region: tuple[slice, ...]
    classes: list[int]
    probabilities: np.ndarray
    semantic: np.ndarray
    labels: np.ndarray

    @property
    def foreground(self) -> np.ndarray:
        """``P(not background)`` per pixel of the box."""
        return 1.0 - self.probabilities[0]


@dataclass
class ClickResult:
    """The object a set of clicks selects: ``mask`` (the image's shape), where it came from
    (``"model"``: the model's instance; ``"grown"``: grown over the features) and the model
    instance id it started from (0 when grown)."""

    mask: np.ndarray
    source: str
    instance: int = 0


class InteractiveSegmenter:
    """Scribbles and clicks on one image's :class:`~napari_rat.inference.features.FeatureMaps`.

    The features are read into memory once (float16); every scribble update then fits and
    applies the classifier without touching the model.

    Parameters
    ----------
    maps
        The image's features (from :func:`~napari_rat.inference.features.compute_features`).
    classifier
        ``"forest"`` (default: scikit-learn's random forest) or ``"mlp"`` (a small two-layer
        head trained in torch, warm-started from the previous stroke's). On the bundled
        nuclei image the forest scored better (see the README's interactive figures).
    seed
        Seed of the classifier's initialisation and sampling.
    available_memory
        Free bytes (default: the system's available memory, when ``psutil`` can tell); an
        image whose inputs would not fit is refused (``ValueError``) before anything is read.
    """

    def __init__(
        self,
        maps: FeatureMaps,
        *,
        classifier: Classifier = "forest",
        seed: int = 0,
        available_memory: int | None = None,
    ):
        if classifier not in ("mlp", "forest"):
            raise ValueError(f"classifier must be 'mlp' or 'forest', got {classifier!r}")
        self.maps = maps
        self.classifier = classifier
        self.spacing = tuple(float(s) for s in maps.spacing)
        self.shape = tuple(int(n) for n in maps.shape)
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        n_inputs = maps.features.shape[0] + len(maps.channel_names)
        _check_memory(self.shape, n_inputs, available_memory)
        self._probabilities = np.asarray(maps.probabilities, dtype=np.float16)
        # Pixel-major (channels last) float32, so that a box's inputs are one strided copy and
        # reach the classifier without a conversion (4 bytes per input and pixel: 0.4 GB for a
        # 1024x1024 image and the starter model).
        inputs = np.empty((*self.shape, n_inputs), np.float32)
        inputs[..., : maps.features.shape[0]] = np.moveaxis(np.asarray(maps.features), 0, -1)
        inputs[..., maps.features.shape[0] :] = np.moveaxis(self._probabilities, 0, -1)
        self._inputs = inputs
        self._labels = None if maps.labels is None else np.asarray(maps.labels)
        self._boundary_channel = (
            maps.channel_names.index("boundary") if "boundary" in maps.channel_names else None
        )
        self._grow_radius = maps.boundary_radius
        self._stats: tuple[np.ndarray, np.ndarray] | None = None  # for the MLP, on first use
        self._head = None
        self._head_classes: list[int] | None = None
        self._fitted: tuple | None = None  # (scribbles digest, classifier, classes)
        self._lock = threading.Lock()

    # -- features -------------------------------------------------------------------------

    @property
    def num_inputs(self) -> int:
        """Inputs per pixel of the classifier: the features, then the model's probabilities."""
        return self._inputs.shape[-1]

    def _statistics(self) -> tuple[np.ndarray, np.ndarray]:
        # Mean and spread per input from a fixed subsample of pixels (enough to standardise).
        n = int(np.prod(self.shape))
        idx = self._rng.choice(n, size=min(n, 100_000), replace=False)
        x = self._inputs_at(np.unravel_index(np.sort(idx), self.shape)).astype(np.float32)
        return x.mean(0), np.maximum(x.std(0), 1e-3)

    def _inputs_at(self, index: tuple[np.ndarray, ...]) -> np.ndarray:
        """``[N, num_inputs]`` float32 at the pixels ``index`` (a tuple of coordinate arrays)."""
        return self._inputs[index]

    def _inputs_in(self, box: tuple[slice, ...]) -> np.ndarray:
        """``[N, num_inputs]`` float32 over ``box``, in C order of the box."""
        return self._inputs[box].reshape(-1, self._inputs.shape[-1])

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        if self._stats is None:
            self._stats = self._statistics()
        mean, std = self._stats
        return (x - mean) / std

    def _classifier_inputs(self, x: np.ndarray) -> np.ndarray:
        # Trees split on raw values (scale does not matter to them); the MLP needs standardised.
        return x if self.classifier == "forest" else self._standardise(x)

    # -- scribbles ------------------------------------------------------------------------

    def scribble_job(self, scribbles: np.ndarray, region: Region = None) -> ScribbleJob:
        """A :class:`ScribbleJob`: fit the classifier on ``scribbles`` and predict ``region``
        when run (``scribbles`` is read then, so give a copy of a layer that may change)."""
        scribbles = np.asarray(scribbles)
        if scribbles.shape != self.shape:
            raise ValueError(
                f"scribbles have shape {scribbles.shape}; the image's features have "
                f"{self.shape}: paint in a Labels layer the image's size"
            )
        return ScribbleJob(self, scribbles, region_box(self.shape, region))

    def predict_scribbles(self, scribbles: np.ndarray, region: Region = None) -> ScribbleResult:
        """Fit on ``scribbles`` and predict ``region`` now (see :meth:`scribble_job`)."""
        return self.scribble_job(scribbles, region).run()

    def _training_set(self, scribbles: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        values = np.unique(scribbles)
        classes = [int(v) for v in values if v > 0]
        if 1 not in classes or len(classes) < 2:
            raise ValueError(
                f"scribbles hold the values {classes or 'none'}; paint background (1) and at "
                "least one class (2, 3, ...) first"
            )
        xs, ys = [], []
        for k, value in enumerate(classes):
            flat = np.flatnonzero(scribbles == value)
            if flat.size > MAX_SAMPLES_PER_CLASS:
                flat = np.sort(self._rng.choice(flat, MAX_SAMPLES_PER_CLASS, replace=False))
            xs.append(self._inputs_at(np.unravel_index(flat, self.shape)))
            ys.append(np.full(flat.size, k, dtype=np.int64))
        return self._classifier_inputs(np.concatenate(xs)), np.concatenate(ys), classes

    def _fit(self, scribbles: np.ndarray, cancel: threading.Event):
        """The classifier fitted on ``scribbles`` and their classes; the last fit again when
        the scribbles did not change (a new view of the same strokes costs no fit)."""
        digest = hashlib.blake2b(scribbles.tobytes(), digest_size=16).hexdigest()
        if self._fitted is not None and self._fitted[0] == digest:
            return self._fitted[1], self._fitted[2]
        x, y, classes = self._training_set(scribbles)
        if self.classifier == "forest":
            model = fit_forest(x, y, self._seed)
        else:
            warm = self._head is not None and self._head_classes == classes
            model = self._head if warm else new_mlp(x.shape[1], len(classes), self._seed)
            train_mlp(model, x, y, steps=40 if warm else 150, cancel=cancel)
            self._head, self._head_classes = model, classes
        self._fitted = (digest, model, classes)
        return model, classes

    def _predict_box(self, model, box, n_classes: int, cancel: threading.Event) -> np.ndarray:
        x = self._inputs_in(box)
        out = np.empty((x.shape[0], n_classes), dtype=np.float32)
        for start in range(0, x.shape[0], PREDICT_CHUNK):
            if cancel.is_set():
                raise PredictionCancelled("scribble prediction cancelled")
            chunk = self._classifier_inputs(x[start : start + PREDICT_CHUNK])
            if self.classifier == "forest":
                out[start : start + len(chunk)] = model.predict_proba(chunk)
            else:
                with torch.no_grad():
                    logits = model(torch.from_numpy(chunk))
                    out[start : start + len(chunk)] = torch.softmax(logits, 1).numpy()
        shape = tuple(s.stop - s.start for s in box)
        return out.T.reshape(n_classes, *shape)

    def _instances(self, fg: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
        boundary = None
        if self._boundary_channel is not None:
            boundary = self._probabilities[(self._boundary_channel, *box)].astype(np.float32)
        return instances_from_probabilities(
            fg, boundary, spacing=self.spacing, radius=self._grow_radius
        )

    # -- clicks ---------------------------------------------------------------------------

    def click_object(
        self,
        positive: Sequence[Sequence[float]],
        negative: Sequence[Sequence[float]] = (),
        *,
        grow_radius: float | None = None,
    ) -> ClickResult:
        """The object the clicks select (see the module docstring).

        Parameters
        ----------
        positive
            At least one point on the object, in pixel coordinates of the image (one value per
            axis; rounded to the nearest pixel).
        negative
            Points that must not belong to it: the object is split between the positive and
            negative points along the model's boundaries, and the part holding the first
            positive point is kept.
        grow_radius
            How far (physical units) an object grown from the features may reach from the
            click; default 32 pixels of the finest axis.
        """
        pos = [self._pixel(p, "positive") for p in positive]
        neg = [self._pixel(p, "negative") for p in negative]
        if not pos:
            raise ValueError("give at least one positive click on the object")
        first = pos[0]
        instance = int(self._labels[first]) if self._labels is not None else 0
        if instance > 0:
            ids = {int(self._labels[p]) for p in pos} - {0}
            mask = np.isin(self._labels, list(ids))
            if len(ids) == 1 and len(pos) == 1:
                mask = self._part_at(mask, first)
            source = "model"
        else:
            mask = self._grow(first, grow_radius)
            for p in pos[1:]:
                if not mask[p]:
                    mask |= self._grow(p, grow_radius)
            source = "grown"
        if neg:
            mask = self._split(mask, pos, neg)
        return ClickResult(mask=mask, source=source, instance=instance)

    def _pixel(self, point: Sequence[float], kind: str) -> tuple[int, ...]:
        point = tuple(float(v) for v in point)
        if len(point) != len(self.shape):
            raise ValueError(
                f"{kind} click {point} has {len(point)} coordinates; the image has "
                f"{len(self.shape)} axes: give pixel coordinates, one per axis"
            )
        pixel = tuple(int(round(v)) for v in point)
        if any(not 0 <= v < n for v, n in zip(pixel, self.shape, strict=True)):
            raise ValueError(
                f"{kind} click {point} is outside the image (shape {self.shape}); click on "
                "the image, in its pixel coordinates"
            )
        return pixel

    def _window(self, centre: tuple[int, ...], radius: float | None) -> tuple[slice, ...]:
        finest = min(self.spacing)
        radius = 32 * finest if radius is None else float(radius)
        half = [max(1, int(np.ceil(radius / s))) for s in self.spacing]
        return tuple(
            slice(max(0, c - h), min(n, c + h + 1))
            for c, h, n in zip(centre, half, self.shape, strict=True)
        )

    def _grow(self, seed: tuple[int, ...], radius: float | None) -> np.ndarray:
        """The pixels connected to ``seed`` whose features resemble the seed's more than the
        window's typical pixel does (an Otsu split of the similarity in the window), outside
        the model's boundaries."""
        from scipy import ndimage

        box = self._window(seed, radius)
        local = tuple(c - b.start for c, b in zip(seed, box, strict=True))
        x = self._standardise(self._inputs_in(box))
        around = tuple(
            slice(max(0, c - 1), c + 2) for c in local
        )  # the seed's 3^d neighbourhood, for a steadier reference
        shape = tuple(b.stop - b.start for b in box)
        ref = x.reshape(*shape, -1)[around].reshape(-1, x.shape[1]).mean(0)
        sim = x @ ref / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref) + 1e-6)
        sim = sim.reshape(shape)
        # Never the model's objects around, nor its sure background (under half as likely
        # foreground as the click), holes filled or not.
        allowed = np.ones(shape, dtype=bool)
        if self._labels is not None:
            allowed &= self._labels[box] == self._labels[seed]
        foreground = 1.0 - self._probabilities[(0, *box)].astype(np.float32)
        allowed &= foreground >= 0.5 * foreground[local]
        inside = (sim > _otsu(sim)) & allowed
        if self._boundary_channel is not None:
            inside &= self._probabilities[(self._boundary_channel, *box)] <= 0.5
        inside[local] = True
        components, _ = ndimage.label(inside)
        region = ndimage.binary_fill_holes(components == components[local]) & allowed
        region[local] = True
        components, _ = ndimage.label(region)
        region = components == components[local]
        if self._boundary_channel is not None:
            # Back over the model's boundary band, as its instances grow back over it.
            band = self._probabilities[(self._boundary_channel, *box)] > 0.5
            band &= allowed & (foreground >= 0.5)
            steps, reach = grow_steps(self._grow_radius, self.spacing, region.ndim)
            near = ndimage.distance_transform_edt(~region, sampling=steps) <= reach
            region |= band & near
        mask = np.zeros(self.shape, dtype=bool)
        mask[box] = region
        return mask

    def _part_at(self, mask: np.ndarray, click: tuple[int, ...]) -> np.ndarray:
        """The part of ``mask`` around ``click`` when ``mask`` is round objects joined at
        necks (two touching nuclei the model gave one id): a watershed of the distance to the
        mask's edge from its clear peaks; ``mask`` itself when it has one peak."""
        from scipy import ndimage

        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        inner = mask[box]
        edt = ndimage.distance_transform_edt(inner, sampling=self.spacing)
        top = float(edt.max())
        if top <= 2 * min(self.spacing):
            return mask
        # Peaks that stand at least ``depth`` above the neck between them: the components of a
        # superlevel set of the distance, from the lowest level that separates two of them.
        depth = max(1.5 * min(self.spacing), 0.25 * top)
        markers, n = None, 0
        for level in np.linspace(0.2 * top, top - depth, 8):
            parts, count = ndimage.label(edt > level)
            if count < 2:
                continue
            highs = ndimage.maximum(edt, parts, np.arange(1, count + 1))
            kept = np.flatnonzero(np.asarray(highs) >= level + depth) + 1
            if len(kept) >= 2:
                lut = np.zeros(count + 1, np.int16)
                lut[kept] = np.arange(1, len(kept) + 1)
                markers, n = lut[parts], len(kept)
                break
        if markers is None:
            return mask
        markers = np.where(inner, markers, n + 1).astype(np.int16)  # n + 1: outside, fixed
        cost = np.round(255 * (1 - edt / top)).astype(np.uint8)
        basins = ndimage.watershed_ift(cost, markers)
        local = tuple(c - b.start for c, b in zip(click, box, strict=True))
        part = (basins == basins[local]) & inner
        out = np.zeros_like(mask)
        out[box] = part
        return out

    def _split(self, mask, pos, neg) -> np.ndarray:
        """``mask`` cut between the positive and negative clicks: a watershed from the clicks
        over the model's boundary probability (else its background probability), inside the
        mask; the part connected to the first positive click is kept."""
        from scipy import ndimage

        if not mask.any():
            return mask
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        for p in (*pos, *neg):  # widen the box to hold every click
            box = tuple(
                slice(min(b.start, v), max(b.stop, v + 1)) for b, v in zip(box, p, strict=True)
            )
        inner = mask[box]
        channel = self._boundary_channel if self._boundary_channel is not None else 0
        cost = np.clip(self._probabilities[(channel, *box)].astype(np.float32), 0, 1) * 255
        markers = np.where(inner, 0, 3).astype(np.int16)  # 3: outside the object, fixed
        for p in neg:
            markers[tuple(v - b.start for v, b in zip(p, box, strict=True))] = 2
        for p in pos:
            markers[tuple(v - b.start for v, b in zip(p, box, strict=True))] = 1
        flooded = ndimage.watershed_ift(cost.astype(np.uint8), markers)
        kept = (flooded == 1) & inner
        components, _ = ndimage.label(kept)
        first = tuple(v - b.start for v, b in zip(pos[0], box, strict=True))
        out = np.zeros_like(mask)
        if components[first] > 0:
            out[box] = components == components[first]
        return out


class ScribbleJob:
    """One scribble update: :meth:`run` fits the classifier and predicts the region;
    :meth:`cancel` (from any thread) makes it raise
    :class:`~napari_rat.inference.PredictionCancelled` at its next step. A GUI runs each
    stroke's job in a worker and cancels the previous one."""

    def __init__(self, segmenter: InteractiveSegmenter, scribbles, box):
        self._segmenter = segmenter
        self._scribbles = scribbles
        self.region = box
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop at the next step (the classifier's fit or a chunk of the prediction)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def run(self) -> ScribbleResult:
        """Fit and predict; raises ``PredictionCancelled`` when cancelled."""
        seg, cancel = self._segmenter, self._cancel
        if cancel.is_set():
            raise PredictionCancelled("scribble prediction cancelled")
        with seg._lock:  # one fit at a time: the MLP is warm-started from the last one
            model, classes = seg._fit(self._scribbles, cancel)
        probs = seg._predict_box(model, self.region, len(classes), cancel)
        semantic = np.asarray(classes, dtype=np.uint8 if max(classes) < 256 else np.uint16)[
            np.argmax(probs, axis=0)
        ]
        fg = 1.0 - probs[0]
        labels = seg._instances(fg, self.region)
        return ScribbleResult(self.region, classes, probs, semantic, labels)


def _check_memory(shape, n_inputs: int, available: int | None) -> None:
    if available is None:
        try:
            import psutil
        except ImportError:
            return
        available = psutil.virtual_memory().available
    need = int(np.prod(shape)) * n_inputs * 4
    if need > available:
        raise ValueError(
            f"the features of {' x '.join(map(str, shape))} pixels take {need / 1e9:.1f} GB in "
            f"memory and {available / 1e9:.1f} GB is free; compute them for a region (the "
            "current view, a slice or a box) or on a coarser level"
        )


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """The threshold that best splits ``values`` in two (Otsu's criterion)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])
