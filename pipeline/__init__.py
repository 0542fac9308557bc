"""The SPEX geospatial library: sensors, scenes, indices, APG, tiling, stitching, outputs.

Pure functions and small classes; nothing here imports Prefect (flows live in ``flows/``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spex-pipeline")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"
