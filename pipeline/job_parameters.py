"""Extraction settings as flat job parameters, and back.

A Prefect flow takes JSON-friendly parameters (lists, not tuples; ``resume`` rather
than ``force``; ``scale``/``offset`` as one number or one per band, as on the command
line), while the library takes :class:`pipeline.extract.ExtractionSettings`. This is
the one translation between the two, so the ``extract-scene`` flow, its shell entry and
the regional flow agree on every option.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pipeline.extract import ExtractionSettings

#: Settings fields held as tuples and passed to flows as lists.
_SEQUENCES = ("bands", "scale", "offset", "formats")


def _floats(value: float | list[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(v) for v in value) or None


def settings_from_parameters(
    *,
    bands: list[str] | None,
    scale: float | list[float] | None,
    offset: float | list[float] | None,
    formats: list[str] | None,
    resume: bool,
    **options: Any,
) -> ExtractionSettings:
    """A flow's parameters as :class:`ExtractionSettings` (``options``: its other fields)."""
    return ExtractionSettings(
        bands=tuple(bands) if bands else None,
        scale=_floats(scale),
        offset=_floats(offset),
        formats=tuple(formats or ("cog",)),
        force=not resume,
        **options,
    )


def parameters_from_settings(
    settings: ExtractionSettings, flow: Callable[..., Any]
) -> dict[str, Any]:
    """The parameters of ``flow`` (a Prefect flow or a plain function) that give
    ``settings``: the inverse of :func:`settings_from_parameters`."""
    accepted = set(inspect.signature(getattr(flow, "fn", flow)).parameters)
    params = {k: v for k, v in asdict(settings).items() if k in accepted}
    for key in _SEQUENCES:
        if params.get(key) is not None:
            params[key] = list(params[key])
    params["resume"] = not settings.force
    return params
