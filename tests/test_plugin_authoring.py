"""What a plug-in author meets (issue: plug-ins in one line): the Python API takes a class as the command
line does, a repro line says when no command can replay, supports(config, example) sees the data and a cell
says how much it skipped, a plug-in file cannot shadow an installed module, and conformance.plugin's layout
helpers invert what the frameworks' layouts do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import assert_conformant, check, plugin
from conformance.engine import repro_command
from conformance.results import format_cell
from conformance.vocabulary import UsageError

import wrong_mha

ROOT = Path(__file__).resolve().parent.parent
CELL = {"dtypes": ["float32"], "devices": ["cpu"], "modes": ["eager"], "examples": 12}


def test_the_api_takes_a_class_and_names_it_by_module_and_qualified_name():
    cells = check("mha", wrong_mha.Correct, **CELL)
    assert [c.verdict for c in cells] == ["conformant"]
    assert cells[0].implementation.endswith(":Correct") and "builtins" not in cells[0].implementation


def test_a_class_that_cannot_be_built_with_no_arguments_is_one_clear_error():
    class NeedsConfig(wrong_mha.Correct):
        def __init__(self, config):
            self.config = config

    with pytest.raises(UsageError, match=r"cannot construct .*NeedsConfig \(a class is called with no arguments\)"):
        check("mha", NeedsConfig, **CELL)


def test_a_failure_of_a_class_defined_in_a_function_says_no_command_replays_it():
    class Inverted(wrong_mha.InvertedMask):
        pass

    with pytest.raises(AssertionError) as failed:
        assert_conformant("mha", Inverted, **CELL)
    message = str(failed.value)
    assert "no command replays it (" in message and "is defined inside a function" in message
    assert "conformance.check('mha', obj" in message and "--impl" not in message


def test_a_repro_line_names_a_command_only_where_one_can_load_the_implementation(tmp_path):
    assert repro_command("mha", "torch", "float32", "cpu", None).startswith("conformance check mha --impl torch ")
    assert repro_command("mha", "wrong_mha:InvertedMask", "float32", "cpu", None).startswith(
        "no command replays it (no module 'wrong_mha')") or "wrong_mha" in sys.modules
    assert repro_command("mha", "__main__:Mine", "float32", "cpu", None).startswith(
        "no command replays it (__main__:Mine is defined in a script run as __main__)")
    assert "there is no file" in repro_command("mha", f"{tmp_path}/gone.py:A", "float32", "cpu", None)


class OnlyPadding(wrong_mha.Correct):
    """Runs padding masks only: a limit on the data, which supports(config, example) can see."""

    def supports(self, config, example):
        return None if example["mask"] == "padding" else "padding masks only"


def test_supports_sees_the_example_and_the_cell_shows_what_it_skipped():
    cell, = check("mha", OnlyPadding, **CELL)
    assert cell.verdict == "conformant" and cell.skipped > 0 and cell.skip_reason == "padding masks only"
    line = format_cell(cell)
    assert f"({cell.skipped} skipped)" in line.splitlines()[0]
    if cell.examples < cell.examples_asked:
        assert f"warning: {cell.examples} of the {cell.examples_asked} examples asked for ran" in line


class NarrowInFloat64(wrong_mha.Correct):
    """A limit that depends on the dtype: `supports` is told the cell's dtype when it takes a `dtype` keyword."""

    def supports(self, config, dtype=None):
        return "d_model <= 4 only in float64" if dtype == "float64" and config["d_model"] > 4 else None


def test_supports_with_a_dtype_keyword_is_told_the_cells_dtype():
    wide, = check("mha", NarrowInFloat64, **{**CELL, "dtypes": ["float64"]})
    assert wide.verdict == "conformant" and wide.skipped > 0 and wide.skip_reason == "d_model <= 4 only in float64"
    narrow, = check("mha", NarrowInFloat64, **CELL)  # float32: nothing skipped
    assert narrow.verdict == "conformant" and narrow.skipped == 0


class NoKernelForRandomMasks(wrong_mha.Correct):
    """Finds out only when called that it cannot run a random mask (a runtime without the kernel, say)."""

    def forward(self, config, weights, inputs):
        mask = inputs.get("attention_mask")
        if mask is not None and mask.ndim == 3 and mask.shape[1] > 1:  # (B, Lq, Lk): random
            raise plugin.Unsupported("no kernel for a random mask")
        return super().forward(config, weights, inputs)


def test_unsupported_raised_by_a_call_skips_the_example_with_its_reason():
    cell, = check("mha", NoKernelForRandomMasks, **CELL)
    assert cell.verdict == "conformant" and cell.skipped > 0 and cell.skip_reason == "no kernel for a random mask"
    assert cell.examples > 0  # the other examples ran


def test_a_plugin_file_named_like_a_module_a_library_looks_for_shadows_nothing(tmp_path):
    # JAX imports `jax_plugins` when it starts; a plug-in file of that name must not be it
    (tmp_path / "jax_plugins.py").write_text(
        "import jax.numpy as jnp\nimport sys\nsys.path.insert(0, %r)\nfrom wrong_mha import Correct\n"
        "ONES = jnp.ones(2)\n" % str(Path(__file__).parent))
    (tmp_path / "helper_neighbour.py").write_text("VALUE = 3\n")
    (tmp_path / "uses_neighbour.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom helper_neighbour import VALUE\nfrom wrong_mha import Correct\n"
        % str(Path(__file__).parent))
    code = ("from conformance.registry import load_target\n"
            "load_target('jax_plugins.py:Correct'); load_target('uses_neighbour.py:Correct')\n"
            "import jax\nprint('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert "jax_plugins" not in done.stderr


def test_layout_helpers():
    W = np.arange(24.0).reshape(4, 6)
    assert np.array_equal(plugin.linear(W), W.T) and plugin.linear(W).flags["C_CONTIGUOUS"]
    q = plugin.heads_in(W, 2)
    assert q.shape == (4, 2, 3) and np.array_equal(q[:, 1, :], W[:, 3:])
    o = plugin.heads_out(W.T, 2)
    assert o.shape == (2, 3, 4) and np.array_equal(o[1], W.T[3:])
    gates = np.concatenate([np.full((2, 3), k) for k in range(4)], axis=1)  # blocks i=0, f=1, g=2, o=3
    assert [int(b[0, 0]) for b in np.split(plugin.gates(gates, "igfo"), 4, axis=1)] == [0, 2, 1, 3]
    assert np.array_equal(plugin.gates(gates, "ifco"), gates)
    with pytest.raises(ValueError, match="not a permutation"):
        plugin.gates(gates, "iffo")
    b_ih, b_hh = plugin.lstm_biases(np.ones(8))
    assert np.array_equal(b_ih + b_hh, np.ones(8)) and not b_hh.any()


def test_setup_gives_float64_in_jax_and_keras_policies(tmp_path):
    code = ("from conformance import plugin\nimport os\nplugin.setup('jax', 'float64')\nimport jax.numpy as jnp\n"
            "print(jnp.ones(2, dtype='float64').dtype)\nos.environ['KERAS_BACKEND'] = 'torch'\n"
            "plugin.setup('keras', 'float64')\nimport keras\nprint(keras.layers.Dense(2).dtype_policy.name)\n"
            "plugin.setup('torch', 'float64')\nimport torch\nprint(torch.zeros(1).dtype)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "torch"})
    assert done.stdout.split() == ["float64", "float64", "torch.float64"], done.stderr[-2000:]
