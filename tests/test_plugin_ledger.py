"""A ledger for plug-ins (conformance/deviations.py): an entry naming a plug-in by its file, in a project's own
ledger passed with --ledger beside the built-in one, and a `[[plugin]]` table by which a plug-in built on a
Keras layer inherits that layer's entries. Each comes out known-deviation where its entries say, and
non-conformant once a mistake of its own is added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

NUMPY_PLUGIN = '''
import sys
sys.path.insert(0, {tests!r})
import wrong_mha

class UniformRows(wrong_mha.UniformOnFullyMaskedRow):
    """Uniform attention in fully masked rows, as Flax NNX and Equinox give: known, and in the project's ledger."""

class UniformRowsAndScaled(wrong_mha._Wrong):
    """The same, and scores divided by sqrt(d_model): a mistake of its own."""
    options = {{**wrong_mha.UniformOnFullyMaskedRow.options, **wrong_mha.ScaledByDModel.options}}
'''

OWN_LEDGER = '''
[[deviation]]
id = "my-attention-uniform-rows"
implementation = "{file}:{cls}"
component = "mha"
condition = "fully_masked_query_row"
sections = ["7.4"]
bound = "region"
explanation = "a fully masked query row attends uniformly to every key"
'''

KERAS_PLUGIN = '''
from impls.keras.builtin_mha import MultiHeadAttentionScores, load_canonical

class MyKerasAttention(MultiHeadAttentionScores):
    """A project's attention, keras.layers.MultiHeadAttention inside."""
    name = "my-keras-attention"

def swapped(adapter, weights):
    load_canonical(adapter, {**weights, "W_q": weights["W_k"], "W_k": weights["W_q"]})

class MyKerasAttentionSwapped(MyKerasAttention):
    """The same with the query and key kernels swapped: a mapping mistake of its own."""
    load_canonical = staticmethod(swapped)
'''

INHERITING_LEDGER = '''
[[plugin]]
implementation = "keras_plugin.py:{cls}"
component = "mha"
built_on = "keras.layers.MultiHeadAttention"
'''


def _check(tmp_path: Path, target: str, ledgers: list[Path], dtype: str, backend: str | None = None) -> dict:
    out = tmp_path / f"{target.rpartition(':')[2]}-{len(ledgers)}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)} | ({"KERAS_BACKEND": backend} if backend else {})
    argv = [sys.executable, "-m", "conformance", "check", "mha", "--impl", target, "--dtype", dtype,
            "--device", "cpu", "--mode", "eager", "--examples", "30", "-o", str(out), "--jobs", "1"]
    for ledger in ledgers:
        argv += ["--ledger", str(ledger)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    return json.loads(out.read_text())["cells"][0]


@pytest.fixture
def numpy_plugin(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_attention.py").write_text(NUMPY_PLUGIN.format(tests=str(HERE)))
    for cls in ("UniformRows", "UniformRowsAndScaled"):
        (folder / f"{cls}.toml").write_text(OWN_LEDGER.format(file="my_attention.py", cls=cls))
    return folder


def test_a_plugin_named_in_its_projects_ledger_is_a_known_deviation(tmp_path, numpy_plugin):
    # the plug-in is named as the command line names it, relative to the working folder; the entry names it
    # relative to the ledger's own folder
    target = "project/my_attention.py:UniformRows"
    raw = _check(tmp_path, target, [], "float32")
    assert raw["verdict"] == "non-conformant" and "fully masked query row" in raw["reason"]
    cell = _check(tmp_path, target, [numpy_plugin / "UniformRows.toml"], "float32")
    assert cell["verdict"] == "known-deviation", cell["reason"]
    assert cell["deviation"] == "my-attention-uniform-rows"


def test_a_plugins_own_mistake_behind_its_known_deviation_is_still_found(tmp_path, numpy_plugin):
    cell = _check(tmp_path, "project/my_attention.py:UniformRowsAndScaled",
                  [numpy_plugin / "UniformRowsAndScaled.toml"], "float32")
    assert cell["verdict"] == "non-conformant", cell["reason"]
    assert "differs from the reference" in cell["reason"] and "§6.3" in " ".join(cell["sections"])


@pytest.fixture
def keras_plugin(tmp_path: Path) -> Path:
    (tmp_path / "keras_plugin.py").write_text(KERAS_PLUGIN)
    for cls in ("MyKerasAttention", "MyKerasAttentionSwapped"):
        (tmp_path / f"{cls}.toml").write_text(INHERITING_LEDGER.format(cls=cls))
    return tmp_path


@pytest.mark.xdist_group("keras-on-torch")
def test_a_plugin_built_on_a_keras_layer_inherits_its_entries(tmp_path, keras_plugin):
    target = "keras_plugin.py:MyKerasAttention"
    raw = _check(tmp_path, target, [], "float64", "torch")
    assert raw["verdict"] == "non-conformant", raw["reason"]
    cell = _check(tmp_path, target, [keras_plugin / "MyKerasAttention.toml"], "float64", "torch")
    assert cell["verdict"] == "known-deviation", cell["reason"]
    assert cell["deviation"] == "keras-mha-float64-mask-fill-1e9"  # the layer's own entry, by its id
    swapped = _check(tmp_path, "keras_plugin.py:MyKerasAttentionSwapped",
                     [keras_plugin / "MyKerasAttentionSwapped.toml"], "float64", "torch")
    assert swapped["verdict"] == "non-conformant", swapped["reason"]
    assert "beyond ledger entr" in swapped["reason"] or "differs from the reference" in swapped["reason"]


def test_a_plugin_table_must_build_on_a_registered_layer(tmp_path, keras_plugin):
    bad = tmp_path / "bad.toml"
    bad.write_text(INHERITING_LEDGER.format(cls="MyKerasAttention").replace("keras.layers.MultiHeadAttention",
                                                                           "keras.layers.Attention"))
    done = subprocess.run([sys.executable, "-m", "conformance", "check", "mha", "--impl",
                           "keras_plugin.py:MyKerasAttention", "--ledger", str(bad)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    line, = done.stderr.strip().splitlines()
    assert "built_on 'keras.layers.Attention'" in line and "keras.layers.MultiHeadAttention" in line
