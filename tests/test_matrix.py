"""The dtype x device x mode axes of the matrix.

Every cell is recorded: unsupported dtypes and modes and absent devices say so
with their reason; low-precision cells are measured in their own epsilon; the
GPU code path of each framework adapter runs here on a forced device list; and
compiled cells compile once per shape group, not once per example.
"""

from __future__ import annotations

import importlib.util

import ml_dtypes
import numpy as np
import pytest

from conformance import generate, tolerances
from conformance.api import check
from conformance.engine import COMPILED_SHAPES, run_cell
from conformance.vocabulary import DTYPES, numpy_dtype, UsageError
from conformance.registry import _describe, find_shipped, resolve
from impls.numpy.mha import Implementation as NumpyAttention

torch_installed = importlib.util.find_spec("torch") is not None
keras_installed = importlib.util.find_spec("keras") is not None


def test_every_dtype_has_its_epsilon_and_a_budget_constant():
    for name in DTYPES:
        assert tolerances.EPS[name] == float(ml_dtypes.finfo(numpy_dtype(name)).eps)
        assert tolerances.K[name] > 0


def test_an_unknown_dtype_names_the_choices():
    with pytest.raises(UsageError, match="unknown dtype 'float8'; valid: float64, float32, float16, bfloat16"):
        numpy_dtype("float8")


def test_unsupported_dtype_and_mode_are_recorded_with_their_reason(root, mha_spec):
    plugin = resolve("mha", f"{root / 'tests' / 'wrong_mha.py'}:Correct")  # float32 and float64, eager only
    cell = run_cell(mha_spec, plugin, "bfloat16", "cpu")
    assert (cell.verdict, cell.reason) == ("unsupported", "dtype bfloat16 not supported; supported: float32, float64")
    cell = run_cell(mha_spec, plugin, "float32", "cpu", "compiled")
    assert (cell.verdict, cell.reason) == ("unsupported", "mode compiled not supported; supported: eager")
    assert cell.examples == 0 and cell.mode == "compiled"


def test_an_absent_device_is_not_available_and_the_environment_is_still_recorded(mha_spec):
    cell = run_cell(mha_spec, find_shipped("mha", "numpy"), "float32", "cuda")
    assert cell.verdict == "not-available"
    assert cell.reason == "device cuda not available on this machine; numpy sees: cpu"
    assert cell.environment["numpy"] and cell.environment["cpu"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_cells_are_measured_in_their_own_epsilon(mha_spec, dtype):
    cell = run_cell(mha_spec, find_shipped("mha", "numpy"), dtype, "cpu", max_examples=20)
    assert cell.verdict == "conformant", cell.reason
    assert cell.k == tolerances.K[dtype] and 0 < cell.max_ratio <= 1
    # the NumPy reference runs in float64 on the rounded inputs, so a low-precision
    # candidate's error is a few of its own eps, not thousands of float64's
    assert 0 < max(cell.max_error.values()) < cell.k * 10


def test_a_result_in_the_wrong_precision_is_rejected(mha_spec):
    class Float32Inside(NumpyAttention):
        """Claims float16, computes in float32 and returns float32: the dtype check catches it."""

        dtypes = ("float16",)

        def build(self, config, *, dtype, device):
            return super().build(config, dtype="float32", device=device)

    cell = check("mha", Float32Inside(), dtypes=["float16"], devices=["cpu"], modes=["eager"], examples=5)[0]
    assert cell.verdict == "non-conformant" and "has dtype float32, expected float16" in cell.reason


@pytest.mark.skipif(not torch_installed, reason="PyTorch is not installed")
def test_torch_gpu_code_path_runs_on_a_forced_device_list(monkeypatch, mha_spec):
    import impls.torch as torch_impls

    monkeypatch.setattr(torch_impls, "devices", lambda: ["cpu", "cuda"])
    monkeypatch.setitem(torch_impls.DEVICE_NAMES, "cuda", "cpu")  # "cuda" placed on the CPU
    cell = run_cell(mha_spec, find_shipped("mha", "torch"), "float32", "cuda", max_examples=10)
    assert (cell.device, cell.verdict) == ("cuda", "conformant"), cell.reason
    env = cell.environment
    assert env["torch.backends.cuda.matmul.fp32_precision"] == "ieee"
    assert env["torch.backends.cudnn.rnn.fp32_precision"] == "ieee"
    assert env["torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction"] is False
    assert env["torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction"] is False


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_gpu_code_path_runs_on_a_forced_device_list(monkeypatch, mha_spec):
    import impls.keras as keras_impls

    monkeypatch.setattr(keras_impls, "devices", lambda: ["cpu", "cuda"])
    monkeypatch.setitem(keras_impls.DEVICE_SCOPES, "cuda", "cpu:0")
    monkeypatch.setitem(keras_impls.TORCH_DEVICE_SCOPES, "cuda", "cpu")
    cell = run_cell(mha_spec, find_shipped("mha", "keras"), "float32", "cuda", max_examples=10)
    assert (cell.device, cell.verdict) == ("cuda", "conformant"), cell.reason
    flags = {"tensorflow": "tf.config.experimental.tensor_float_32_execution_enabled",
             "jax": "jax_default_matmul_precision", "torch": "torch.backends.cuda.matmul.fp32_precision"}
    pinned = {"tensorflow": False, "jax": "highest", "torch": "ieee"}
    assert cell.environment[flags[cell.backend]] == pinned[cell.backend]


class CountingCompiler(NumpyAttention):
    """NumPy attention with a 'compiled' mode that records each (config, input shapes) it would compile for."""

    modes = ("eager", "compiled")

    def __init__(self):
        self.compilations: list[tuple] = []

    def build(self, config, *, dtype, device, mode="eager"):
        inner = super().build(config, dtype=dtype, device=device)
        if mode == "eager":
            return inner
        compilations = self.compilations

        class Compiled:
            def load(self, weights):
                inner.load(weights)

            def __call__(self, inputs):
                key = (tuple(sorted(config.items())),
                       tuple((k, None if v is None else v.shape) for k, v in inputs.items()))
                if key not in compilations:
                    compilations.append(key)
                return inner(inputs)

        return Compiled()


def test_compiled_cells_compile_per_shape_group_not_per_example(mha_spec):
    impl = CountingCompiler()
    counted = _describe(impl, "tests.test_matrix:CountingCompiler", "plugin", default_name="CountingCompiler")
    # in this process (run_cell, not check's worker processes), to read the compilations it counted
    cell = run_cell(mha_spec, counted, "float32", "cpu", "compiled", max_examples=100)
    assert cell.verdict == "conformant", cell.reason
    groups = max(1, COMPILED_SHAPES // len(generate.strata(mha_spec))) * len(generate.strata(mha_spec))
    assert cell.examples >= 100 and cell.compiles == len(impl.compilations) <= groups
    assert cell.compile_seconds <= cell.seconds
    eager = check("mha", impl, dtypes=["float32"], devices=["cpu"], modes=["eager"], examples=20)[0]
    assert eager.verdict == "conformant" and eager.compiles == 0 and eager.compile_seconds == 0


def test_shape_groups_fix_every_parameter_but_magnitude_and_seed(mha_spec):
    fixed = generate.strata(mha_spec)[0]
    groups = generate.shape_groups(mha_spec, fixed, 2, np.random.default_rng(0))
    assert len(groups) == 2 and all(g.items() >= fixed.items() for g in groups)

    seen = []

    from hypothesis import given, settings

    @settings(max_examples=30, database=None, deadline=None)
    @given(generate.examples(mha_spec, fixed, groups=groups))
    def draw(ex):
        seen.append(ex)

    draw()
    for ex in seen:
        assert {k: v for k, v in ex.items() if k not in ("scale_exp", "seed")} in groups


@pytest.mark.skipif(not torch_installed, reason="PyTorch is not installed")
def test_torch_compiled_cell_runs_through_torch_compile(mha_spec):
    """A real torch.compile cell (slow: the first compilation in a process takes tens of seconds)."""
    from conformance.spec import find_spec_dir, load_spec

    ffn = load_spec(find_spec_dir() / "ffn.md")
    cell = run_cell(ffn, find_shipped("ffn", "torch"), "float32", "cpu", "compiled", max_examples=12)
    assert cell.verdict == "conformant", cell.reason
    assert cell.compiles == len(generate.strata(ffn)) and cell.compile_seconds > 0


@pytest.mark.skipif(not torch_installed, reason="PyTorch is not installed")
def test_bfloat16_crosses_into_torch_and_back_exactly():
    import torch

    from impls.torch import to_numpy, to_tensor

    values = np.array([1.0, -2.5, 3.140625, 1e-3, 6.5e4], dtype=np.float32).astype(numpy_dtype("bfloat16"))
    t = to_tensor(values)
    assert t.dtype == torch.bfloat16
    back = to_numpy(t)
    assert back.dtype == numpy_dtype("bfloat16") and np.array_equal(back, values)
