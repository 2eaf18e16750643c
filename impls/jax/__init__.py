"""Adapters of JAX libraries' own layers (Flax NNX, Equinox): what they share.

JAX computes float64 only with jax_enable_x64, and silently in float32
without it, so this module switches it on at import, before any array is
made (the flag is global: it holds for the whole process). Matmuls are
pinned to full float32 precision (no TF32 on GPUs), and JAX's persistent
compilation cache is switched on in the folder that Keras on JAX uses too
(`impls.jax_compilation_cache`).

An adapter describes its layer as a pure function of the canonical weights
and the inputs, `forward(weights, inputs) -> tuple of outputs`, that builds
the library's parameters from the canonical arrays inside (Flax:
nnx.split / nnx.merge with a replaced state; Equinox: eqx.tree_at). The
call runs it op by op; `vjp` is jax.vjp of the same function, so the
gradients come out in the canonical names and layout with no mapping back.
JAX compiles every operation for each new input shape, in this eager mode
too (`compiles_per_shape`).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping

import jax

jax.config.update("jax_enable_x64", True)  # before any array: float64 cells compute in float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from impls import FrameworkLayer, count_jax_compilations, jax_compilation_cache  # noqa: E402

#: A pure forward pass: (canonical weights, inputs), both dicts of JAX arrays (None for an absent input) ->
#: the outputs in the order the adapter declares them.
Forward = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple]

#: JAX's compilations in this process: "graphs" (XLA programs compiled or loaded from the persistent cache)
#: and "cache_hits" (those loaded), counted from its monitoring events.
COUNTS: collections.Counter = collections.Counter()


jax.config.update("jax_default_matmul_precision", "highest")
CACHE = jax_compilation_cache()  # as impls.keras does on JAX: the same folder
count_jax_compilations(COUNTS)


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if any(d.platform == "gpu" for d in jax.devices()) else [])


def jax_device(device: str) -> jax.Device:
    """The harness's device name as a JAX device."""
    return jax.devices({"cpu": "cpu", "cuda": "gpu"}[device])[0]


def environment(library: str) -> dict[str, Any]:
    """Versions of jax, jaxlib and `library`, the precision flags and the compilation cache."""
    import importlib

    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            library: importlib.import_module(library).__version__,
            "jax_enable_x64": jax.config.jax_enable_x64,
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision, **CACHE}


def _is_float(x: Any) -> bool:
    return x is not None and np.asarray(x).dtype.kind == "f"


class PureInstance:
    """One built layer as a pure function: the weights last loaded and each call's inputs in, NumPy out."""

    def __init__(self, forward: Forward, *, dtype: str, device: str):
        self.forward, self.dtype, self.device = forward, np.dtype(dtype), jax_device(device)
        self.weights: dict[str, jax.Array] = {}

    def _put(self, x: Any) -> jax.Array | None:
        return None if x is None else jax.device_put(jnp.asarray(x), self.device)

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: self._put(np.asarray(w, dtype=self.dtype)) for name, w in weights.items()}

    def __call__(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        with jax.default_device(self.device):
            outputs = self.forward(self.weights, {n: self._put(x) for n, x in inputs.items()})
        return tuple(np.asarray(o) for o in outputs)

    def vjp(self, inputs: Mapping[str, Any], cotangents: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """jax.vjp of `forward` with respect to the canonical weights and the float inputs."""
        fixed = {n: self._put(x) for n, x in inputs.items() if not _is_float(x)}
        floats = {n: self._put(x) for n, x in inputs.items() if _is_float(x)}
        with jax.default_device(self.device):
            outputs, pull = jax.vjp(lambda w, x: self.forward(w, {**fixed, **x}), self.weights, floats)
            given = tuple(jnp.zeros_like(o) if c is None else self._put(c).astype(o.dtype)
                          for o, c in zip(outputs, cotangents.values(), strict=True))
            by_weight, by_input = pull(given)
        return {name: np.asarray(g) for name, g in {**by_input, **by_weight}.items()}


class JaxLayer(FrameworkLayer):
    """What every adapter of a JAX library's layer shares; a subclass gives `library` and `forward`."""

    framework = "jax"
    library = "jax"  # the module whose version environment() records

    def devices(self) -> list[str]:
        return devices()

    def environment(self) -> dict[str, Any]:
        return environment(self.library)

    def compiles_per_shape(self, mode: str) -> bool:
        return True  # each operation compiles for each new shape, eager or not

    def compilations(self) -> dict[str, int]:
        return {"graphs": COUNTS["graphs"], "cache_hits": COUNTS["cache_hits"]}

    def forward(self, config: Mapping[str, Any], dtype: str) -> Forward:
        raise NotImplementedError

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str) -> PureInstance:
        with jax.default_device(jax_device(device)):
            return PureInstance(self.forward(config, dtype), dtype=dtype, device=device)


def broadcast_mask(mask: jax.Array | None, B: int, Lq: int, Lk: int) -> jax.Array | None:
    """spec/mha.md §7.2: a (B, Lq, Lk), (B, 1, Lk) or (Lq, Lk) mask broadcast to (B, Lq, Lk); True = attend."""
    return None if mask is None else jnp.broadcast_to(mask, (B, Lq, Lk))
