"""What the deliberately wrong implementations (tests/wrong_<component>.py) share."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class Switchable:
    """A NumPy implementation whose `forward` is a component's computation with
    some mistakes switched on by `options`; each wrong implementation is a
    subclass that sets them."""

    framework = "numpy"
    options: dict[str, Any] = {}

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
