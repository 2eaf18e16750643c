"""Wrong backward passes under right forward passes, loaded through the plug-in interface.

Each class is one of our own implementations (impls/torch, impls/keras) with
one part of its backward pass broken and its forward pass left as it was: the
cell's forward verdict stays conformant and only the gradient checks
(spec/README.md, "Gradients"; conformance/gradients.py) can reject it.
tests/test_wrong_backward.py checks that they do, with a counterexample that
fails again when replayed. The PyTorch ones are judged in float32; the Keras
one breaks nothing but float64, and is judged there.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from impls.torch import encoder_block, ffn, lstm_classifier, mha


# --- mha: a softmax whose backward forgets the row sum ---------------------------------------------------------

class _SoftmaxWithoutRowSum(torch.autograd.Function):
    """torch.softmax forward; backward p * dp where the Jacobian-vector product is p * (dp - sum(p * dp)): the
    term that keeps every row of weights summing to 1 is forgotten."""

    @staticmethod
    def forward(ctx, scores, dim):
        p = torch.softmax(scores, dim=dim)  # the same call the module makes: the same values
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, dp):
        (p,) = ctx.saved_tensors
        return p * dp, None  # wrong: p * (dp - (p * dp).sum(-1, keepdim=True))


class _SwapSoftmax(TorchFunctionMode):
    """Within it, torch.softmax is `_SoftmaxWithoutRowSum` (the mode is off while it handles a call)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.softmax:
            scores, dim = args[0], kwargs.get("dim") if kwargs else args[1]
            return _SoftmaxWithoutRowSum.apply(scores, dim)
        return func(*args, **(kwargs or {}))


class _AttentionWithoutRowSum(mha.MultiHeadAttention):
    def forward(self, *args, **kwargs):
        with _SwapSoftmax():  # the parent's forward, line for line
            return super().forward(*args, **kwargs)


class SoftmaxBackwardWithoutRowSum(mha.Implementation):
    """Our PyTorch mha whose softmax backward drops `- sum(p * dp)` (mha §12): the forward values are
    torch.softmax's own, so the outputs are unchanged; every score, and so every input and weight before the
    softmax (query, key and their projections), gets a wrong gradient; value's, W_v's and W_o's stay right."""

    name = "SoftmaxBackwardWithoutRowSum"

    def module(self, config: Mapping[str, Any]) -> nn.Module:
        return _AttentionWithoutRowSum(config["d_model"], config["num_heads"], config["d_head"], config["dropout"])


# --- encoder_block: layer norms that treat a statistic as a constant, or forget the mean -----------------------

class _VarianceDetachedNorm(nn.LayerNorm):
    """nn.LayerNorm's values with the variance under .detach(): the same numbers (up to rounding) forward, but
    the gradient misses the path through the variance, `- x_hat * mean(g * x_hat)` (a statistic treated as a
    constant, as a running statistic would be)."""

    def forward(self, x):  # (B, T, d_model)
        mean = x.mean(-1, keepdim=True)  # (B, T, 1)
        var = ((x - mean) ** 2).mean(-1, keepdim=True).detach()  # wrong: the variance depends on x
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class _NormalizeWithoutMeanTerm(torch.autograd.Function):
    """x_hat = (x - mean) / s, s = sqrt(var + epsilon), by torch's layer_norm; its backward is
    (g - x_hat * mean(g * x_hat)) / s where the right one is (g - mean(g) - x_hat * mean(g * x_hat)) / s: the
    mean's dependence on x is ignored."""

    @staticmethod
    def forward(ctx, x, eps):
        x_hat = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps)  # (B, T, d_model), no affine
        s = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)  # (B, T, 1)
        ctx.save_for_backward(x_hat, s)
        return x_hat

    @staticmethod
    def backward(ctx, g):
        x_hat, s = ctx.saved_tensors
        return (g - x_hat * (g * x_hat).mean(-1, keepdim=True)) / s, None  # wrong: no `- g.mean(-1)`


class _NormWithoutMeanTerm(nn.LayerNorm):
    def forward(self, x):
        return _NormalizeWithoutMeanTerm.apply(x, self.eps) * self.weight + self.bias  # gamma, beta by autograd


class _BlockWithNorm(encoder_block.Implementation):
    """Our PyTorch encoder_block with both layer norms of class `norm` (weights loaded as nn.LayerNorm's)."""

    norm: type[nn.LayerNorm] = nn.LayerNorm

    def module(self, config: Mapping[str, Any]) -> nn.Module:
        block = super().module(config)
        block.norm1 = self.norm(config["d_model"], eps=config["epsilon"])
        block.norm2 = self.norm(config["d_model"], eps=config["epsilon"])
        return block


class LayerNormVarianceDetached(_BlockWithNorm):
    """encoder_block §5.3 with the variance detached: outputs right, the gradient of everything before a norm
    wrong (encoder_block §11)."""

    name = "LayerNormVarianceDetached"
    norm = _VarianceDetachedNorm


class LayerNormBackwardWithoutMean(_BlockWithNorm):
    """encoder_block §5.3 whose backward drops `- mean(g)`: outputs torch's own, the gradient of everything
    before a norm off by gamma * mean(g) / s at every position (encoder_block §11)."""

    name = "LayerNormBackwardWithoutMean"
    norm = _NormWithoutMeanTerm


# --- ffn: a float64 layer whose backward starts from a float32 cotangent ----------------------------------------

class _CotangentInFloat32(torch.autograd.Function):
    """The identity, whose backward rounds the incoming gradient to float32 (and back to its dtype)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.to(torch.float32).to(g.dtype)


class _FeedForwardCotangentInFloat32(ffn.FeedForward):
    def forward(self, x):
        return _CotangentInFloat32.apply(super().forward(x))


class CotangentInFloat32(ffn.Implementation):
    """ffn with its outputs exact and every gradient float32-accurate in float64 (the cotangent rounded to
    float32 on its way in), as a float64 layer with a float32 backward kernel would be: what a ledger entry
    covering the gradients with the bound "float32" describes (tests/test_gradient_ledger.py)."""

    name = "CotangentInFloat32"

    def module(self, config: Mapping[str, Any]) -> nn.Module:
        module = _FeedForwardCotangentInFloat32(config["d_model"], config["d_ff"], config["activation"],
                                                config["dropout"])
        return module


# --- lstm_classifier: the forget-gate path cut ------------------------------------------------------------------

class _ForgetPathCut(lstm_classifier.LSTMClassifier):
    """LSTMClassifier.forward with the cell state carried as f * c_prev.detach() + i * g: the same values, but
    no gradient flows from c_t back to c_{t-1}, so a step's input and the weights are credited only through h
    (the same loop as the parent's otherwise)."""

    def forward(self, x):
        B, T, _ = x.shape
        H = self.hidden
        seq, h_n, c_n = x, [], []  # seq: (B, T, d_in), then (B, T, H)
        for k in range(self.num_layers):
            W_ih, W_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            bias = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")  # (4H,)
            h, c, hs = x.new_zeros(B, H), x.new_zeros(B, H), []
            for t in range(T):
                i, f, g, o = (seq[:, t] @ W_ih.T + h @ W_hh.T + bias).split(H, dim=1)  # (B, H) each
                c = torch.sigmoid(f) * c.detach() + torch.sigmoid(i) * torch.tanh(g)  # wrong: c.detach()
                h = torch.sigmoid(o) * torch.tanh(c)
                hs.append(h)
            seq = torch.stack(hs, dim=1)  # (B, T, H)
            h_n.append(h)
            c_n.append(c)
        return self.classifier(seq[:, -1]), seq, torch.stack(h_n), torch.stack(c_n)


class ForgetGatePathDetached(lstm_classifier.Implementation):
    """Our PyTorch lstm_classifier with the forget-gate path of the backward pass cut (lstm_classifier §11):
    right where T is 1 (c_0 is zero), wrong wherever a later step's gradient should reach an earlier one
    through the cell state."""

    name = "ForgetGatePathDetached"

    def module(self, config: Mapping[str, Any]) -> nn.Module:
        return _ForgetPathCut(config["d_in"], config["hidden"], config["num_layers"], config["num_classes"])


# --- ffn, Keras: the gradient of a float64 layer taken in float32 ----------------------------------------------

def _float32_gradient_layer() -> type:
    """Our Keras FeedForward whose float64 output is `rough + stop_gradient(exact - rough)`, `rough` the same
    network in float32: the value is `exact` (to within one rounding), the gradient `rough`'s, a float32
    one. In float32 `rough` is `exact`, and nothing is wrong. (Made on first use: Keras is imported then, on
    the backend KERAS_BACKEND names.)"""
    from keras import ops

    from impls.keras import ffn as keras_ffn

    class Float32GradientFeedForward(keras_ffn.FeedForward):
        def call(self, x, training=None):  # (B, T, d_model)
            exact = super().call(x, training=training)
            w_1, b_1, w_2, b_2 = (ops.cast(v, "float32") for v in (self.kernel_1, self.bias_1, self.kernel_2,
                                                                   self.bias_2))
            h = ops.einsum("btd,df->btf", ops.cast(x, "float32"), w_1) + b_1  # (B, T, d_ff)
            a = keras_ffn.ACTIVATIONS[self.activation](h)
            rough = ops.cast(ops.einsum("btf,fd->btd", a, w_2) + b_2, exact.dtype)  # (B, T, d_model)
            return rough + ops.stop_gradient(exact - rough)  # wrong: the gradient is rough's

    return Float32GradientFeedForward


@functools.cache
def _float32_gradient_ffn() -> Any:
    """Our Keras ffn implementation with `_float32_gradient_layer`'s layer."""
    from impls.keras import ffn as keras_ffn

    layer_class = _float32_gradient_layer()

    class Implementation(keras_ffn.Implementation):
        name = "Float32GradientFFN"

        def layer(self, config: Mapping[str, Any], dtype: str) -> Any:
            return layer_class(config["d_model"], config["d_ff"], config["activation"], config["dropout"],
                               kernel_initializer="zeros", dtype=dtype)

    return Implementation()


class Float32GradientFFN:
    """Our Keras ffn whose gradients are a float32 computation's for float64 inputs (ffn §11): forward exact
    in float64, every gradient off by float32 roundings, some 2**29 float64 units. Everything but its names is
    `_float32_gradient_ffn()`'s, made (and Keras imported) on first use."""

    name, component, framework = "Float32GradientFFN", "ffn", "keras"

    def __getattr__(self, attr: str) -> Any:
        return getattr(_float32_gradient_ffn(), attr)
