"""Implementations as torch.nn.Modules built from torch operations."""

from __future__ import annotations

import numpy as np


def devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


class TorchImplementation:
    """What every PyTorch implementation shares; a subclass names its component and builds its module."""

    name = "torch"
    framework = "torch"
    dtypes = ("float32", "float64")

    def devices(self) -> list[str]:
        return devices()
