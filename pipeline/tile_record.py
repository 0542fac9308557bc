"""One finished tile on disk: its probabilities, its valid mask and a checksum, in one file.

The tile store (:mod:`pipeline.stitching`) keeps each finished tile as one such file,
written under a temporary name and renamed into place. One file per tile is what resume
needs: a tile is finished exactly when its file exists, a crash leaves either the whole
file or none, and workers on a shared filesystem write disjoint files. The checksum over
the payload (and zlib's own check of each stream) catches what a rename cannot: a file
that a power cut left with lost blocks. Such a tile is dropped and computed again, so the
store does not fsync every tile (the final outputs are fsynced when they are committed).

Layout (little-endian): the 8-byte magic, a header ``<HHIIBBxxII16s`` (format version,
reserved, height, width, probability encoding, reserved, the two payload lengths, the
BLAKE2b-128 digest of both payloads), then the probability payload and the valid payload,
each a zlib stream. The valid mask is stored as bits. Probabilities that are all exactly
0.0 or 1.0 (per-pixel classifiers such as the spectral index) are stored as bits too,
which makes such a tile a few kilobytes and cheap to write; anything else as float32 in a
stored (level 0) zlib stream: a model's probabilities compress by ~10 % at level 1 for
~30 ms per 512 px tile, a fifth of the default model's own time per tile, so they are
kept as they are (the stream still carries its checksum). Either way the values read
back are bit for bit the values written.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np

MAGIC = b"SPEXTILE"
VERSION = 1
HEADER = struct.Struct("<HHIIBBxxII16s")
FLOAT32, BITS = 0, 1
#: zlib levels: bits compress well and fast; float32 probabilities hardly compress.
LEVEL, FLOAT_LEVEL = 1, 0
_ONE = np.float32(1.0).view(np.uint32)


class DamagedTileError(ValueError):
    """A tile file that is not a whole tile of the expected shape."""


def _digest(*payloads: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in payloads:
        h.update(p)
    return h.digest()


def encode_tile(probability: np.ndarray, valid: np.ndarray) -> bytes:
    """The file content for one tile: ``probability`` float32 (h, w), ``valid`` bool."""
    prob = np.ascontiguousarray(probability, dtype="<f4")
    ok = np.ascontiguousarray(valid, dtype=bool)
    h, w = prob.shape
    raw = prob.view(np.uint32)
    ones = raw == _ONE
    if np.all(ones | (raw == 0)):
        kind, prob_payload = BITS, zlib.compress(np.packbits(ones).tobytes(), LEVEL)
    else:
        kind, prob_payload = FLOAT32, zlib.compress(prob.tobytes(), FLOAT_LEVEL)
    valid_payload = zlib.compress(np.packbits(ok).tobytes(), LEVEL)
    header = HEADER.pack(
        VERSION,
        0,
        h,
        w,
        kind,
        0,
        len(prob_payload),
        len(valid_payload),
        _digest(prob_payload, valid_payload),
    )
    return MAGIC + header + prob_payload + valid_payload


def decode_tile(data: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(probability float32, valid bool)`` of a tile file; DamagedTileError if the file
    is not a whole tile of ``shape``."""
    start = len(MAGIC) + HEADER.size
    if len(data) < start or not data.startswith(MAGIC):
        raise DamagedTileError("not a tile file (magic or header missing)")
    version, _, h, w, kind, _, n_prob, n_valid, digest = HEADER.unpack_from(data, len(MAGIC))
    if version != VERSION or (h, w) != tuple(shape) or kind not in (FLOAT32, BITS):
        raise DamagedTileError(f"tile file of version {version}, shape {(h, w)}, kind {kind}")
    prob_payload = data[start : start + n_prob]
    valid_payload = data[start + n_prob : start + n_prob + n_valid]
    if len(data) != start + n_prob + n_valid or _digest(prob_payload, valid_payload) != digest:
        raise DamagedTileError("tile file truncated or altered (checksum)")
    try:
        body = zlib.decompress(prob_payload)
        bits = zlib.decompress(valid_payload)
    except zlib.error as exc:
        raise DamagedTileError(f"tile payload does not decompress: {exc}") from exc
    n = h * w
    valid = np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool).reshape(h, w)
    if kind == BITS:
        ones = np.unpackbits(np.frombuffer(body, np.uint8), count=n)
        prob = ones.astype(np.float32).reshape(h, w)
    else:
        if len(body) != 4 * n:
            raise DamagedTileError(f"tile payload holds {len(body)} bytes, expected {4 * n}")
        prob = np.frombuffer(body, dtype="<f4").astype(np.float32).reshape(h, w)
    return prob, valid
