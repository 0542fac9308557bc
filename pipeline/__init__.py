"""The SPEX geospatial library: sensors, scenes, indices, APG, tiling, stitching, outputs.

Pure functions and small classes; nothing here imports Prefect (flows live in ``flows/``).
"""

import os
from importlib.metadata import PackageNotFoundError, version

# GDAL's block cache defaults to 5 % of RAM, which makes peak memory grow with the scene
# (every block read stays cached). Jobs here read each block about once, so a small cache
# keeps memory bounded by tile size; set GDAL_CACHEMAX yourself to override (MB).
os.environ.setdefault("GDAL_CACHEMAX", "16")

try:
    __version__ = version("spex-pipeline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
