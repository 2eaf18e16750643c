"""The calibration helper turns recorded error / budget back into err / growth."""

from __future__ import annotations

from conformance import calibrate
from conformance.engine import run_cell
from conformance.results import write_results
from conformance.registry import find_shipped


def test_err_over_growth_is_the_ratio_times_k_of_conformant_cells_only(tmp_path, mha_spec, capsys):
    good = run_cell(mha_spec, find_shipped("mha", "numpy"), "float32", "cpu", max_examples=10)
    bad = run_cell(mha_spec, find_shipped("mha", "numpy"), "float16", "cpu", "compiled")
    assert (good.verdict, bad.verdict) == ("conformant", "unsupported")
    path = write_results(tmp_path / "cal.json", [good, bad])

    assert calibrate.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "float16" not in out
    assert f"mha              {good.max_ratio * good.k:8.4f}  numpy eager ({good.examples} examples)" in out
    assert f"all              {good.max_ratio * good.k:8.4f}" in out


def test_without_files_it_explains_itself(capsys):
    assert calibrate.main([]) == 2
    assert "python -m conformance.calibrate" in capsys.readouterr().err
