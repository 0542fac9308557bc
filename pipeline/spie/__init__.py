"""SPIE: the instruction data set SPEX learns from, built from labelled imagery.

One concept per module: :mod:`catalog` (data-set YAML), :mod:`readers` (layouts, labels,
GeoJSON footprints), :mod:`splits` and :mod:`patches` (where samples come from),
:mod:`facts` (what is true of a sample), :mod:`responses` and :mod:`quality` (answer
text and its check), :mod:`store` (Zarr + Parquet on disk, streaming), :mod:`build`,
:mod:`stats`, :mod:`cli`.
"""
