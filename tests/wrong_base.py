"""What the deliberately wrong implementations (tests/wrong_<component>.py) share."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class Switchable:
    """A NumPy implementation whose `forward` is a component's computation with
    some mistakes switched on by `options`; each wrong implementation is a
    subclass that sets them, and says what the harness must report
    (tests/test_components.py runs every one):

    - `breaks`: the section the failure must name ("" for none: a layer that cannot be built breaks no rule);
    - `says`: what the reason must contain;
    - `first`: the failure names that section first, as the rule its region or a parameter pins down;
    - `worked`: the worked example that catches it, where random examples rarely can;
    - `shrunk`: values the shrunk counterexample shows beyond the module's SHRUNK.
    """

    framework = "numpy"
    options: dict[str, Any] = {}
    breaks: str | None = None  # None: not a mistake (the control `Correct`, or a helper base)
    says = ""
    first = False
    worked: str | None = None
    shrunk: dict[str, Any] = {}

    def forward(self, config: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def build(self, config, *, dtype, device):
        impl = self

        class Instance:
            def load(self, weights):
                self.weights = {k: v.astype(dtype) for k, v in weights.items()}

            def __call__(self, inputs):
                return impl.forward(config, self.weights, inputs)

        return Instance()
