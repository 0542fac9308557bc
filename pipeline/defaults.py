"""The defaults of an extraction job, in one place.

``spex extract``, the ``extract-scene`` flow, region catalogs, scene-level evaluation
and :class:`pipeline.extract.ExtractionSettings` all read them here, so a job started
any of these ways plans the same tile grid and asks for the same model.
"""

from __future__ import annotations

#: Tile size in pixels (the SPEX paper's input size).
DEFAULT_TILE = 512
#: Overlap of neighbouring tiles in pixels, blended when stitching.
DEFAULT_OVERLAP = 64
#: Tiles per batch (one extractor call; a model's forward pass).
DEFAULT_BATCH_SIZE = 4
#: ``--model``: per target, the promoted or shipped model where it beats the index
#: (model.registry), else the spectral index with one Otsu threshold per scene.
DEFAULT_MODEL = "default"
