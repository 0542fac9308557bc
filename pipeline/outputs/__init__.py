"""Final output files: atomic writes and Cloud-Optimized GeoTIFFs."""

from pipeline.outputs.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
)
from pipeline.outputs.cog import assert_valid_cog, to_cog, validate_cog, write_array_cog

__all__ = [
    "assert_valid_cog",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "ensure_writable_dir",
    "to_cog",
    "validate_cog",
    "write_array_cog",
]
