"""Hugging Face Transformers' attention interfaces and BertLayer as implementations (impls/torch/hf_transformers.py).

What each adapter gives (transformers 5.24.0, torch 2.13.0): the SDPA
attention and both BertLayer variants follow the specs; the eager attention
spreads a fully masked query row uniformly over its keys (mha §7.4), which
the ledger entry proposed here records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="Hugging Face Transformers is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from conformance import deviations, generate  # noqa: E402
from conformance.engine import ConfigUnsupported, Runner, run_cell  # noqa: E402
from conformance.registry import resolve  # noqa: E402
from conformance.spec import load_spec  # noqa: E402

from impls.torch import hf_transformers  # noqa: E402  (needs transformers)

MODULE = "impls.torch.hf_transformers"
EAGER, SDPA, BERT, BERT_SDPA = (f"{MODULE}:{c}" for c in ("EagerAttention", "SDPAAttention", "BertLayerEager",
                                                          "BertLayerSDPA"))
SPECS = Path(__file__).resolve().parent.parent / "spec"


@pytest.fixture(scope="module")
def block_spec():
    return load_spec(SPECS / "encoder_block.md")


def _eager_row_entry(label: str) -> list[deviations.Deviation]:
    """The ledger entry proposed for the eager attention's fully masked rows, naming the adapter as resolved."""
    return deviations.parse([{
        "id": "transformers-eager-attention-fully-masked-row", "implementation": label, "component": "mha",
        "condition": "fully_masked_query_row", "sections": ["7.4"], "bound": "region",
        "explanation": "eager_attention_forward adds finfo.min to masked scores: a fully masked row is uniform."}])


# --- the converters (the porting tables in impls/torch/hf_transformers.py) ---

def test_attention_converter_transposes_each_projection(mha_spec):
    example = {"d_model": 5, "num_heads": 2, "d_head": 3, "dropout": 0.0, "B": 1, "Lq": 2, "Lk": 3,
               "mask": "none", "scale_exp": 0, "seed": 1}
    weights, _ = generate.make_arrays(mha_spec, example)
    module = hf_transformers.TransformersAttention(5, 2, 3, 0.0, "eager").to(torch.float64)
    hf_transformers.load_attention(module, weights)
    for linear, w, b in ((module.query, "W_q", "b_q"), (module.key, "W_k", "b_k"), (module.value, "W_v", "b_v"),
                         (module.output, "W_o", "b_o")):
        np.testing.assert_array_equal(linear.weight.detach().numpy(), weights[w].T)
        np.testing.assert_array_equal(linear.bias.detach().numpy(), weights[b])


def test_bert_converter_puts_each_canonical_weight_where_bert_expects_it(block_spec):
    config = {"d_model": 4, "num_heads": 2, "d_head": 2, "d_ff": 6, "activation": "gelu", "norm": "post",
              "epsilon": 1e-3, "dropout": 0.1}
    weights, _ = generate.make_arrays(block_spec, {**config, "B": 1, "T": 2, "mask": "none", "scale_exp": 0,
                                                   "offset": 0, "weight_exp": 0, "seed": 3})
    module = hf_transformers.BertLayerAdapter(config, "eager").to(torch.float64)
    hf_transformers.load_bert_layer(module, weights)
    got = {n: p.detach().numpy() for n, p in module.layer.named_parameters()}
    pairs = {"attention.self.query": ("W_q", "b_q"), "attention.self.key": ("W_k", "b_k"),
             "attention.self.value": ("W_v", "b_v"), "attention.output.dense": ("W_o", "b_o"),
             "intermediate.dense": ("W_1", "b_1"), "output.dense": ("W_2", "b_2")}
    for name, (w, b) in pairs.items():
        np.testing.assert_array_equal(got[f"{name}.weight"], weights[w].T)
        np.testing.assert_array_equal(got[f"{name}.bias"], weights[b])
    for name, (g, b) in {"attention.output.LayerNorm": ("gamma_1", "beta_1"),
                         "output.LayerNorm": ("gamma_2", "beta_2")}.items():
        np.testing.assert_array_equal(got[f"{name}.weight"], weights[g])
        np.testing.assert_array_equal(got[f"{name}.bias"], weights[b])
    assert module.config.hidden_act == "gelu" and module.config.layer_norm_eps == 1e-3  # erf GELU (ffn §6)


# --- mha: the attention interfaces ---

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sdpa_attention_is_conformant_fully_masked_rows_included(mha_spec, dtype):
    """A fully masked row gets a zero context and output b_o (§7.4), through the boolean mask of sdpa_mask."""
    cell = run_cell(mha_spec, resolve("mha", SDPA), dtype, "cpu", max_examples=16, ledger=[])
    assert cell.verdict == "conformant", cell.reason
    assert cell.outputs_compared == ["output"]
    assert cell.gradients["verdict"] == "conformant", cell.gradients["reason"]


def test_eager_attention_spreads_a_fully_masked_row_uniformly(mha_spec):
    impl = resolve("mha", EAGER)
    cell = run_cell(mha_spec, impl, "float64", "cpu", max_examples=16, ledger=[])
    assert cell.verdict == "non-conformant"
    assert "only where fully_masked_query_row (§7.4)" in cell.reason
    assert cell.gradients["verdict"] == "conformant", cell.gradients["reason"]
    # the proposed ledger entry covers it, and only it
    known = run_cell(mha_spec, impl, "float32", "cpu", max_examples=16, ledger=_eager_row_entry(impl.label))
    assert known.verdict == "known-deviation", known.reason
    assert known.deviation == "transformers-eager-attention-fully-masked-row"
    # what the row gets: weights 1/Lk in every head, the mean of the values
    example = {"d_model": 4, "num_heads": 2, "d_head": 3, "dropout": 0.0, "B": 1, "Lq": 2, "Lk": 3,
               "mask": "none", "scale_exp": 0, "seed": 5}
    weights, inputs = generate.make_arrays(mha_spec, example)
    instance = impl.load().build({k: example[k] for k in ("d_model", "num_heads", "d_head", "dropout")},
                                 dtype="float64", device="cpu")
    instance.load(weights)
    inputs["attention_mask"] = np.array([[True, False, True], [False, False, False]])  # (Lq, Lk): row 1 sees none
    _, attention = instance(inputs)
    np.testing.assert_allclose(attention[0, :, 1], np.full((2, 3), 1 / 3))


@pytest.mark.parametrize("mask", ["none", "padding", "causal"])
def test_eager_attention_is_conformant_where_no_row_is_fully_masked(mha_spec, mask):
    runner = Runner(mha_spec, resolve("mha", EAGER), "float32", "cpu", ledger=[])
    for i, (d, h, dh, b, lq, lk) in enumerate([(4, 2, 3, 2, 3, 5), (7, 3, 2, 1, 4, 4), (8, 1, 8, 3, 5, 2)]):
        outcome = runner.run({"d_model": d, "num_heads": h, "d_head": dh, "dropout": 0.1, "B": b, "Lq": lq,
                              "Lk": lk, "mask": mask, "seed": 10 * i + 1, "scale_exp": i % 2})
        assert outcome.ratio <= 1.0


def test_sdpa_attention_is_not_causal_without_a_mask_because_the_module_says_so():
    """sdpa_attention_forward takes `getattr(module, "is_causal", True)`: a module without the attribute gets
    causal attention when no mask is given. Ours sets it False, as BertSelfAttention does in an encoder."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = hf_transformers.TransformersAttention(4, 1, 4, 0.0, "sdpa").to(torch.float64).eval()
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    np.testing.assert_allclose(module(x, x, x).detach(), module(x, x, x, torch.ones(3, 3, dtype=torch.bool)).detach())
    q = torch.randn(1, 1, 3, 4, dtype=torch.float64)  # (B, H, L, d_head)
    bare = torch.nn.Module()
    causal, _ = sdpa_attention_forward(bare, q, q, q, None)
    assert torch.allclose(causal[0, 0, 0], q[0, 0, 0])  # the first query saw only the first key


# --- encoder_block: BertLayer ---

def _block_examples() -> list[dict]:
    """Post-norm examples BertLayer can express (d_head = d_model / num_heads), both activations, both epsilons.

    Fixed examples rather than a search: the harness's draws rarely have num_heads * d_head == d_model, and a
    searched cell spends most of a minute drawing and skipping the others (the CLI runs in the report did).
    """
    shapes = [(8, 2, 6, 3, 4), (6, 3, 7, 2, 5), (12, 4, 16, 1, 6), (4, 1, 3, 2, 3)]
    return [{"d_model": d, "num_heads": h, "d_head": d // h, "d_ff": f, "activation": ("gelu", "relu")[i % 2],
             "norm": "post", "epsilon": (1e-3, 1e-5)[i % 2], "dropout": 0.1, "B": b, "T": t,
             "mask": ("padding", "none")[i // 3], "scale_exp": i % 2, "offset": 0, "weight_exp": 0, "seed": 10 * i + 1}
            for i, (d, h, f, b, t) in enumerate(shapes)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", [BERT, BERT_SDPA])
def test_bert_layer_is_conformant(block_spec, target, dtype):
    impl = resolve("encoder_block", target)
    runner = Runner(block_spec, impl, dtype, "cpu", ledger=[])
    for example in _block_examples():
        assert runner.run(example).ratio <= 1.0
    cell = run_cell(block_spec, impl, dtype, "cpu", example=_block_examples()[0], ledger=[])  # its gradients too
    assert cell.verdict == "conformant", cell.reason
    assert cell.outputs_compared == (["y", "attention_weights"] if target == BERT else ["y"])
    assert cell.gradients["verdict"] == "conformant", cell.gradients["reason"]


@pytest.mark.parametrize("changed, reason", [({"norm": "pre"}, "pre-norm (BertLayer is post-norm only)"),
                                             ({"d_head": 3}, "num_heads * d_head != d_model")])
def test_bert_layer_refuses_what_it_cannot_express(block_spec, changed, reason):
    example = {"d_model": 4, "num_heads": 2, "d_head": 2, "d_ff": 6, "activation": "relu", "norm": "post",
               "epsilon": 1e-5, "dropout": 0.0, "B": 1, "T": 2, "mask": "padding", "scale_exp": 0, "offset": 0,
               "weight_exp": 0, "seed": 1, **changed}
    with pytest.raises(ConfigUnsupported, match=reason.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        Runner(block_spec, resolve("encoder_block", BERT), "float64", "cpu", ledger=[]).run(example)


def test_the_registered_eager_attention_is_a_known_deviation_under_the_built_in_ledger(mha_spec):
    from conformance.registry import find_shipped

    cell = run_cell(mha_spec, find_shipped("mha", "transformers.eager_attention"), "float32", "cpu", max_examples=16)
    assert cell.verdict == "known-deviation", cell.reason
    assert cell.deviation == "transformers-eager-attention-fully-masked-row"
