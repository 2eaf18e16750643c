"""The one table of error-budget constants, and the error measure.

An output conforms when err <= K[dtype] * growth, where err is measured by
`error_in_eps` and growth comes from the component spec's budget table (its
error-model section says why). Loosening a constant needs a sentence in the
spec saying why.
"""

from __future__ import annotations

import numpy as np

#: Machine epsilon of each dtype the harness knows: the gap between 1 and the next number.
EPS = {"float64": 2.0**-52, "float32": 2.0**-23}

#: Budget constants, calibrated as spec/mha.md §9.2 describes: the largest
#: err / growth seen over 2,000 examples per dtype for every implementation
#: in this repository, times about ten. Figures of the last calibration
#: (python -m conformance.calibrate mha --examples 2000):
#:   float64: max err/growth 0.0 (numpy is the reference), torch 0.21, keras 0.27
#:   float32: max err/growth numpy 0.17, torch 0.24, keras 0.26
K = {"float64": 4.0, "float32": 4.0}

DTYPES = tuple(EPS)


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
