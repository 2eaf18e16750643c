"""The one table of error-budget constants, and the error measure.

An output conforms when err <= K[dtype] * growth, where err is measured by
`error_in_eps` and growth comes from the component spec's budget table (its
error-model section says why). Loosening a constant needs a sentence in the
spec saying why.
"""

from __future__ import annotations

import numpy as np

#: Machine epsilon of each dtype the harness knows: the gap between 1 and the next number
#: (2**-p for p fraction bits: 52, 23, 10 and 7).
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

#: Budget constants: about ten times the largest err / growth that any implementation in this
#: repository showed, rounded up. The figures, and how to repeat the calibration, are in one
#: place: spec/README.md, "Calibration".
K = {"float64": 3.0, "float32": 3.0, "float16": 3.0, "bfloat16": 3.0}


def error_in_eps(candidate: np.ndarray, reference: np.ndarray, dtype: str, scale: float) -> float:
    """max|candidate - reference| / (eps(dtype) * scale), in float64.

    `scale` is the output's magnitude from the spec's budget table. 0 when the
    two agree exactly, infinite when they differ and the scale is 0.
    """
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    diff = float(np.max(np.abs(c - r))) if r.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / (EPS[dtype] * scale)
