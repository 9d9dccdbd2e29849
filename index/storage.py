"""Data-independent storage formats of a shard's rows: ``float32`` (default), ``float16`` and ``int8``.

A shard's storage is fixed when the shard is created (recorded as ``"storage"`` in its manifest; a manifest
without it is ``float32``). Each format is a fixed, per-value map, learned from nothing:

* ``float32``: the unit rows as written (4 bytes per value).
* ``float16``: IEEE half precision of each value, round to nearest even (2 bytes per value); decoded exactly to
  float32.
* ``int8``: the fixed range [-1, 1] with scale 127: ``code = clip(rint(127·x), -127, 127)`` (round half to even;
  1 byte per value), decoded as ``float32(code) × float32(1/127)`` (one IEEE float32 product, so every code has
  one decoded value whichever kernel computes it).

Casting runs in torch (a core dependency; imported on first use): its float16 → float32 conversion uses the CPU's
F16C instructions, ~20× faster than numpy's here, and both casts are exact. Scoring an int8 row skips the decode
multiply: it computes ``(float32(1/127) · query) · float32(code)``, which is ``query · decoded row`` up to float32
rounding (one extra rounding of each query value) and, like it, a function of the query and that record alone.

No range, codebook, rotation or statistic is computed from the rows, so a stored row is a function of that
record alone, each score (float32 query · decoded row) depends only on the query and that record, and the
mechanism's ``2/k`` argument (``pipeline.mechanism``) is untouched; the mean clips every row onto the unit ball
anyway (:func:`pipeline.mechanism.aggregate`).

Unit-norm check (issue 9's records rule, at write and at load): a decoded row ``x̂ = x + e`` of a row ``x``
with ``|‖x‖ - 1| ≤ 1e-3`` satisfies ``|‖x̂‖ - 1| ≤ 1e-3 + ‖e‖``, and the format bounds ``‖e‖``:

* float16: ``|e_i| ≤ 2^-11·|x_i|`` (normal range) or ``≤ 2^-25`` (subnormal), so
  ``‖e‖ ≤ 2^-11·(1 + 1e-3) + sqrt(d)·2^-25``;
* int8: ``|e_i| ≤ 1/254`` (half a step; clipping only cuts a value above 1 by at most 1e-3 < 1/254) plus the
  float32 roundings of ``1/127`` and of the product (``≤ 2^-23`` for ``|code/127| ≤ 1``), so
  ``‖e‖ ≤ sqrt(d)·(1/254 + 2^-23)`` (0.110 at d = 768).

:func:`unit_tolerance` returns ``1e-3`` plus that bound.
"""

from __future__ import annotations

import math

import numpy as np

from index.errors import IndexInputError

__all__ = ["DEFAULT", "INT8_SCALE", "STORAGES", "cast_into", "check_storage", "code_scale", "decode", "decode_into",
           "dtype_of", "encode", "unit_tolerance"]  # fmt: skip

STORAGES = ("float32", "float16", "int8")
DEFAULT = "float32"
INT8_SCALE = 127  # fixed: [-1, 1] ↦ [-127, 127]; never derived from the data
UNIT_TOLERANCE = 1e-3  # |norm - 1| of a float32 row (round-off of a normalised embedding)
_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "int8": np.dtype(np.int8)}
_SCALE = np.float32(INT8_SCALE)
_DECODE_ROWS = 4_096
_STEP = float(np.float32(1.0 / INT8_SCALE))  # the decode factor, exactly representable in float32


def check_storage(storage: str) -> str:
    """``storage`` if it names a format, else a one-line :class:`IndexInputError`."""
    if storage not in STORAGES:
        raise IndexInputError(f"--storage must be one of {', '.join(STORAGES)}; found {storage!r}; pass one of them")
    return storage


def dtype_of(storage: str) -> np.dtype:
    """The numpy dtype of the stored values (``embeddings.npy``)."""
    return _DTYPES[check_storage(storage)]


def unit_tolerance(storage: str, dim: int) -> float:
    """Largest ``|‖row‖ - 1|`` a decoded row of this format may show (module docstring: the derivation)."""
    storage = check_storage(storage)
    if storage == "float16":
        return UNIT_TOLERANCE + 2.0**-11 * (1.0 + UNIT_TOLERANCE) + math.sqrt(dim) * 2.0**-25
    if storage == "int8":
        return UNIT_TOLERANCE + math.sqrt(dim) * (1.0 / (2 * INT8_SCALE) + 2.0**-23)
    return UNIT_TOLERANCE


def encode(rows: np.ndarray, storage: str) -> np.ndarray:
    """The stored form (C-contiguous, dtype :func:`dtype_of`) of finite float rows; a function of each value alone."""
    storage = check_storage(storage)
    values = np.ascontiguousarray(rows, dtype=np.float32)
    if storage == "float16":
        return values.astype(np.float16)
    if storage == "int8":
        return np.clip(np.rint(values * _SCALE), -INT8_SCALE, INT8_SCALE).astype(np.int8)
    return values


def code_scale(dtype: np.dtype) -> float:
    """The factor from a stored value, cast to float32, to its decoded value: float32(1/127) for int8, else 1."""
    return _STEP if np.dtype(dtype) == np.int8 else 1.0


def cast_into(stored: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the stored values, cast exactly to float32 (int8: the integer codes), into ``out`` (same shape, C order)."""
    if stored.dtype == np.float32:
        np.copyto(out, stored)
        return out
    import torch

    torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(stored)))  # exact: float16 and int8 fit float32
    return out


def decode_into(stored: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the float32 rows that ``stored`` (float32, float16 or int8 values) represent into ``out``.

    ``stored`` and ``out`` have the same shape; ``out`` is a C-contiguous float32 array.
    """
    cast_into(stored, out)
    scale = code_scale(stored.dtype)
    if scale != 1.0:
        np.multiply(out, np.float32(scale), out=out)  # float32(code) × float32(1/127), one rounding
    return out


def decode(stored: np.ndarray) -> np.ndarray:
    """A new float32 C-contiguous array of the rows ``stored`` represents (exact for float32 and float16).

    A read-only ``stored`` (a loaded or memory-mapped shard) is decoded through a small writable copy, block by block.
    """
    out = np.empty(stored.shape, dtype=np.float32)
    if stored.flags.writeable or stored.dtype == np.float32 or stored.ndim != 2:
        return decode_into(np.asarray(stored), out)
    for start in range(0, len(stored), _DECODE_ROWS):
        block = np.array(stored[start : start + _DECODE_ROWS])
        decode_into(block, out[start : start + len(block)])
    return out
