"""Flax NNX's and Equinox's own layers as implementations (impls/jax/): their verdicts and weight converters.

impls/jax switches jax_enable_x64 on at import, and the flag is global, so nothing JAX runs in the pytest
process: this file runs itself as a script in a subprocess (`observe`), once per session, which replays each
case as a one-example cell and runs the converter checks, and prints what it saw as JSON for the tests.
The adapters are named by their targets (module:Class), so the tests hold whether or not they are registered.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
HAS = {lib: importlib.util.find_spec(lib) is not None for lib in ("flax", "equinox")}
REASONS = {"flax": "Flax is not installed", "equinox": "Equinox is not installed"}

FLAX_MHA, FLAX_DPA = "impls.jax.flax_nnx:MultiHeadAttention", "impls.jax.flax_nnx:MultiHeadAttentionFused"
EQX_MHA = "impls.jax.equinox:MultiheadAttention"
FLAX_LSTM, FLAX_OPT_LSTM = "impls.jax.flax_nnx:LSTMCell", "impls.jax.flax_nnx:OptimizedLSTMCell"
EQX_LSTM = "impls.jax.equinox:LSTMCell"

_MHA = {"d_model": 8, "num_heads": 2, "d_head": 4, "dropout": 0.1, "B": 2, "Lq": 3, "Lk": 4, "scale_exp": 0}
MHA_PADDING = {**_MHA, "mask": "padding", "seed": 1}
MHA_ROW = {**_MHA, "mask": "random", "seed": 2}  # masks query row 1 of batch 0 fully (spec/mha.md §7.4)
MHA_CAUSAL = {**_MHA, "d_model": 5, "num_heads": 3, "d_head": 3, "mask": "causal", "seed": 3}  # H * d_head != d_model
LSTM = {"d_in": 3, "hidden": 4, "num_layers": 2, "num_classes": 5, "B": 2, "T": 3, "seed": 1, "scale_exp": 0}
LSTM_3 = {"d_in": 2, "hidden": 3, "num_layers": 3, "num_classes": 2, "B": 1, "T": 4, "seed": 2, "scale_exp": 1}
ROW = "likely cause: fully masked query row"  # how a cell that deviates only there is explained (§7.4)

#: (library, component, adapter, dtype, example, what the cell says: "conformant", or a phrase of its reason)
CASES = {
    "flax mha float64": ("flax", "mha", FLAX_MHA, "float64", MHA_PADDING, "conformant"),
    "flax mha float32 H*d_head != d_model": ("flax", "mha", FLAX_MHA, "float32", MHA_CAUSAL, "conformant"),
    "flax mha float32 masked row": ("flax", "mha", FLAX_MHA, "float32", MHA_ROW, ROW),
    "flax dpa float32": ("flax", "mha", FLAX_DPA, "float32", MHA_CAUSAL, "conformant"),
    "flax dpa float64": ("flax", "mha", FLAX_DPA, "float64", MHA_PADDING, "float64 computed at float32 accuracy"),
    "flax dpa float32 masked row": ("flax", "mha", FLAX_DPA, "float32", MHA_ROW, ROW),
    "equinox mha float64": ("equinox", "mha", EQX_MHA, "float64", MHA_CAUSAL, "conformant"),
    "equinox mha float64 masked row": ("equinox", "mha", EQX_MHA, "float64", MHA_ROW, ROW),
    "flax lstm float64": ("flax", "lstm_classifier", FLAX_LSTM, "float64", LSTM, "conformant"),
    "flax optimized lstm float32": ("flax", "lstm_classifier", FLAX_OPT_LSTM, "float32", LSTM_3, "conformant"),
    "equinox lstm float64": ("equinox", "lstm_classifier", EQX_LSTM, "float64", LSTM_3, "conformant"),
}


# --- checks run in the subprocess (they need JAX with x64) ----------------------------------------

def _arrays(component: str, example: dict) -> tuple[dict, dict]:
    from conformance import generate
    from conformance.spec import load_spec

    return generate.make_arrays(load_spec(ROOT / "spec" / f"{component}.md"), example)


def check_flax_mha_params_put_each_heads_columns_at_kernel_h() -> None:
    from impls.jax.flax_nnx import mha_params

    w, _ = _arrays("mha", MHA_CAUSAL)  # d_model 5, 3 heads of 3
    p = mha_params(w, 3, 3)
    for h in range(3):  # head h = columns 3h .. 3h+2 of W_q, rows 3h .. 3h+2 of W_o (spec/mha.md §3, §6.2)
        np.testing.assert_array_equal(p["query"]["kernel"][:, h, :], w["W_q"][:, 3 * h:3 * h + 3])
        np.testing.assert_array_equal(p["value"]["bias"][h], w["b_v"][3 * h:3 * h + 3])
        np.testing.assert_array_equal(p["out"]["kernel"][h], w["W_o"][3 * h:3 * h + 3])
    np.testing.assert_array_equal(p["out"]["bias"], w["b_o"])


def check_flax_lstm_params_give_gate_k_the_kth_block() -> None:
    from impls.jax.flax_nnx import lstm_params

    w, _ = _arrays("lstm_classifier", LSTM)
    H = 4
    cell = lstm_params(w, 2, optimized=False)["layers"][1]["cell"]
    for k, (i_name, h_name) in enumerate((("ii", "hi"), ("if_", "hf"), ("ig", "hg"), ("io", "ho"))):
        np.testing.assert_array_equal(cell[i_name]["kernel"], w["W_x_1"][:, k * H:(k + 1) * H])
        np.testing.assert_array_equal(cell[h_name]["kernel"], w["W_h_1"][:, k * H:(k + 1) * H])
        np.testing.assert_array_equal(cell[h_name]["bias"], w["b_1"][k * H:(k + 1) * H])
        assert "bias" not in cell[i_name]  # the input Linears have none: the one bias is added once
    optimized = lstm_params(w, 2, optimized=True)
    np.testing.assert_array_equal(optimized["layers"][0]["cell"]["dense_h"]["bias"], w["b_0"])
    np.testing.assert_array_equal(optimized["classifier"]["kernel"], w["W_out"])


def check_equinox_converters_transpose_to_out_in() -> None:
    import equinox as eqx
    import jax

    from impls.jax.equinox import load_cell, load_mha

    w, _ = _arrays("mha", MHA_CAUSAL)
    layer = eqx.nn.MultiheadAttention(3, 5, qk_size=3, vo_size=3, use_query_bias=True, use_key_bias=True,
                                      use_value_bias=True, use_output_bias=True, key=jax.random.key(0))
    layer = load_mha(layer, w)
    np.testing.assert_array_equal(layer.key_proj.weight, w["W_k"].T)  # (H * d_head, d_model)
    np.testing.assert_array_equal(layer.output_proj.weight, w["W_o"].T)
    np.testing.assert_array_equal(layer.query_proj.bias, w["b_q"])
    w, _ = _arrays("lstm_classifier", LSTM)
    cell = load_cell(eqx.nn.LSTMCell(4, 4, key=jax.random.key(0)), w["W_x_1"], w["W_h_1"], w["b_1"])
    np.testing.assert_array_equal(cell.weight_ih, w["W_x_1"].T)  # (4H, in), blocks i, f, g, o as the spec's
    np.testing.assert_array_equal(cell.bias, w["b_1"])


def check_fully_masked_row_attends_uniformly() -> None:
    """The deviation itself, seen through the adapter: weight 1/Lk on every key (spec/mha.md §7.4 says 0)."""
    from conformance.registry import resolve

    w, x = _arrays("mha", MHA_ROW)
    x["attention_mask"][0, 1] = False
    instance = resolve("mha", FLAX_MHA).load().build(MHA_ROW, dtype="float64", device="cpu")
    instance.load(w)
    _, weights = instance(x)  # (B, H, Lq, Lk)
    np.testing.assert_allclose(weights[0, :, 1], 1 / MHA_ROW["Lk"], rtol=1e-15)


def check_flax_calls_depend_on_the_last_load_only() -> None:
    """spec/mha.md §11.5 through the adapter that merges a fresh module per call and sows into it: nothing a
    call, a vjp or another load does stays behind (the harness's own check needs a second shape per cell)."""
    from conformance.registry import resolve

    w, x = _arrays("mha", MHA_PADDING)
    other, y = _arrays("mha", {**MHA_PADDING, "seed": 7, "Lq": 2})
    instance = resolve("mha", FLAX_MHA).load().build(MHA_PADDING, dtype="float64", device="cpu")
    instance.load(w)
    first = instance(x)
    instance.vjp(x, {"output": np.ones_like(first[0]), "attention_weights": np.ones_like(first[1])})
    instance.load(other)
    instance(y)
    instance.load(w)
    for before, after in zip(first, instance(x)):
        np.testing.assert_array_equal(before, after)


def check_float64_stays_float64() -> None:
    from conformance.registry import resolve

    w, x = _arrays("lstm_classifier", LSTM)
    instance = resolve("lstm_classifier", EQX_LSTM).load().build(LSTM, dtype="float64", device="cpu")
    instance.load(w)
    assert [o.dtype for o in instance(x)] == [np.float64] * 4
    grads = instance.vjp(x, {n: np.ones_like(o) for n, o in zip(("logits", "hidden_states", "h_n", "c_n"),
                                                                 instance(x))})
    assert set(grads) == {"x", *w} and all(g.dtype == np.float64 for g in grads.values())


CHECKS = {"flax": (check_flax_mha_params_put_each_heads_columns_at_kernel_h,
                   check_flax_lstm_params_give_gate_k_the_kth_block, check_fully_masked_row_attends_uniformly,
                   check_flax_calls_depend_on_the_last_load_only),
          "equinox": (check_equinox_converters_transpose_to_out_in, check_float64_stays_float64)}


def observe(libraries: list[str]) -> dict:
    """Each case of `libraries` as a one-example cell without a ledger: [verdict, reason, gradients' verdict];
    and each check's outcome: "ok" or its failure."""
    from conformance.engine import run_cell
    from conformance.registry import resolve
    from conformance.spec import load_spec

    cells, checks = {}, {}
    for case, (library, component, target, dtype, example, expected) in CASES.items():
        if library in libraries:
            spec = load_spec(ROOT / "spec" / f"{component}.md")
            # a deviating cell is not shrunk (its reason still names the likely cause): it saves most of the time
            cell = run_cell(spec, resolve(component, target), dtype, "cpu", example=example, ledger=[],
                            shrink=expected == "conformant")
            cells[case] = [cell.verdict, cell.reason, (cell.gradients or {}).get("verdict")]
    for library in libraries:
        for check in CHECKS[library]:
            try:
                check()
                checks[check.__name__] = "ok"
            except Exception as e:  # reported, and asserted on by the test below
                checks[check.__name__] = f"{type(e).__name__}: {e}"
    return {"cells": cells, "checks": checks}


# --- the tests ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def observed() -> dict:
    libraries = [lib for lib, present in HAS.items() if present]
    if not libraries:
        pytest.skip("neither Flax nor Equinox is installed")
    proc = subprocess.run([sys.executable, __file__, *libraries], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _needs(library: str):
    return pytest.mark.skipif(not HAS[library], reason=REASONS[library])


@pytest.mark.parametrize("case", [pytest.param(c, marks=_needs(CASES[c][0])) for c in CASES])
def test_each_case_is_conformant_or_deviates_where_found(observed, case):
    """Conformant cells have conformant gradients too; the others fail in the one way found (module docstrings
    of impls/jax/flax_nnx.py and impls/jax/equinox.py)."""
    verdict, reason, gradients = observed["cells"][case]
    expected = CASES[case][-1]
    if expected == "conformant":
        assert (verdict, gradients) == ("conformant", "conformant"), reason
    else:
        assert verdict == "non-conformant" and expected in reason, reason


@pytest.mark.parametrize("library, check", [pytest.param(lib, c.__name__, marks=_needs(lib))
                                            for lib, checks in CHECKS.items() for c in checks])
def test_converters_and_outputs(observed, library, check):
    assert observed["checks"][check] == "ok"


if __name__ == "__main__":  # the observations of the libraries named, for the tests above
    print(json.dumps(observe(sys.argv[1:])))
