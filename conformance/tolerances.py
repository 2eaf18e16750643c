"""The one table of error-budget constants, and the error measure.

An output conforms when err <= K[dtype] * growth, where err is measured by
`error_in_eps` and growth comes from the component spec's budget table (its
error-model section says why). Loosening a constant needs a sentence in the
spec saying why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Machine epsilon of each dtype the harness knows: the gap between 1 and the next number
#: (2**-p for p fraction bits: 52, 23, 10 and 7).
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

#: Budget constants: about ten times the largest err / growth that any implementation in this
#: repository showed, rounded up. The figures, and how to repeat the calibration, are in one
#: place: spec/README.md, "Calibration".
K = {"float64": 3.0, "float32": 3.0, "float16": 3.0, "bfloat16": 3.0}


#: The names the harness adds to a budget expression's environment: the cell dtype's machine epsilon and its
#: smallest normal number (spec/README.md, "Error budgets").
DTYPE_CONSTANTS = ("eps", "tiny")


def finfo(dtype: str) -> Any:
    """The dtype's limits (largest and smallest normal number), bfloat16 included."""
    import ml_dtypes

    from conformance.vocabulary import numpy_dtype

    return ml_dtypes.finfo(numpy_dtype(dtype))


def dtype_constants(dtype: str) -> dict[str, float]:
    return {"eps": EPS[dtype], "tiny": float(finfo(dtype).tiny)}


def errors_in_eps(candidate: np.ndarray, reference: np.ndarray, dtype: str, scale: float | np.ndarray) -> np.ndarray:
    """|candidate - reference| / (eps(dtype) * scale) per element, in float64.

    `scale` is the output's magnitude from the spec's budget table: one number, or an array that
    broadcasts to the output (a scale per element, such as each attention weight's own size). An
    element is 0 where the two agree exactly, infinite where they differ and its scale is 0, NaN
    where either is NaN.
    """
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN: a non-finite element is never within
        diff = np.abs(c - r)
        size = np.broadcast_to(np.asarray(scale, dtype=np.float64), diff.shape) * EPS[dtype]
        with np.errstate(divide="ignore"):
            return np.where(size > 0, diff / np.where(size > 0, size, 1.0), np.where(diff == 0, 0.0, np.inf))


def error_in_eps(candidate: np.ndarray, reference: np.ndarray, dtype: str, scale: float | np.ndarray) -> float:
    """The largest of `errors_in_eps` over the output (0 for an empty one)."""
    errors = errors_in_eps(candidate, reference, dtype, scale)
    return float(np.max(errors)) if errors.size else 0.0
