"""Tensor digests that compare equal exactly when the values do, NaN payloads aside.

NaN payloads differ between correct implementations (ml_dtypes quiets to 0x7E00, numpy keeps the payload), so
before hashing every NaN becomes the canonical quiet NaN of its own sign: a digest then tells "is NaN, which
sign" but never payload bits. Everything else, -0 included, is hashed bit for bit. Digests are fed chunk by
chunk, so a tensor never has to sit in host memory whole.
"""

from __future__ import annotations

import hashlib

import numpy as np

# canonical quiet NaN bit patterns per float width, positive sign
_QUIET_NAN = {2: 0x7E00, 4: 0x7FC00000, 8: 0x7FF8000000000000}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def canonical_bits(values: np.ndarray) -> np.ndarray:
    """The array's bytes as unsigned integers, with NaNs canonicalised (floating dtypes only)."""
    values = np.ascontiguousarray(values)
    width = values.dtype.itemsize
    if values.dtype.kind != "f" and "bfloat16" not in str(values.dtype):
        return values.view(np.uint8)
    bits = values.view(_UINT[width]).copy()
    nan = np.isnan(values.astype(np.float32) if width == 2 else values)
    if nan.any():
        sign = bits & _UINT[width](1 << (8 * width - 1))
        quiet = _QUIET_NAN[width] if "bfloat16" not in str(values.dtype) else 0x7FC0
        bits[nan] = sign[nan] | _UINT[width](quiet)
    return bits


class Digest:
    """Incremental digest of one tensor."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.nbytes = 0

    def update(self, chunk: np.ndarray) -> None:
        bits = canonical_bits(chunk)
        self._hash.update(bits.tobytes())
        self.nbytes += bits.nbytes

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def digest_array(values: np.ndarray) -> str:
    digest = Digest()
    digest.update(values)
    return digest.hexdigest()
