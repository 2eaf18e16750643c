"""Our PyTorch and Keras implementations: weight converters, Keras config round trip, every Keras backend."""

from __future__ import annotations

import os
import subprocess
import sys
import importlib.util

import numpy as np
import pytest

from conformance import generate



def _weights(mha_spec, **config):
    example = {"B": 2, "Lq": 3, "Lk": 4, "mask": "none", "dropout": 0.0, "seed": 1, "scale_exp": 0, **config}
    weights, inputs = generate.make_arrays(mha_spec, example)
    return example, weights, inputs


def test_torch_converter_transposes_into_linear_layout(mha_spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch
    from impls.torch.mha import MultiHeadAttention, load_canonical

    _, w, _ = _weights(mha_spec, d_model=6, num_heads=2, d_head=4)
    module = MultiHeadAttention(6, 2, 4).to(torch.float64)
    load_canonical(module, w)
    np.testing.assert_array_equal(module.q_proj.weight.detach().numpy(), w["W_q"].T)  # (out, in)
    np.testing.assert_array_equal(module.out_proj.weight.detach().numpy(), w["W_o"].T)
    np.testing.assert_array_equal(module.v_proj.bias.detach().numpy(), w["b_v"])


keras_installed = importlib.util.find_spec("keras") is not None


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_converter_splits_heads_into_einsum_kernels(mha_spec):
    from impls.keras.mha import MultiHeadAttention, load_canonical

    _, w, _ = _weights(mha_spec, d_model=6, num_heads=2, d_head=4)
    layer = MultiHeadAttention(6, 2, 4, dtype="float64")
    layer.build()
    load_canonical(layer, w)
    kernel = np.asarray(layer.query_kernel.numpy() if hasattr(layer.query_kernel, "numpy") else layer.query_kernel)
    assert kernel.shape == (6, 2, 4)
    np.testing.assert_array_equal(kernel[:, 1, :], w["W_q"][:, 4:8])  # head 1 = columns 4..7 (spec §3)
    np.testing.assert_array_equal(np.asarray(layer.output_kernel)[1], w["W_o"][4:8])




BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_keras_implementation_conforms_on_backend(backend, tmp_path):
    """Keras fixes its backend once per process, so each backend runs in its own."""
    if not keras_installed or importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"Keras backend {backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = tmp_path / "results.json"
    # JAX compiles every op for every new shape, in eager mode too (about a second a shape here)
    examples = "8" if backend == "jax" else "40"
    proc = subprocess.run([sys.executable, "-m", "conformance", "check", "mha", "--impl", "keras",
                           "--examples", examples, "--device", "cpu", "--mode", "eager", "--mode", "compiled",
                           "--dtype", "float32", "--dtype", "float64", "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    import json

    cells = json.loads(out.read_text())["cells"]
    assert {(c["backend"], c["mode"], c["dtype"], c["verdict"]) for c in cells} == {
        (backend, mode, dtype, "conformant") for mode in ("eager", "compiled") for dtype in ("float32", "float64")}
