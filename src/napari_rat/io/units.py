"""Physical length units: names, sizes, and an image's spacing in a model's unit.

The one unit table of the package: :func:`ngff_unit` turns the symbols microscopy files use
(``µm``, ``nm``, ``Å``) into OME-NGFF names (the converter), :func:`ngff_space_unit` validates a
unit given by the user against OME-NGFF's list, :func:`meters` gives a unit's size,
and :func:`to_model_units` the factors that express an image's spacing in a checkpoint's unit.

A checkpoint records the units of its training spacing (``micrometer`` by default); an OME-Zarr
image or a napari layer records its own per axis. RAT's position encoding (RoSE), resampling to
the training spacing and the minimum instance size all compare the two spacings, so they must
be in the same unit: :func:`to_model_units` gives the per-axis factors. Names follow OME-NGFF
(``nanometer``, ``micrometer``, ...), with the usual abbreviations (``nm``, ``um``, ``µm``).
Axes without a length unit (none given, or napari's ``pixel``) are taken to be in the model's
unit, as before units were compared.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_rat.spelling import did_you_mean

_PREFIXES = {
    "yocto": 1e-24, "zepto": 1e-21, "atto": 1e-18, "femto": 1e-15, "pico": 1e-12, "nano": 1e-9,
    "micro": 1e-6, "milli": 1e-3, "centi": 1e-2, "deci": 1e-1, "": 1.0, "deca": 1e1,
    "hecto": 1e2, "kilo": 1e3, "mega": 1e6, "giga": 1e9, "tera": 1e12, "peta": 1e15,
    "exa": 1e18, "zetta": 1e21, "yotta": 1e24,
}  # fmt: skip
_OTHER = {
    "angstrom": 1e-10,
    "inch": 0.0254,
    "foot": 0.3048,
    "yard": 0.9144,
    "mile": 1609.344,
    "parsec": 3.0856775814913673e16,
}
#: Symbols (OME-XML, ImageJ, everyday) and their OME-NGFF names.
_SYMBOLS = {
    "pm": "picometer",
    "Å": "angstrom",
    "nm": "nanometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "km": "kilometer",
}
_NO_UNIT = {"", "pixel", "pixels", "px", "none", "dimensionless"}
#: The length units OME-NGFF allows on ``space`` axes: every SI prefix of the metre but deca,
#: and the other units above.
NGFF_SPACE_UNITS = frozenset({f"{p}meter" for p in _PREFIXES if p != "deca"} | set(_OTHER))


def ngff_unit(unit: str | None) -> str | None:
    """The OME-NGFF name of ``unit`` (a name or a symbol); ``None`` for no or an unknown unit."""
    name = "" if unit is None else str(unit).strip()
    name = _SYMBOLS.get(name, name).lower()
    try:
        return name if meters(name) is not None else None
    except ValueError:
        return None


def ngff_space_unit(unit: str) -> str:
    """``unit`` (an OME-NGFF name or a usual symbol such as ``um``) as its OME-NGFF name.

    Raises
    ------
    ValueError
        For anything that is not an OME-NGFF length unit, naming the nearest one and the list.
    """
    name = ngff_unit(unit)
    if name in NGFF_SPACE_UNITS:
        return name
    choices = sorted(NGFF_SPACE_UNITS | set(_SYMBOLS))
    raise ValueError(
        f"{unit!r} is not an OME-NGFF length unit{did_you_mean(str(unit), choices)}; use one of "
        f"{', '.join(sorted(NGFF_SPACE_UNITS))}, or a symbol ({', '.join(_SYMBOLS)})"
    )


def meters(unit: str | None) -> float | None:
    """Metres per ``unit`` (``None`` for no length unit); an unknown name is a ``ValueError``."""
    name = "" if unit is None else str(unit).strip()
    name = _SYMBOLS.get(name, name).lower()
    if name in _NO_UNIT:
        return None
    if name in _OTHER:
        return _OTHER[name]
    for suffix in ("meters", "meter", "metres", "metre"):
        if name.endswith(suffix) and name[: -len(suffix)] in _PREFIXES:
            return _PREFIXES[name[: -len(suffix)]]
    raise ValueError(
        f"unknown length unit {unit!r}; use an OME-NGFF unit such as 'micrometer' or 'nanometer'"
    )


def to_model_units(
    units: Sequence[str | None] | str | None, model_unit: str | None, ndim: int
) -> tuple[float, ...]:
    """Per-axis factors that turn a spacing in ``units`` into the model's unit."""
    if units is None or isinstance(units, str):
        units = [units] * ndim
    if len(units) != ndim:
        raise ValueError(f"{len(units)} units for {ndim} spatial axes")
    target = meters(model_unit)
    factors = []
    for unit in units:
        source = meters(unit)
        factors.append(1.0 if source is None or target is None else source / target)
    return tuple(factors)


#: Time symbols (OME-XML ``TimeIncrementUnit``, everyday) and their OME-NGFF names.
_TIME_SYMBOLS = {
    "s": "second",
    "sec": "second",
    "ms": "millisecond",
    "µs": "microsecond",
    "μs": "microsecond",
    "us": "microsecond",
    "ns": "nanosecond",
    "ps": "picosecond",
    "min": "minute",
    "h": "hour",
    "hr": "hour",
    "d": "day",
}
_TIME_PREFIXES = ("atto", "femto", "pico", "nano", "micro", "milli", "centi", "deci", "")


def ngff_time_unit(unit: str | None) -> str | None:
    """The OME-NGFF name of a time ``unit`` (``"ms"`` -> ``"millisecond"``); ``None`` when
    there is none or it is not a time unit NGFF names."""
    name = "" if unit is None else str(unit).strip()
    name = _TIME_SYMBOLS.get(name, name).lower()
    if name in ("minute", "hour", "day"):
        return name
    if name.endswith("second") and name[: -len("second")] in _TIME_PREFIXES:
        return name
    return None
