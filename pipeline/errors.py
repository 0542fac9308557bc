"""Errors a user can act on.

Every failure caused by the input (a wrong band set, a file without CRS, an unknown
sensor, a corrupt file, an all-nodata window, a bad checkpoint) is raised as a subclass
of :class:`SpexInputError`, with a message that names the offending file, band or value.
The CLI prints these messages without a traceback and exits with status 2.
"""

from __future__ import annotations


class SpexInputError(ValueError):
    """The input cannot be processed as asked; the message says why."""


class CatalogError(SpexInputError):
    """A catalog entry is missing, unknown or malformed."""


class SceneError(SpexInputError):
    """A scene cannot be opened or does not match what was declared."""


class SceneReadError(SceneError):
    """A driver failed while reading pixels (truncated or corrupt file, missing tiles)."""


class MissingBandError(SceneError):
    """A band needed for the requested computation is not in the scene."""


class NoValidDataError(SceneError):
    """A scene or window holds no valid (non-nodata) pixels."""


class OutputError(SpexInputError):
    """An output location cannot be written."""
