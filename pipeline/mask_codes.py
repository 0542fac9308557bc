"""The values of every uint8 mask the project writes or reads: 1 target, 0 other, 255 nodata.

Extraction masks (COG, Zarr, polygons, quicklook), APG coarse masks, SPIE sample masks,
training labels and regional mosaics all share this coding, so it is defined once here.
Nodata stays nodata: a pixel without data (or, in labels, without a label) is
``MASK_NODATA``, never "not the target".
"""

from __future__ import annotations

#: A pixel of the target.
MASK_TARGET = 1
#: A pixel with data that is not the target.
MASK_OTHER = 0
#: A pixel without data (or without a label): never counted as either class.
MASK_NODATA = 255
