"""Implementations whose forward pass is right and whose gradients are not, loaded through the plug-in interface.

Each passes the reference comparison, so that its cell's forward verdict is
conformant and only the gradient checks (conformance/gradients.py) can reject
it: the tests of results, compare, the report and the command use them to make
a real gradient failure (`scaled_w1_cell` runs one). Each class stands alone;
add more beside it.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from impls.numpy import ffn


class ScaledW1Gradient(ffn.Implementation):
    """The NumPy ffn whose vjp gives W_1's gradient times 1.01, as a backward pass that forgets to undo a
    rescaling of W_1 would (spec/ffn.md §11): every other gradient is the reference's."""

    name = "ScaledW1Gradient"
    SCALE = 1.01

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str) -> Any:
        instance = super().build(config, dtype=dtype, device=device)
        right = instance.vjp

        def vjp(inputs: Mapping[str, Any], cotangents: Mapping[str, Any]) -> dict[str, np.ndarray]:
            grads = right(inputs, cotangents)
            grads["W_1"] = (grads["W_1"] * self.SCALE).astype(grads["W_1"].dtype)  # (d_model, d_ff)
            return grads

        instance.vjp = vjp
        return instance


# --- for the tests of results files, compare, the report and the command ---------------------------------

#: ScaledW1Gradient as a plug-in, as the command line names it.
SCALED_W1 = f"{Path(__file__).resolve()}:ScaledW1Gradient"


@functools.cache
def _scaled_w1_cell(dtype: str) -> Any:
    from conformance.engine import run_cell
    from conformance.registry import resolve
    from conformance.spec import find_spec_dir, load_spec

    cell = run_cell(load_spec(find_spec_dir() / "ffn.md"), resolve("ffn", SCALED_W1), dtype, "cpu", max_examples=8)
    assert cell.verdict == "conformant" and cell.gradients["verdict"] == "non-conformant", cell.gradients
    return cell


def scaled_w1_cell(dtype: str = "float32") -> Any:
    """A real cell of ScaledW1Gradient (a fresh copy: a test may change it): its verdict conformant, its
    gradients non-conformant on W_1, with their example, command and arrays."""
    return copy.deepcopy(_scaled_w1_cell(dtype))


def scaled_w1_json(dtype: str = "float32") -> dict[str, Any]:
    """The same cell as a results file holds it (environment 0; its numbers are all finite)."""
    return json.loads(json.dumps({**scaled_w1_cell(dtype).to_json(), "env": 0}, allow_nan=False))
