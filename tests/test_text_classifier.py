"""spec/text_classifier.md beyond the generic tests: the frameworks' own compositions of the model
(impls/torch/builtin_classifier.py, impls/keras/builtin_classifier.py), and what Keras' poolings do with padding,
the evidence behind the ledger's keras-functional-classifier-*-pools-padding entries.

Keras runs on the backend of this process (KERAS_BACKEND, default tensorflow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conformance.spec import load_spec

SPEC = Path(__file__).resolve().parent.parent / "spec" / "text_classifier.md"
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
needs_keras = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")


@pytest.fixture(scope="module")
def padded():
    """§8.2: two heads, max pooling, and a first sequence of one real token and two padding ids."""
    example = load_spec(SPEC).examples[1]
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in example.weights.items()}
    return example.config, weights, {"tokens": np.asarray(example.inputs["tokens"], dtype=np.int64)}, example


# --- PyTorch (§5.2: d_model split across the heads; the state_dict round trip) ---

@needs_torch
def test_torch_adapter_refuses_heads_that_do_not_split_d_model(padded):
    from impls.torch.builtin_classifier import TransformerEncoderClassifier, TransformerEncoderClassifierStateDict

    config = {**padded[0], "d_model": 4, "num_heads": 2, "d_head": 3}
    for impl in (TransformerEncoderClassifier(), TransformerEncoderClassifierStateDict()):
        assert impl.supports(config).startswith("num_heads * d_head != d_model")
        assert impl.supports(padded[0]) is None
        with pytest.raises(ValueError, match=r"num_heads \* d_head != d_model"):
            impl.build(config, dtype="float64", device="cpu")


@needs_torch
def test_torch_state_dict_variant_calls_a_fresh_module_loaded_from_a_saved_state_dict(padded, monkeypatch):
    import torch

    from impls.torch.builtin_classifier import EncoderClassifier, TransformerEncoderClassifierStateDict

    config, weights, inputs, example = padded
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, **kw: loaded.append(f.getbuffer().nbytes) or real_load(f, **kw))
    instance = TransformerEncoderClassifierStateDict().build(config, dtype="float64", device="cpu")
    instance.load(weights)
    first = instance.forward
    instance.load(weights)
    assert len(loaded) == 2 and min(loaded) > 0  # a serialized state_dict each time, read back by torch.load
    assert isinstance(instance.forward, EncoderClassifier) and instance.forward not in (instance.module, first)
    built = {p.data_ptr() for p in instance.module.parameters()}
    assert not built & {p.data_ptr() for p in instance.forward.parameters()}  # no tensor shared with the built one
    y, pooled = instance(inputs)
    np.testing.assert_allclose(y, example.expected["y"], rtol=0, atol=1e-12)


@needs_torch
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_torch_default_encoder_zeroes_padded_rows_and_the_pooling_leaves_them_out(padded):
    """§5.3: the nested-tensor path (the default, even num_heads) gives 0 at padding, which no pooled value sees."""
    import torch

    from impls.torch.builtin_classifier import TransformerEncoderClassifier

    config, weights, inputs, example = padded
    instance = TransformerEncoderClassifier().build(config, dtype="float64", device="cpu")
    instance.load(weights)
    tokens = torch.from_numpy(inputs["tokens"])
    module = instance.module
    with torch.no_grad():
        x = module.token_embedding(tokens) + module.sinusoid[: tokens.shape[1]]
        h = module.encoder(x, src_key_padding_mask=tokens == 0)  # (B, T, d_model)
    assert (h[tokens == 0] == 0).all()  # nested tensors padded back with zeros
    y, pooled = instance(inputs)
    np.testing.assert_allclose(pooled, example.expected["pooled"], rtol=0, atol=1e-12)


# --- Keras: the saved-and-loaded model, and what the poolings do with padding (§5.3) ---

@needs_keras
def test_keras_saved_variant_calls_a_model_loaded_from_a_keras_file(padded, monkeypatch):
    import keras

    from impls.keras.builtin_classifier import SavedFunctionalModel

    config, weights, inputs, example = padded
    files = []
    real_load = keras.saving.load_model

    def load_model(path, **kwargs):
        files.append((str(path), Path(path).stat().st_size))
        return real_load(path, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", load_model)
    instance = SavedFunctionalModel().build(config, dtype="float64", device="cpu")
    instance.load(weights)
    assert len(files) == 1 and files[0][0].endswith(".keras") and files[0][1] > 0
    assert isinstance(instance.layer, keras.Model) and instance.layer is not instance.built_model
    built = {id(v) for v in instance.built_model.weights}
    assert not built & {id(v) for v in instance.layer.weights}
    y, pooled = instance(inputs)
    # the second sequence has no padding: that row is the spec's; the first is pooled over its padding too
    np.testing.assert_allclose(pooled[1], example.expected["pooled"][1], rtol=0, atol=1e-12)
    assert not np.allclose(pooled[0], example.expected["pooled"][0])


def _embedded(keras):
    """Embedding(mask_zero=True) whose padding id 0 has the largest vector: tokens [[1, 2, 0]] -> mask [[T, T, F]]."""
    embedding = keras.layers.Embedding(3, 2, mask_zero=True, dtype="float64")
    embedding.build()
    embedding.embeddings.assign(np.array([[10.0, 10.0], [1.0, -1.0], [3.0, 1.0]]))
    return embedding(np.array([[1, 2, 0]]))  # (1, 3, 2), carrying Keras' mask


@needs_keras
def test_keras_global_max_pooling_ignores_the_mask_it_is_given():
    """keras/src/layers/pooling/global_max_pooling1d.py: call(self, inputs) is ops.max over every step."""
    import keras

    pooling = keras.layers.GlobalMaxPooling1D(dtype="float64")
    assert not pooling.supports_masking
    with pytest.warns(UserWarning, match="does not support masking and will therefore destroy the mask"):
        pooled = keras.ops.convert_to_numpy(pooling(_embedded(keras)))
    np.testing.assert_array_equal(pooled, [[10.0, 10.0]])  # the padding row's; over the real tokens: [3, 1]
    with pytest.raises(TypeError, match="mask"):
        pooling(_embedded(keras), mask=np.array([[True, True, False]]))


@needs_keras
def test_keras_global_average_pooling_honours_a_mask_that_reaches_it():
    import keras

    pooled = keras.ops.convert_to_numpy(keras.layers.GlobalAveragePooling1D(dtype="float64")(_embedded(keras)))
    np.testing.assert_array_equal(pooled, [[2.0, 0.0]])  # the mean of the two real tokens only


@needs_keras
def test_keras_drops_the_mask_at_the_encoder_block_so_both_poolings_read_padding(padded):
    """In the functional model the mask never reaches the pooling: the block does not pass it on."""
    import keras

    from impls.keras.builtin_classifier import functional_model, load_model_weights

    config, weights, inputs, _ = padded
    for pooling, reduce in (("max", np.max), ("mean", np.mean)):
        with pytest.warns(UserWarning, match="'block_0' .* will therefore destroy the mask information"):
            model = functional_model({**config, "pooling": pooling}, "float64")
        load_model_weights(model, weights)
        stack = keras.Model(model.input, model.get_layer("block_0").output[0])  # (B, T, d_model)
        with pytest.warns(UserWarning, match="destroy the mask information"):
            h = keras.ops.convert_to_numpy(stack(inputs["tokens"]))
            pooled = keras.ops.convert_to_numpy(model(inputs["tokens"])[1])
        # every position; rtol for the float32 mean of torch and JAX (keras-functional-classifier-*-float64-*)
        np.testing.assert_allclose(pooled, reduce(h, axis=1), rtol=1e-6)
        real = inputs["tokens"][0] != 0
        assert not np.allclose(pooled[0], reduce(h[0, real], axis=0))  # not the real tokens only
