"""Harness features that components beyond mha rely on, on small synthetic specs."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import generate
from conformance.engine import NonConformance, check_tokens
from conformance.spec import SpecError, Tensor, load_spec

TOY = """\
# Toy (component `toy`)

## 1. Computation

| parameter | role | domain | sections | meaning |
|---|---|---|---|---|
| `n_layers` | layer | `1..3` | 1 | layers |
| `width` | layer | `2..5` | 1 | width |
| `vocab` | layer | `2..9` | 1 | vocabulary |
| `B` | data | `1..4` | 1 | batch |
| `T` | data | `1..8` | 1 | length |

| weight | shape | std | for | sections | meaning |
|---|---|---|---|---|---|
| `W_0` | `(vocab, width)` | `1.0` | | 1 | first layer |
| `W_{l}` | `(width, width + l)` | `1 / sqrt(width)` | `l in 1..n_layers - 1` | 1 | later layers |

| input | shape | kind | sections | meaning |
|---|---|---|---|---|
| `tokens` | `(B, T)` | padded_tokens(vocab) | 1 | ids |

| output | shape | dtype | compare | sections | meaning |
|---|---|---|---|---|---|
| `logits` | `(B, T, vocab)` | float | close | 1 | scores |
| `generated` | `(B, T)` | int | greedy(logits) | 1 | tokens |
| `valid` | `(B, T)` | bool | close | 1 | mask |

| budget | scale | growth |
|---|---|---|
| `logits` | `1` | `width` |
"""


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.md"
    path.write_text(TOY)
    return load_spec(path)


def test_repeated_weight_rows_expand_per_configuration(toy):
    shapes = toy.weight_shapes({"n_layers": 3, "width": 4, "vocab": 7})
    assert {k: v[0] for k, v in shapes.items()} == {"W_0": (7, 4), "W_1": (4, 5), "W_2": (4, 6)}
    assert shapes["W_2"][1] == 0.5
    assert list(toy.weight_shapes({"n_layers": 1, "width": 4, "vocab": 7})) == ["W_0"]


def test_a_repeated_row_must_name_its_variable(tmp_path):
    path = tmp_path / "toy.md"
    path.write_text(TOY.replace("`W_{l}`", "`W_later`"))
    with pytest.raises(SpecError, match=r"weight 'W_later': a weight repeated over 'l' needs \{l\} in its name"):
        load_spec(path)


def test_greedy_must_name_a_float_output(tmp_path):
    path = tmp_path / "toy.md"
    path.write_text(TOY.replace("greedy(logits)", "greedy(valid)"))
    with pytest.raises(SpecError, match="compares greedily against 'valid', which is not a float output"):
        load_spec(path)


def test_padded_tokens_have_a_valid_prefix_then_padding(toy):
    for seed in range(50):
        example = {"n_layers": 1, "width": 2, "vocab": 3, "B": 4, "T": 6, "seed": seed, "scale_exp": 0}
        tokens = generate.make_arrays(toy, example)[1]["tokens"]
        assert tokens.shape == (4, 6) and tokens.dtype == np.int64
        valid = tokens != 0
        lengths = valid.sum(axis=1)
        assert (lengths >= 1).all()
        assert (valid == (np.arange(6) < lengths[:, None])).all()  # a prefix, then padding only
        assert tokens.max() <= 2


def test_greedy_tokens_are_compared_only_before_the_first_near_tie(toy):
    out = toy.outputs["generated"]
    reference = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    margin = np.array([[5.0, 5.0, 0.01, 5.0], [5.0, 5.0, 5.0, 5.0]])
    diagnostics, tolerance = {"generated_margin": margin}, {"logits": 0.1}
    after_tie = np.array([[1, 2, 0, 0], [1, 2, 3, 4]])  # row 0 differs from the near tie on: allowed
    check_tokens(out, after_tie, reference, diagnostics, tolerance)
    before_tie = np.array([[1, 0, 3, 4], [1, 2, 3, 4]])
    with pytest.raises(NonConformance, match=r"output 'generated' differs at index \(0, 1\): got 0, reference 2"):
        check_tokens(out, before_tie, reference, diagnostics, tolerance)
    clear_row = np.array([[1, 2, 3, 4], [1, 2, 3, 0]])  # row 1 has no near tie: every step counts
    with pytest.raises(NonConformance, match=r"index \(1, 3\)"):
        check_tokens(out, clear_row, reference, diagnostics, tolerance)


def test_boolean_and_integer_outputs_are_compared_exactly(toy):
    valid = toy.outputs["valid"]
    check_tokens(valid, np.array([[True, False]]), np.array([[True, False]]), {}, {})
    with pytest.raises(NonConformance, match=r"output 'valid' differs at index \(0, 1\)"):
        check_tokens(valid, np.array([[True, True]]), np.array([[True, False]]), {}, {})
    assert isinstance(valid, Tensor) and valid.dtype == "bool" and valid.compare == "close"
