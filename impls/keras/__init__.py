"""Implementations as Keras 3 layers using keras.ops only, so they run on every backend.

Keras picks its backend once per process from KERAS_BACKEND. On JAX, float64
needs jax_enable_x64, which is switched on here before any array is made;
without it JAX silently computes float64 layers in float32.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

if os.environ.get("KERAS_BACKEND") == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)

import keras  # noqa: E402


def backend() -> str:
    return keras.backend.backend()


def devices() -> list[str]:
    name = backend()
    if name == "torch":
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if name == "jax":
        import jax

        return ["cpu"] + (["gpu"] if any(d.platform == "gpu" for d in jax.devices()) else [])
    if name == "tensorflow":
        import tensorflow as tf

        return ["cpu"] + (["gpu"] if tf.config.list_physical_devices("GPU") else [])
    return ["cpu"]


class KerasImplementation:
    """What every Keras implementation shares; a subclass names its component and builds its layer."""

    name = "keras"
    framework = "keras"
    dtypes = ("float32", "float64")

    def devices(self) -> list[str]:
        return devices()

    def backend(self) -> str:
        return backend()
