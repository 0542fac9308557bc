"""Errors of SPIE generation, so a user sees which data set, file or class is wrong.

Every problem with a user's data set (a catalog key, a missing label file, an image and a
label on different grids, a class id the catalog does not map, nothing to build) is a
:class:`DatasetError`, a :class:`~pipeline.errors.SpexInputError`: the CLI prints the
message without a traceback and exits with status 2, as for every other input error.
"""

from __future__ import annotations

from pipeline.errors import SpexInputError


class DatasetError(SpexInputError):
    """A data set cannot be turned into SPIE samples as declared; the message says why."""


class ResponseWriterError(SpexInputError):
    """A response writer (or judge) endpoint failed or answered something unusable."""
