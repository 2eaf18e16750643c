"""The reference's gradients (spec/README.md, "Gradients"): each component's backward pass against finite
differences of its forward pass, over drawn examples of every parameter's domain."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.spec import list_components
from tests.gradient_checks import (STEPS, arrays, check_against_differences, differentiated, drawn, reference,
                                   spec_of)

#: The components whose spec has a `gradient` table, and whose reference a backward pass.
DIFFERENTIATED = [c for c in list_components() if spec_of(c).gradients]


def test_some_components_are_differentiated():
    assert "ffn" in DIFFERENTIATED


@pytest.mark.parametrize("component", DIFFERENTIATED)
def test_the_gradient_table_lists_what_the_backward_pass_gives(component):
    spec = spec_of(component)
    floats = [name for name, t in spec.inputs.items() if t.kind == "float"]
    assert set(spec.gradients) == set(floats) | set(spec.weights)
    assert callable(getattr(reference(component), "backward", None))


@pytest.mark.parametrize("component", DIFFERENTIATED)
def test_backward_agrees_with_finite_differences(component):
    spec = spec_of(component)
    failures = [line for i, example in enumerate(drawn(spec, 40, seed=1))
                for line in check_against_differences(component, example, seed=i)]
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("component", DIFFERENTIATED)
def test_bounds_are_finite_and_cover_the_values_they_scale(component):
    """With eps given every gradient carries a bound of its shape, finite and at least one rounding of the
    value (a bound of 0 would hold a correct implementation to exact arithmetic)."""
    spec = spec_of(component)
    rng = np.random.default_rng(0)
    for example in drawn(spec, 20, seed=2):
        config, weights, inputs, cotangents = arrays(spec, example, rng)
        plain = reference(component).backward(config, weights, inputs, cotangents)
        grads = reference(component).backward(config, weights, inputs, cotangents, eps=2.0**-23)
        for name in differentiated(spec, example):
            g = grads[name]
            assert g.bound is not None and g.bound.shape == g.value.shape, name
            assert np.isfinite(g.bound).all(), (name, example)
            assert (g.bound >= np.abs(g.value) * 0.999).all(), (name, example)
            np.testing.assert_array_equal(g.value, plain[name].value)
            assert plain[name].bound is None


@pytest.mark.parametrize("component", DIFFERENTIATED)
def test_differences_notice_a_gradient_off_by_one_part_in_ten_thousand(component, monkeypatch):
    """The check above can fail: each gradient in turn, off by 1e-4 of itself, is noticed."""
    from impls.numpy.carried import Carried

    spec = spec_of(component)
    module = reference(component)
    right = module.backward
    example = drawn(spec, 1, seed=3)[0]
    config, weights, inputs, cotangents = arrays(spec, example, np.random.default_rng(0))
    grads = right(config, weights, inputs, cotangents)
    largest = max(float(np.abs(g.value).max(initial=0)) for g in grads.values())
    for name in differentiated(spec, example):
        if np.abs(grads[name].value).max(initial=0) <= 1e-12 * largest:
            continue  # 0 in exact arithmetic (mha's b_k): a relative error of it is no error
        def wrong(*args, name=name, **kwargs):
            grads = right(*args, **kwargs)
            return {**grads, name: Carried(grads[name].value * (1 + 1e-4), grads[name].bound)}

        monkeypatch.setattr(module, "backward", wrong)
        # at the first step alone: the smaller one's noise allowance is wider than the error where a layer
        # norm of two features leaves the gradients below it 1e-5 of the largest (text_classifier)
        failures = check_against_differences(component, example, seed=0, steps=STEPS[:1])
        assert any(line.startswith(f"{name}:") for line in failures), name
    monkeypatch.setattr(module, "backward", right)


def test_gradients_are_checked_in_every_dtype():
    """spec/README.md, "Gradients", Calibration: float16 and bfloat16 cells check them as float32 cells do."""
    from conformance.engine import run_cell
    from conformance.registry import resolve

    spec = spec_of("ffn")
    for dtype in ("float32", "float16", "bfloat16"):
        checked = run_cell(spec, resolve("ffn", "numpy"), dtype, "cpu", max_examples=8).gradients
        assert checked["verdict"] == "conformant" and checked["examples"] > 0, (dtype, checked["reason"])


#: A layer norm over values 1e4 from their mean, in bfloat16: its gradients' error bound overflows.
OUT_OF_RANGE = {"d_model": 14, "seed": 1164, "T": 7, "weight_exp": 0, "epsilon": 1e-05, "num_heads": 1,
                "dropout": 0.1, "activation": "gelu", "scale_exp": 5, "norm": "post", "mask": "padding",
                "offset": 10000, "B": 1, "d_ff": 48, "d_head": 15, "gradients": True}


def test_an_example_outside_the_dtypes_range_for_gradients_is_skipped_with_its_reason():
    from conformance.engine import run_cell
    from conformance.registry import resolve

    spec = spec_of("encoder_block")
    record = run_cell(spec, resolve("encoder_block", "numpy"), "bfloat16", "cpu", example=OUT_OF_RANGE).gradients
    assert record["skipped"] == 1 and record["examples"] == 0 and record["verdict"] == "not-checked"
    assert "outside bfloat16's range for the gradients" in record["skip_reason"]
    assert record["reason"].startswith("every example due for the gradients was skipped: ")
    # in float32 the same example's gradients are within range, and compared
    record = run_cell(spec, resolve("encoder_block", "numpy"), "float32", "cpu", example=OUT_OF_RANGE).gradients
    assert record["skipped"] == 0 and record["examples"] == 1
