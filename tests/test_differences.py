"""`conformance differences`: the README's table of what differs between frameworks, from the ledger and results."""

from __future__ import annotations



from conformance import deviations, differences
from conformance.cli import main
from conformance.deviations import Bound, BoundKind, Deviation
from conformance.schema import load_results

MHA = "torch.nn.MultiheadAttention"
ENTRY = Deviation("nan-rows", MHA, "mha", "fully_masked_query_row", ("7.4",), "NaN on masked rows.", Bound(BoundKind.REGION),
                  "https://github.com/pytorch/pytorch/issues/160064", {"torch": "2.13.0"})


def _cell(implementation, dtype, verdict="conformant", **extra):
    cell = {"component": "mha", "implementation": implementation, "framework": "torch", "backend": None,
            "device": "cpu", "mode": "eager", "dtype": dtype, "verdict": verdict, "reason": None, "examples": 20,
            "skipped": 0, "known_deviations": 0, "deviation": None, "repro": None}
    return {**cell, **extra}


def test_entry_with_its_cells_repro_and_upstream_link():
    cells = [_cell(MHA, "float64", "known-deviation", deviation="nan-rows", known_deviations=3,
                   repro="conformance check mha --impl torch.nn.MultiheadAttention --example '{}'"),
             _cell(MHA, "float32", "known-deviation", deviation="nan-rows", known_deviations=2)]
    table = differences.render([ENTRY], cells)
    row = next(l for l in table.splitlines() if l.startswith(f"| `{MHA}`"))
    assert "| mha §7.4 | NaN on masked rows. (seen with torch 2.13.0) | torch: float64, float32<br>`conformance check" in row
    assert row.endswith("| [pytorch/pytorch#160064](https://github.com/pytorch/pytorch/issues/160064) |")


def test_entry_not_seen_or_stale_says_so():
    assert "| not seen in these results |" in differences.render([ENTRY], [])
    stale = _cell(MHA, "float64", "non-conformant", reason="ledger: ledger entry 'nan-rows' is stale: ...")
    assert "**stale** (now follows the spec) in torch: float64" in differences.render([ENTRY], [stale])


def test_limits_conformant_layers_and_unexplained_failures():
    cells = [_cell("torch.sdpa", "float64"), _cell("torch.sdpa", "float32"),
             _cell(MHA, "float64", skipped=30, skip_reason="num_heads * d_head != d_model"),
             _cell("torch.nn.MultiheadAttention[need_weights=False]", "float64", "non-conformant"),
             _cell("numpy", "float64", "non-conformant")]  # our own implementations are not the subject
    table = differences.render([], cells)
    assert f"| `{MHA}` | mha | num_heads * d_head != d_model | 30 of 50 |" in table
    assert "Conformant in every cell they ran: `torch.nn.MultiheadAttention` (mha: torch: float64), " \
           "`torch.sdpa` (mha: torch: float64, float32)." in table
    assert "Not conformant and not in the ledger: `torch.nn.MultiheadAttention[need_weights=False]` " \
           "(mha: torch: float64)." in table
    assert "numpy" not in table


def test_readme_option_rewrites_only_between_the_markers(root, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{differences.BEGIN}\nold table\n{differences.END}\n\nafter\n")
    baseline = str(root / "reports" / "baseline")
    assert main(["differences", baseline, "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n") and text.endswith(f"{differences.END}\n\nafter\n")
    assert "| framework layer | component |" in text
    assert main(["differences", baseline, "--readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out
    readme.write_text("no markers\n")
    assert main(["differences", baseline, "--readme", str(readme)]) == 2
    assert "has no place for the table" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n"


def test_the_readme_table_is_generated_from_the_ledger_and_the_committed_results(root):
    """After a ledger change or a new baseline: `conformance differences reports/baseline --readme README.md`."""
    documents = [load_results(p) for p in sorted((root / "reports" / "baseline").glob("results-*.json"))]
    expected = differences.from_documents(deviations.load(), documents)
    text = (root / "README.md").read_text()
    assert differences.replace_block(text, expected) == text, \
        "README's table is out of date: run conformance differences reports/baseline --readme README.md"


def test_gradients_deviating_as_an_entry_records_or_failing_outside_the_ledger():
    entry = Deviation("backward-in-float32", MHA, "mha", "always", ("12.1",), "Its backward runs in float32.",
                      Bound(BoundKind.DTYPE, "float32"), parts=("forward", "gradients"))
    deviated = {"verdict": "known-deviation", "deviation": "backward-in-float32", "reason": "ledger entry ..."}
    failed = {"verdict": "non-conformant", "deviation": None, "reason": "gradient 'W_q' differs from the reference"}
    cells = [_cell(MHA, "float64", gradients=deviated), _cell(MHA, "float32"),
             _cell("torch.sdpa", "float64", gradients=failed)]
    table = differences.render([entry], cells)
    row = next(l for l in table.splitlines() if l.startswith(f"| `{MHA}`"))
    assert "| Its backward runs in float32. The entry covers the gradients too. |" in row
    assert "| not seen in these results; gradients: torch: float64 |" in row
    assert "Gradients not conformant and not in the ledger: `torch.sdpa` (mha: torch: float64)." in table
    assert "Conformant in every cell they ran: `torch.nn.MultiheadAttention` (mha: torch: float64, float32)." in table
