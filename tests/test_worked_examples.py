"""The reference reproduces every worked example, and PyTorch's own layer agrees with them."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import generate
from conformance.engine import reference_forward
from conformance.spec import find_spec_dir, list_components, load_spec

EXAMPLES = [(c, ex) for c in list_components() for ex in load_spec(find_spec_dir() / f"{c}.md").examples]


@pytest.mark.parametrize("component, example", EXAMPLES, ids=[f"{c}:{e.name}" for c, e in EXAMPLES])
def test_reference_reproduces_worked_example(component, example):
    spec = load_spec(find_spec_dir() / f"{component}.md")
    weights, inputs = generate.worked_arrays(spec, example.weights, example.inputs)
    got = reference_forward(component)(example.config, weights, inputs)
    assert set(example.expected) == set(spec.outputs), "a worked example gives every output"
    for name, want in example.expected.items():
        if spec.outputs[name].dtype != "float":
            np.testing.assert_array_equal(got[name], np.asarray(want), err_msg=f"{component} {example.name!r} {name!r}")
        else:
            np.testing.assert_allclose(got[name], np.asarray(want, dtype=np.float64), rtol=0, atol=1e-12,
                                       err_msg=f"{component} worked example {example.name!r}, output {name!r}")


GRADIENT_EXAMPLES = [(c, ex) for c, ex in EXAMPLES if ex.gradients]


def test_some_worked_examples_give_gradients():
    assert any(c == "ffn" for c, _ in GRADIENT_EXAMPLES)


@pytest.mark.parametrize("component, example", GRADIENT_EXAMPLES, ids=[f"{c}:{e.name}" for c, e in GRADIENT_EXAMPLES])
def test_reference_backward_reproduces_worked_example(component, example):
    """spec/README.md, "Gradients": a worked example's gradients, for its cotangents, to 1e-12."""
    import importlib

    spec = load_spec(find_spec_dir() / f"{component}.md")
    weights, inputs = generate.worked_arrays(spec, example.weights, example.inputs)
    cotangents = {name: np.asarray(c, dtype=np.float64) for name, c in example.cotangents.items()}
    got = importlib.import_module(f"impls.numpy.{component}").backward(example.config, weights, inputs, cotangents)
    assert set(example.gradients) <= set(got), sorted(set(example.gradients) - set(got))
    for name, want in example.gradients.items():
        np.testing.assert_allclose(got[name].value, np.asarray(want, dtype=np.float64), rtol=0, atol=1e-12,
                                   err_msg=f"{component} worked example {example.name!r}, gradient {name!r}")


def _torch_can_express(example) -> str | None:
    c = example.config
    if c["d_head"] * c["num_heads"] != c["d_model"]:
        return "torch.nn.MultiheadAttention needs d_head * num_heads == d_model"
    if c["mask"] not in ("none", "padding"):
        return "only padding masks map onto key_padding_mask without a fully masked row"
    return None


MHA_EXAMPLES = [ex for c, ex in EXAMPLES if c == "mha"]


@pytest.mark.parametrize("example", MHA_EXAMPLES, ids=[e.name for e in MHA_EXAMPLES])
def test_torch_multiheadattention_agrees_with_worked_example(example):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    from torch_reference import torch_mha

    if (reason := _torch_can_express(example)) is not None:
        pytest.skip(reason)
    spec = load_spec(find_spec_dir() / "mha.md")
    got = torch_mha(example.config, example.weights, generate.worked_arrays(spec, example.weights, example.inputs)[1])
    for name, want in example.expected.items():
        np.testing.assert_allclose(got[name], np.asarray(want, dtype=np.float64), rtol=0, atol=1e-12)
