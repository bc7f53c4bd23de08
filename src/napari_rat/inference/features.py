"""Per-pixel RAT features of an image or a region, cached on disk (no Qt).

:func:`compute_features` runs the package's one predictor (:func:`~napari_rat.inference.predict`
with ``PredictOptions(features=True)``: the same tiles, levels, spacing and units as ``predict``)
and keeps, per pixel, the decoder's last features and the blocks' tokens at pixel resolution,
with the model's probabilities and instance labels from the same forward. The results go to the
:class:`~napari_rat.inference.feature_cache.FeatureCache`: the next call for the same data,
spacing, model and tile settings (in this process or another) reads them back without running
the model.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_rat.inference.devices import resolve_device
from napari_rat.inference.feature_cache import (
    FeatureCache,
    FeatureKey,
    array_fingerprint,
    model_fingerprint,
)
from napari_rat.inference.instances import BOUNDARY_RADIUS
from napari_rat.inference.tiled_predict import (
    PredictOptions,
    Progress,
    level_factors,
    predict,
    run_prediction,
    tile_and_halo,
)


@dataclass
class FeatureMaps:
    """Per-pixel features with the model's outputs, placed like their source.

    ``features`` is ``[num_features, *spatial]`` float16, ``probabilities``
    ``[num_outputs, *spatial]`` (the classes' softmax, then the boundary probability), ``labels``
    the model's instance labels; zarr arrays of the cache entry at ``path`` (or NumPy arrays
    when computed without a cache). ``from_cache`` says whether the model ran.
    """

    features: Any
    probabilities: Any
    labels: Any
    spacing: tuple[float, ...]
    translation: tuple[float, ...]
    class_names: list[str]
    channel_names: list[str]
    from_cache: bool
    path: Path | None = None
    #: How far the model's instance seeds grow back over its boundary band (``Prediction``).
    boundary_radius: int = BOUNDARY_RADIUS

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape."""
        return tuple(self.features.shape[1:])


_METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def store_version(path: str | os.PathLike) -> list:
    """What changes when a local OME-Zarr store is written anew at the same path: the folder's
    inode and the (size, modification time) of the metadata files of the store and of its
    arrays (one level down; ``labels/`` excluded, writing labels does not change the image).

    Writers replace a store (napari-rat publishes a new folder by rename) or rewrite its arrays'
    metadata, so a changed image misses the cache; chunks edited in place under unchanged
    metadata are not seen (a full scan would cost more than the cache saves on large stores).
    """
    root = Path(path)
    try:
        version: list = [root.stat().st_ino]
        with os.scandir(root) as entries:
            folders = sorted(e.name for e in entries if e.is_dir() and e.name != "labels")
    except OSError:
        return []
    for folder in ("", *folders):
        for name in _METADATA_FILES:
            try:
                st = (root / folder / name).stat()
            except OSError:
                continue
            version.append([folder, name, st.st_size, st.st_mtime_ns])
    return version


def data_identity(source) -> str:
    """What identifies ``source``'s pixels for the cache: an OME-Zarr input's address (with
    :func:`store_version` for a local store), level, region, channels, time index, shape and
    dtype; otherwise a hash of its pixels."""
    uri = getattr(source, "uri", None)
    image = source.image
    if uri:
        version = None
        if "://" not in str(uri):
            uri = os.path.abspath(os.fspath(uri))
            version = store_version(uri)
        region = getattr(source, "region", None)
        parts = {
            "uri": str(uri),
            "version": version,
            "level": int(getattr(source, "level", 0)),
            "region": sorted((k, list(v)) for k, v in region.items()) if region else None,
            "channels": getattr(source, "channels", None),
            "time_index": int(getattr(source, "time_index", 0)),
            "shape": list(image.shape),
            "dtype": str(image.dtype),
        }
        return "store:" + repr(sorted(parts.items()))
    return "content:" + array_fingerprint(image)


def feature_key(model, source, options: PredictOptions, identity: str | None = None) -> FeatureKey:
    """The cache key of ``source``'s features under ``model`` and ``options``."""
    dims = len(source.spacing)
    info = getattr(model, "checkpoint_info", None)
    tile, halo = tile_and_halo(options, dims)
    units = source.units
    if units is None or isinstance(units, str):
        units = (units,) * dims
    return FeatureKey(
        data=identity if identity is not None else data_identity(source),
        spacing=tuple(float(s) for s in source.spacing),
        units=tuple(units),
        model=model_fingerprint(model),
        tile=tile,
        halo=halo,
        levels=tuple(level_factors(info, source.spacing, options.levels)),
        precision=str(options.precision),
        device=resolve_device(options.device).type,
        resample=bool(options.resample_to_training_spacing),
    )


def compute_features(
    model,
    source,
    *,
    options: PredictOptions | None = None,
    cache: FeatureCache | None = None,
    use_cache: bool = True,
    identity: str | None = None,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, FeatureMaps]:
    """Per-pixel features of ``source`` (a :class:`~napari_rat.inference.PredictionInput`),
    from the cache when there, else computed by the tiled engine and cached.

    Parameters
    ----------
    model
        A ``RATSegmentation`` model.
    source
        The image ``[C, *spatial]`` (a region already cut out) with its spacing, origin, units.
    options
        The engine's tile, halo, levels, device and precision (``features`` and ``instances``
        are turned on).
    cache
        The cache (default: :class:`FeatureCache` in the user cache folder).
    use_cache
        ``False`` computes in memory and caches nothing.
    identity
        The data's identity for the key; by default :func:`data_identity`.
    cancel
        Set it to stop between tiles (:class:`~napari_rat.inference.PredictionCancelled`);
        nothing is cached then.

    Yields
    ------
    Progress
        The engine's, while the model runs (nothing on a cache hit).
    """
    options = dataclasses.replace(options or PredictOptions(), features=True, instances=True)
    if not use_cache:
        result = yield from predict(
            model,
            source.image,
            source.spacing,
            source.translation,
            options=options,
            cancel=cancel,
            units=source.units,
        )
        return _maps(result, result.probabilities, from_cache=False, path=None, group=None)
    cache = cache or FeatureCache()
    key = feature_key(model, source, options, identity)
    group = cache.get(key)
    if group is not None:
        maps = _maps(None, None, from_cache=True, path=cache.path_for(key), group=group)
        # features do not depend on where the image lies: one entry serves any placement
        maps.translation = tuple(float(t) for t in source.translation)
        return maps
    with cache.writing(key) as path:
        yield from predict(
            model,
            source.image,
            source.spacing,
            source.translation,
            options=options,
            store=path,
            cancel=cancel,
            units=source.units,
        )
    group = cache.get(key)
    return _maps(None, None, from_cache=False, path=cache.path_for(key), group=group)


def _maps(result, probabilities, *, from_cache: bool, path: Path | None, group) -> FeatureMaps:
    if group is not None:
        meta = dict(group.attrs.get("napari_rat", {}))
        return FeatureMaps(
            features=group["features"],
            probabilities=group["probabilities"],
            labels=group["labels"],
            spacing=tuple(meta["spacing"]),
            translation=tuple(meta["translation"]),
            class_names=list(meta["class_names"]),
            channel_names=list(meta["channel_names"]),
            from_cache=from_cache,
            path=path,
            boundary_radius=int(meta.get("boundary_radius", BOUNDARY_RADIUS)),
        )
    return FeatureMaps(
        features=result.features,
        probabilities=probabilities,
        labels=result.labels,
        spacing=result.spacing,
        translation=result.translation,
        class_names=result.class_names,
        channel_names=result.channel_names,
        from_cache=from_cache,
        path=None,
        boundary_radius=result.boundary_radius,
    )


def features_for(model, source, *, options: PredictOptions | None = None, **kwargs) -> FeatureMaps:
    """:func:`compute_features` driven to the end (for scripts and tests)."""
    return run_prediction(compute_features(model, source, options=options, **kwargs))
