"""Deliberately wrong implementations that break one property each (the `property` tables of spec/*.md).

Every one agrees with the reference on single calls of a fresh instance, within
the budget, on every example the search draws; each breaks the one property it
names (`breaks`), which is the only way the harness can tell.
tests/test_properties.py checks that the property rejects each of them in
float32, on ten seeds, with a counterexample that fails again when replayed.
"""

from __future__ import annotations

import numpy as np

from wrong_base import Switchable

from impls.numpy import embedding, ffn, lstm_classifier, lstm_seq2seq, mha
from impls.numpy.mha import broadcast_mask

import wrong_encoder_block
import wrong_lstm_classifier
import wrong_lstm_seq2seq


class _Reference(Switchable):
    """The reference's forward pass, with a mistake a subclass adds around it; `breaks` is a property's name."""

    def forward(self, config, weights, inputs):
        module = {"mha": mha, "ffn": ffn, "embedding": embedding, "lstm_classifier": lstm_classifier,
                  "lstm_seq2seq": lstm_seq2seq}[self.component]
        return module.forward(config, weights, inputs)


class _Stateful(Switchable):
    """An implementation whose instance keeps something between calls (`state`), as the subclass's `call` uses it."""

    def call(self, config, weights, inputs, state: dict) -> dict:
        raise NotImplementedError

    def load(self, instance, weights, dtype) -> None:
        instance.weights = {k: v.astype(dtype) for k, v in weights.items()}

    def build(self, config, *, dtype, device):
        impl = self

        class Instance:
            state: dict = {}

            def __init__(self):
                self.state = {}

            def load(self, weights):
                impl.load(self, weights, dtype)

            def __call__(self, inputs):
                return impl.call(config, self.weights, inputs, self.state)

        return Instance()


# --- batch independence ----------------------------------------------------------------------------------------

#: Inputs beyond this are scaled down before the recurrence, by the guards below: far above anything the harness
#: draws for lstm_classifier (standard deviation at most 10), so that on its examples they never act.
GUARD = 1e3


class BatchWideOverflowGuard(_Reference):
    """Inputs scaled down, step by step, when the largest input of that step over the whole batch exceeds
    GUARD (a guard against overflow in half precision taken over the wrong axis): one batch element with large
    inputs changes the others' outputs (lstm_classifier §10.1)."""

    component, breaks = "lstm_classifier", "batch_independence"

    def forward(self, config, weights, inputs):
        x = inputs["x"]  # (B, T, d_in)
        largest = np.abs(x).max(axis=(0, 2), keepdims=True)  # (1, T, 1): over the batch, at each step
        guarded = (x * np.minimum(1, GUARD / np.maximum(largest, GUARD))).astype(x.dtype)
        return lstm_classifier.forward(config, weights, {"x": guarded})


# --- causality -------------------------------------------------------------------------------------------------

class SequenceWideOverflowGuard(_Reference):
    """The same guard taken over each sequence's every step: a large input at a later step changes the hidden
    states before it (lstm_classifier §10.2)."""

    component, breaks = "lstm_classifier", "causality"

    def forward(self, config, weights, inputs):
        x = inputs["x"]
        largest = np.abs(x).max(axis=(1, 2), keepdims=True)  # (B, 1, 1): over the sequence
        guarded = (x * np.minimum(1, GUARD / np.maximum(largest, GUARD))).astype(x.dtype)
        return lstm_classifier.forward(config, weights, {"x": guarded})


# --- masked-key invariance and padding invariance --------------------------------------------------------------

#: The weight a masked key keeps in the context below, in place of 0 ("so that no gradient is exactly zero"):
#: on the harness's examples it moves the output by a few hundredths of its float32 budget.
FLOOR = 1e-9


def floored_attention(config, weights, inputs, floor=FLOOR):
    """mha §6 with every masked key's weight `floor` in the context (rows with a visible key), while the weights
    returned are the spec's: a masked value row with large entries leaks into the output."""
    out = mha.forward(config, weights, inputs)
    query, value = inputs["query"], inputs["value"]
    B, Lq, _ = query.shape
    Lk = value.shape[1]
    H, d = config["num_heads"], config["d_head"]
    visible = broadcast_mask(inputs.get("attention_mask"), B, Lq, Lk)[:, None]  # (B, 1, Lq, Lk)
    leak = np.where(visible | ~visible.any(axis=-1, keepdims=True), 0, floor).astype(query.dtype)
    v = (value @ weights["W_v"] + weights["b_v"]).reshape(B, Lk, H, d).transpose(0, 2, 1, 3)  # (B, H, Lk, d)
    extra = (leak @ v).transpose(0, 2, 1, 3).reshape(B, Lq, H * d) @ weights["W_o"]  # (B, Lq, d_model)
    return {"output": (out["output"] + extra).astype(query.dtype), "attention_weights": out["attention_weights"]}


class MaskedKeysKeepAFloor(_Reference):
    """Masked keys keep the weight FLOOR in the context (mha §11.2)."""

    component, breaks = "mha", "masked_key_invariance"

    def forward(self, config, weights, inputs):
        return floored_attention(config, weights, inputs)


class PaddedKeysKeepAFloor(Switchable):
    """The block's attention lets padded keys keep a weight of 1e-7 (encoder_block §10.2): the block's
    budget, after a layer norm, is larger than mha's, and so is the floor it hides."""

    component, breaks = "encoder_block", "padding_invariance"

    def forward(self, config, weights, inputs):
        return wrong_encoder_block._block(config, weights, inputs["x"], inputs.get("padding_mask"),
                                          attend=lambda *args: floored_attention(*args, floor=1e-7))


# --- key permutation equivariance ------------------------------------------------------------------------------

class PaddingMaskAsLengths(_Reference):
    """A mask `(B, 1, Lk)` shared by several queries taken for padding and turned into lengths, attending to the
    first n keys (as a packed-sequence kernel takes them): right for the padding the harness draws, wrong for
    any other order (mha §11.4)."""

    component, breaks = "mha", "key_permutation_equivariance"

    def forward(self, config, weights, inputs):
        mask = inputs.get("attention_mask")
        if mask is not None and mask.ndim == 3 and mask.shape[1] == 1 and inputs["query"].shape[1] > 1:
            lengths = mask.sum(axis=-1, keepdims=True)  # (B, 1, 1)
            inputs = {**inputs, "attention_mask": np.arange(mask.shape[-1]) < lengths}
        return mha.forward(config, weights, inputs)


# --- statelessness ---------------------------------------------------------------------------------------------

class MaskCachedByShape(_Stateful):
    """The mask kept from the first call with its shape (mha §11.5)."""

    component, breaks = "mha", "statelessness"

    def call(self, config, weights, inputs, state):
        mask = inputs.get("attention_mask")
        if mask is not None:
            mask = state.setdefault(mask.shape, mask)
        return mha.forward(config, weights, {**inputs, "attention_mask": mask})


class PositionsFromTheFirstCall(_Stateful):
    """The sinusoidal table computed at the first call, for its length (embedding §11.3): a longer call reads
    past it."""

    component, breaks = "embedding", "statelessness"

    def call(self, config, weights, inputs, state):
        tokens = inputs["tokens"]
        if "table" not in state:
            state["table"] = embedding.sinusoidal_table(tokens.shape[1], config["d_model"], weights["E"].dtype)
        out = embedding.forward(config, weights, inputs)
        if config["positional"] == "sinusoidal":
            T = tokens.shape[1]
            table = state["table"][:T]
            exact = embedding.sinusoidal_table(T, config["d_model"], weights["E"].dtype)
            out = {**out, "x": (out["x"] - exact + table).astype(out["x"].dtype)}
        return out


class StatesKeptBetweenCalls(_Stateful):
    """Every layer starts from the states the previous call with the same batch size ended in, not from zeros
    (lstm_classifier §10.3)."""

    component, breaks = "lstm_classifier", "statelessness"

    def call(self, config, weights, inputs, state):
        B = inputs["x"].shape[0]
        out = wrong_lstm_classifier._lstm(config, weights, inputs, initial=state.get(B))
        state[B] = (out["h_n"], out["c_n"])
        return out


class StartTokenFromThePreviousCall(_Stateful):
    """Greedy generation starts from the previous call's last generated token, not from 0 (lstm_seq2seq
    §10.3)."""

    component, breaks = "lstm_seq2seq", "statelessness"

    def call(self, config, weights, inputs, state):
        out = wrong_lstm_seq2seq._seq2seq(config, weights, inputs, start_id=state.get("last", 0))
        state["last"] = int(np.asarray(out["generated"])[0, -1])
        return out


class WeightsScaledInPlace(_Stateful):
    """Each call multiplies the loaded first projection by 1 + 2**-10 in place (a weight update left in the
    forward pass): a second call differs from the first (ffn §10.2)."""

    component, breaks = "ffn", "statelessness"

    def call(self, config, weights, inputs, state):
        out = ffn.forward(config, weights, inputs)
        weights["W_1"] *= weights["W_1"].dtype.type(1 + 2**-10)
        return out


class WeightsFromTheFirstCall(_Stateful):
    """The weights read at the first call and kept: weights loaded later are ignored (ffn §10.2)."""

    component, breaks = "ffn", "statelessness"

    def call(self, config, weights, inputs, state):
        kept = state.setdefault("weights", {k: v.copy() for k, v in weights.items()})
        return ffn.forward(config, kept, inputs)


# --- determinism -----------------------------------------------------------------------------------------------

class HiddenUnitsInAlternateOrders(_Stateful):
    """The hidden units summed one by one, forwards on one call and backwards on the next (two buffers that
    accumulate each its own way): every call within the budget, but not the same bits twice (ffn §10.3)."""

    component, breaks = "ffn", "determinism"

    def call(self, config, weights, inputs, state):
        state["calls"] = state.get("calls", 0) + 1
        hidden = ffn.forward(config, {**weights, "W_2": np.eye(weights["W_1"].shape[1], dtype=weights["W_2"].dtype),
                                      "b_2": np.zeros(weights["W_1"].shape[1], weights["b_2"].dtype)}, inputs)["y"]
        order = range(hidden.shape[-1]) if state["calls"] % 2 else reversed(range(hidden.shape[-1]))
        y = np.broadcast_to(weights["b_2"], hidden.shape[:-1] + weights["b_2"].shape).copy()  # (B, T, d_model)
        for j in order:
            y += hidden[..., j:j + 1] * weights["W_2"][j]
        return {"y": y}


#: Every mistake here, by the property it breaks.
MISTAKES = [BatchWideOverflowGuard, SequenceWideOverflowGuard, MaskedKeysKeepAFloor, PaddedKeysKeepAFloor,
            PaddingMaskAsLengths, MaskCachedByShape, PositionsFromTheFirstCall, StatesKeptBetweenCalls,
            StartTokenFromThePreviousCall, WeightsScaledInPlace, WeightsFromTheFirstCall,
            HiddenUnitsInAlternateOrders]
