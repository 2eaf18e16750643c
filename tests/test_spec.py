"""The spec reader, the coverage rule, and clear errors for malformed spec files."""

from __future__ import annotations

import re

import pytest

from conformance import generate
from conformance.cli import main
from conformance.spec import SpecError, evaluate, find_spec_dir, list_components, load_spec


def test_mha_tables_are_read_from_the_spec(mha_spec):
    assert list(mha_spec.params) == ["d_model", "num_heads", "d_head", "dropout", "B", "Lq", "Lk", "mask", "scale_exp"]
    assert mha_spec.magnitudes() == {"scale_exp": (0, -1, 1, -2, -3, 2, 3, 5)}
    assert [p.name for p in mha_spec.shape_params] == list(mha_spec.params)[:-1]
    assert mha_spec.layer_params == ["d_model", "num_heads", "d_head", "dropout"]
    assert mha_spec.params["d_model"].domain == range(1, 33)
    assert mha_spec.params["mask"].domain == ("none", "padding", "causal", "random")
    env = {"d_model": 6, "num_heads": 2, "d_head": 5, "B": 3, "Lq": 4, "Lk": 7}
    assert mha_spec.shape_of(mha_spec.weights["W_q"], env) == (6, 10)
    assert mha_spec.shape_of(mha_spec.weights["W_o"], env) == (10, 6)
    assert mha_spec.shape_of(mha_spec.outputs["attention_weights"], env) == (3, 2, 4, 7)
    mask = mha_spec.inputs["attention_mask"]
    assert mask.kind == "mask"
    assert mha_spec.shape_of(mask, env, "padding") == (3, 1, 7)
    assert mha_spec.shape_of(mask, env, "causal") == (4, 7)
    assert set(mha_spec.budgets) == set(mha_spec.outputs)
    assert len(mha_spec.examples) >= 4
    assert {frozenset(r.items()) for r in generate.regions(mha_spec)} >= {frozenset({("scale_exp", 2)}),
                                                                         frozenset({("scale_exp", 5), ("mask", "padding")})}


@pytest.mark.parametrize("component", list_components())
def test_every_normative_section_is_enforced(component):
    spec = load_spec(find_spec_dir() / f"{component}.md")
    uncovered = [f"§{n} {spec.sections[n]}" for n in spec.normative_sections() if n not in spec.covered_sections()]
    assert not uncovered, f"{component}: normative sections nothing enforces: {uncovered}"


@pytest.mark.parametrize("component", list_components())
def test_every_spec_has_worked_examples(component):
    assert load_spec(find_spec_dir() / f"{component}.md").examples


def test_informative_sections_are_not_normative(mha_spec):
    assert "9.1" in mha_spec.informative
    assert "9.1" not in mha_spec.normative_sections()
    assert "9" in mha_spec.normative_sections()


def test_expressions():
    assert evaluate("1 / sqrt(d_model)", {"d_model": 4}) == 0.5
    assert evaluate("num_heads * d_head", {"num_heads": 3, "d_head": 2}) == 6
    assert evaluate("max(a, b) - min(a, b) // 2", {"a": 5, "b": 3}) == 4
    with pytest.raises(KeyError, match="unknown name 'x'"):
        evaluate("x + 1", {})
    for hostile in ("__import__('os')", "a.__class__", "[1][0]", "open('f')"):
        with pytest.raises(ValueError, match="unsupported expression"):
            evaluate(hostile, {"a": 1})


def _broken(tmp_path, root, old, new, count=1):
    text = (root / "spec" / "mha.md").read_text()
    assert old in text
    path = tmp_path / "mha.md"
    path.write_text(text.replace(old, new, count))
    (tmp_path / "README.md").write_text("format\n")
    return path


@pytest.mark.parametrize("old, new, message", [
    ("| `d_model` | layer | `1..32` |", "| `d_model` | layer | `1..x` |", r"section 2: parameter 'd_model': domain"),
    ("| `d_model` | layer |", "| `d_model` | lyer |", r"section 2: parameter 'd_model': role 'lyer'"),
    ("| weight | shape | std | sections | meaning |", "| weights | shape | std | sections | meaning |",
     r"no table with first column 'weight'"),
    ("| `b_o` | `(d_model,)` | `0.5` | 6.6 |", "| `b_o` | `(d_model,)` | `0.5` | 6.6, 99 |", r"names section 99"),
    ("| `output` | `output_bound + tiny / eps` |", "| `outputs` | `output_bound + tiny / eps` |",
         r"output 'output' has no row in the budget"),
    ("(component `mha`)", "(component `attention`)", r"title names component 'attention'"),
    ("### 7.4 Query rows", "### 7.3 Query rows", r"section 7.3: section number used twice"),
    ('"name": "one head by hand",', '"name": "one head by hand"', r"section 10.1: worked example is not valid"),
    ('"sections": ["6.1", "6.3", "6.4", "6.5", "6.6", "12.1"],', '"sections": ["6.1", "99"],',
     r"worked example 'one head by hand' names section 99, which does not exist"),
    ("| `W_q` | 12.1, 12.2 |", "| `W_x` | 12.1, 12.2 |", r"gradient 'W_x' is not a float input or a weight"),
    ("| `b_o` | 12.1, 12.2 | `dL/db_o` |\n", "", r"the gradient table has no row for b_o"),
    ("| `query` | `(B, Lq, d_model)` | float |", "| `query` | `B, Lq, d_model` | float |", r"section 4: input 'query': shape"),
])
def test_malformed_spec_names_file_and_section(tmp_path, root, old, new, message):
    path = _broken(tmp_path, root, old, new)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_malformed_spec_is_one_line_and_exit_2(tmp_path, root, monkeypatch, capsys):
    _broken(tmp_path, root, "| `d_model` | layer | `1..32` |", "| `d_model` | layer | `32..1` |")
    monkeypatch.setenv("CONFORMANCE_SPEC_DIR", str(tmp_path))
    assert main(["check", "mha", "--impl", "numpy", "--examples", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(r"mha\.md, section 2: parameter 'd_model': empty range", err)


def test_a_section_counts_as_enforced_only_when_a_check_names_it(tmp_path, root):
    """A new §7.5 under a §7 that rows name is not covered by its parent: nothing names it, so the coverage
    test would fail until a row or worked example does."""
    path = _broken(tmp_path, root, "## 8. Dropout", "### 7.5 A new rule\n\nQueries do something new.\n\n## 8. Dropout")
    spec = load_spec(path)
    assert "7.5" in spec.normative_sections() and "7.5" not in spec.covered_sections()
    assert "7.4" in spec.covered_sections()
