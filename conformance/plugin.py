"""Helpers for plug-in authors: the weight layouts of the usual layers, and the framework set-up.

A plug-in maps the spec's canonical weights onto a layer and calls it
(impls/__init__.py has the protocol). What is left is the mapping, and these
functions do its usual parts:

- `linear(W)`: a canonical `(in, out)` matrix as `torch.nn.Linear.weight`
  (and Flax `nnx.Linear`'s kernel is `W` itself; Equinox `eqx.nn.Linear`'s
  weight is `linear(W)` too);
- `heads_in(W, num_heads)` and `heads_out(W, num_heads)`: a projection into
  or out of the heads as a Keras `EinsumDense` kernel, `(d_model, H, d_head)`
  and `(H, d_head, d_model)` (Flax NNX's `MultiHeadAttention` uses the same);
- `gates(W, order)`: the four gate blocks of a canonical LSTM matrix
  (columns `i, f, g, o`) in another framework's order, e.g. "ifgo" for
  PyTorch and Keras (Keras calls g "c"), "igfo" for TensorFlow's
  LSTMBlockCell; `gate_blocks(W)` splits them for layers with one matrix per
  gate (Flax `nnx.LSTMCell`); `lstm_biases(b)` splits the one canonical bias
  into PyTorch's `bias_ih` and `bias_hh`;
- `setup(framework, dtype)`: what the harness does before it builds a
  plug-in of that framework, and what a plug-in used on its own needs: JAX's
  x64 mode for float64 (without it every array is float32), Keras' dtype
  policy as well as its floatx (a layer takes its dtype from the policy),
  torch's default dtype for the tensors a layer makes itself;
- `inference(model)`: evaluation mode, so that dropout is off and nothing
  is updated (`eval()` for torch and Flax NNX modules,
  `eqx.nn.inference_mode` for Equinox, `trainable = False` for Keras);
- `Unsupported(reason)`: what `build` or a call raises for an example it
  cannot express in a way `supports` could not tell beforehand (a runtime
  without a kernel for the dtype, found when the graph loads). The harness
  skips the example with the reason and counts it, as it does one that
  `supports` refuses; any other exception is a failure.

Each framework is imported only when a helper that needs it is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.vocabulary import numpy_dtype
import impls

#: What `build` or a call raises for an example it cannot express, found only when it runs (module doc).
Unsupported = impls.Unsupported

#: Frameworks `setup` knows, and what it does for each.
SETUP = {
    "numpy": "nothing",
    "torch": "torch.set_default_dtype (float64 or float32; float16/bfloat16 layers are built in float32, cast)",
    "keras": "keras.config.set_floatx and set_dtype_policy; on JAX, jax_enable_x64",
    "jax": "jax_enable_x64 (flax, equinox alike)",
    "flax": "as jax",
    "equinox": "as jax",
}

#: The canonical gate order of spec/lstm_classifier.md §3 (and lstm_seq2seq's).
CANONICAL_GATES = "ifgo"



def linear(W: np.ndarray) -> np.ndarray:
    """A canonical `(in, out)` matrix in `torch.nn.Linear`'s `(out, in)` layout (a copy, C-contiguous)."""
    return np.ascontiguousarray(np.asarray(W).T)


def heads_in(W: np.ndarray, num_heads: int) -> np.ndarray:
    """A canonical `(d_model, H * d_head)` projection into the heads as an `(d_model, H, d_head)` kernel: head h
    owns columns h * d_head .. (h + 1) * d_head - 1 (spec/mha.md §6.2)."""
    W = np.asarray(W)
    return W.reshape(W.shape[0], num_heads, W.shape[1] // num_heads)


def heads_out(W: np.ndarray, num_heads: int) -> np.ndarray:
    """A canonical `(H * d_head, d_model)` output projection as an `(H, d_head, d_model)` kernel."""
    W = np.asarray(W)
    return W.reshape(num_heads, W.shape[0] // num_heads, W.shape[1])


def gate_blocks(W: np.ndarray, axis: int = -1) -> dict[str, np.ndarray]:
    """The four gate blocks of a canonical LSTM matrix or bias along `axis`, by letter: i, f, g, o."""
    return dict(zip(CANONICAL_GATES, np.split(np.asarray(W), 4, axis=axis)))


def gates(W: np.ndarray, order: str, axis: int = -1) -> np.ndarray:
    """A canonical LSTM matrix or bias (gate blocks i, f, g, o along `axis`) with its blocks in `order`, a
    permutation of "ifgo" ("c" is taken for "g", as Keras names it)."""
    order = order.replace("c", "g")
    if sorted(order) != sorted(CANONICAL_GATES):
        raise ValueError(f"gate order {order!r} is not a permutation of {CANONICAL_GATES!r} (or 'ifco')")
    blocks = gate_blocks(W, axis)
    return np.concatenate([blocks[g] for g in order], axis=axis)


def lstm_biases(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one canonical bias as PyTorch's two, `bias_ih` and `bias_hh`: all of it in the first, zeros in the
    second (their sum is what the cell adds)."""
    b = np.asarray(b)
    return b.copy(), np.zeros_like(b)


def setup(framework: str, dtype: str) -> None:
    """The framework set-up a layer of `dtype` needs before it is built (`SETUP` says what, per framework);
    an unknown framework needs none."""
    if framework in ("jax", "flax", "equinox") or (framework == "keras" and _keras_backend() == "jax"):
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64; float32 ones are unaffected
    if framework == "keras":
        import keras

        keras.config.set_floatx(dtype)
        keras.config.set_dtype_policy(dtype)
    if framework == "torch":
        import torch

        torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)


def inference(model: Any) -> Any:
    """`model` in evaluation mode (dropout off, statistics frozen): the same object for torch, Flax NNX and
    Keras, a new one for Equinox (whose modules are immutable), so use what it returns."""
    if any(c.__module__.split(".")[0] == "equinox" for c in type(model).__mro__):
        import equinox as eqx

        return eqx.nn.inference_mode(model)
    if hasattr(model, "eval") and callable(model.eval):  # torch.nn.Module, flax.nnx.Module
        model.eval()
    elif hasattr(model, "trainable"):  # a Keras layer or model: called with training=False as well
        model.trainable = False
    return model


def cast(array: Any, dtype: str) -> np.ndarray:
    """A NumPy array of the cell's dtype (bfloat16 included), from any framework's array or tensor."""
    if hasattr(array, "detach"):  # torch
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":
            array = array.float()
        array = array.numpy()
    return np.asarray(array).astype(numpy_dtype(dtype))


def _keras_backend() -> str:
    import os

    return os.environ.get("KERAS_BACKEND", "tensorflow")
