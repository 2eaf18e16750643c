"""Fewer compilations: the shape pool of cells that compile per shape, and the persistent compilation caches.

An implementation whose eager mode compiles per shape (Keras on JAX) gets a
few shapes per cell drawn up front, as compiled cells do (spec/README.md,
"Which shapes a cell reaches"); compiled torch cells compile once per shape
group; the persistent caches of torch, JAX and XLA on TensorFlow live under CONFORMANCE_CACHE_DIR,
and every cell records where, or "off".
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from conformance import generate
from conformance.engine import COMPILED_SHAPES, run_cell
from conformance.spec import load_spec
from conformance.registry import _describe, find_shipped
from impls import CACHE_VARIABLE, compilation_cache_dir
from impls.numpy.mha import Implementation as NumpyAttention

ROOT = Path(__file__).resolve().parent.parent
torch_installed = importlib.util.find_spec("torch") is not None
jax_installed = all(importlib.util.find_spec(m) is not None for m in ("keras", "jax"))


@cache
def spec(component: str):
    return load_spec(ROOT / "spec" / f"{component}.md")


def pool_size(component: str) -> int:
    """The shapes a pooled cell draws: at least one per stratum."""
    strata = len(generate.strata(spec(component)))
    return max(1, COMPILED_SHAPES // strata) * strata


# --- the protocol ---------------------------------------------------------------------

class ShapeCompilingAttention(NumpyAttention):
    """NumPy attention whose eager mode says it compiles per shape, and which counts the shapes it meets."""

    def __init__(self):
        self.seen: set[tuple] = set()

    def compiles_per_shape(self, mode: str) -> bool:
        return True

    def compilations(self) -> dict[str, int]:
        return {"graphs": len(self.seen)}

    def build(self, config, *, dtype, device):
        inner, seen = super().build(config, dtype=dtype, device=device), self.seen

        class Counted:
            def load(self, weights):
                inner.load(weights)

            def __call__(self, inputs):
                seen.add((tuple(sorted(config.items())),
                          tuple((k, None if v is None else v.shape) for k, v in inputs.items())))
                return inner(inputs)

        return Counted()


def sizes_drawn(cell) -> set[tuple]:
    """The distinct settings of the spec's parameters among a cell's sampled examples (seed and magnitude aside)."""
    columns = cell.samples["columns"]
    return {tuple((k, v) for k, v in zip(columns, row) if k not in ("seed", "scale_exp", "ratio"))
            for row in cell.samples["rows"]}


def registered(obj, name: str):
    return _describe(obj, f"tests.test_compilation:{name}", "plugin", default_name=name)


def test_compiled_mode_compiles_per_shape_unless_an_implementation_says_otherwise():
    plain = find_shipped("mha", "numpy")
    assert not plain.compiles_per_shape("eager") and plain.compiles_per_shape("compiled")
    assert plain.compilations() == {}
    says = registered(ShapeCompilingAttention(), "ShapeCompilingAttention")
    assert says.compiles_per_shape("eager") and says.compilations() == {"graphs": 0}


def test_an_eager_cell_that_compiles_per_shape_draws_a_pool_and_still_runs_the_worked_examples(mha_spec):
    impl = ShapeCompilingAttention()
    cell = run_cell(mha_spec, registered(impl, "ShapeCompilingAttention"), "float32", "cpu", max_examples=60)
    assert cell.verdict == "conformant", cell.reason
    worked = len(mha_spec.examples)
    assert cell.examples >= 60 + worked  # the search, then every worked example
    assert cell.compiles == len(impl.seen) <= pool_size("mha") + worked
    assert cell.framework_compiles == {"graphs": len(impl.seen)}
    assert len(sizes_drawn(cell)) <= pool_size("mha")


def test_other_eager_cells_draw_shapes_freely(mha_spec):
    cell = run_cell(mha_spec, find_shipped("mha", "numpy"), "float32", "cpu", max_examples=60)
    assert cell.verdict == "conformant" and cell.compiles == 0 and cell.framework_compiles == {}
    assert len(sizes_drawn(cell)) > pool_size("mha")


# --- the cache folder -------------------------------------------------------------------

def test_cache_folder_defaults_under_the_user_cache_and_can_be_moved_or_switched_off(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compilation_cache_dir("jax") == tmp_path / "nn-conformance" / "jax"
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "elsewhere"))
    assert compilation_cache_dir("torch") == tmp_path / "elsewhere" / "torch"
    monkeypatch.setenv(CACHE_VARIABLE, "off")
    assert compilation_cache_dir("torch") is None


@pytest.mark.skipif(not torch_installed, reason="PyTorch is not installed")
def test_a_torch_cell_records_its_cache_setting(monkeypatch, tmp_path):
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config

    import impls.torch as torch_impls

    # leave torch's configuration and environment as they were for the other tests
    monkeypatch.setattr(inductor_config, "fx_graph_cache", inductor_config.fx_graph_cache)
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", functorch_config.enable_autograd_cache)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path))
    cell = run_cell(spec("ffn"), find_shipped("ffn", "torch"), "float32", "cpu", max_examples=3)
    assert cell.environment["compilation_cache"] == str(tmp_path / "torch")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "torch")
    assert cell.framework_compiles == {"graphs": 0, "cache_hits": 0}  # the eager mode compiles nothing

    monkeypatch.setenv(CACHE_VARIABLE, "off")
    assert torch_impls.compilation_cache() == {"compilation_cache": "off"}
    assert not inductor_config.fx_graph_cache and not functorch_config.enable_autograd_cache


# --- real compilers, one process per run ---------------------------------------------

CELL = """
import json, sys
from pathlib import Path
from conformance.engine import run_cell
from conformance.spec import load_spec
from conformance.registry import find_shipped

component, name, dtype, mode, examples = json.loads(sys.argv[1])
cell = run_cell(load_spec(Path("spec") / f"{component}.md"), find_shipped(component, name), dtype, "cpu", mode,
                max_examples=examples)
print(json.dumps(cell.to_json()))
"""


def run_in_process(cell: list, env: dict[str, str]) -> dict:
    """One cell in a fresh Python process, so that only the persistent cache carries over between runs."""
    proc = subprocess.run([sys.executable, "-c", CELL, json.dumps(cell)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not jax_installed, reason="Keras or JAX is not installed")
def test_keras_eager_cells_on_jax_meet_a_pool_of_shapes_and_reuse_the_cache(tmp_path):
    env = {"KERAS_BACKEND": "jax", CACHE_VARIABLE: str(tmp_path)}
    first = run_in_process(["ffn", "keras", "float32", "eager", 20], env)
    assert first["verdict"] == "conformant", first["reason"]
    assert first["compiles"] <= pool_size("ffn") + len(spec("ffn").examples)
    assert first["environment"]["compilation_cache"] == str(tmp_path / "jax")
    assert first["environment"]["jax_persistent_cache_min_compile_time_secs"] == 0
    assert first["framework_compiles"]["graphs"] > 0 and any((tmp_path / "jax").iterdir())

    again = run_in_process(["ffn", "keras", "float32", "eager", 20], env)  # the same seed: the same shapes
    assert again["verdict"] == "conformant" and again["compiles"] == first["compiles"]
    assert again["framework_compiles"]["cache_hits"] > 0

    off = run_in_process(["ffn", "keras", "float32", "eager", 5], {**env, CACHE_VARIABLE: "off"})
    assert off["environment"]["compilation_cache"] == "off" and off["framework_compiles"]["cache_hits"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not torch_installed, reason="PyTorch is not installed")
def test_compiled_torch_cells_conform_with_one_graph_per_shape_and_reuse_the_cache(tmp_path):
    """No hidden recompilations: torch compiles one whole graph per shape the harness met for the call, and
    one more for a shape whose gradients were checked (the call with inputs that require gradients, traced
    with its backward); a rerun loads every one of them from the persistent cache."""
    env = {CACHE_VARIABLE: str(tmp_path)}
    first = run_in_process(["ffn", "torch", "float32", "compiled", 9], env)
    assert first["verdict"] == "conformant", first["reason"]
    assert first["gradients"]["verdict"] == "conformant", first["gradients"]["reason"]
    assert first["compiles"] == pool_size("ffn")
    graphs = first["framework_compiles"]["graphs"]
    assert first["compiles"] < graphs <= 2 * first["compiles"]
    assert first["environment"]["compilation_cache"] == str(tmp_path / "torch")

    again = run_in_process(["ffn", "torch", "float32", "compiled", 9], env)
    assert again["verdict"] == "conformant" and again["max_ratio"] == first["max_ratio"]
    assert again["gradients"]["max_ratio"] == first["gradients"]["max_ratio"]
    # every graph's inductor code is loaded, not compiled: a differentiated graph has two (forward and backward)
    assert again["framework_compiles"]["graphs"] == graphs and first["framework_compiles"]["cache_hits"] == 0
    assert again["framework_compiles"]["cache_hits"] == first["compiles"] + 2 * (graphs - first["compiles"])
    assert again["compile_seconds"] < first["compile_seconds"]


tensorflow_installed = all(importlib.util.find_spec(m) is not None for m in ("keras", "tensorflow"))


@pytest.mark.skipif(not tensorflow_installed, reason="Keras or TensorFlow is not installed")
def test_compiled_keras_cells_on_tensorflow_keep_their_xla_programs(tmp_path):
    """XLA's persistent cache (TF_XLA_FLAGS) under CONFORMANCE_CACHE_DIR: written by a first run, recorded,
    the same verdict and errors on a rerun, and neither written nor named when the cache is off."""
    env = {"KERAS_BACKEND": "tensorflow", CACHE_VARIABLE: str(tmp_path), "TF_XLA_FLAGS": ""}
    first = run_in_process(["ffn", "keras", "float32", "compiled", 6], env)
    assert first["verdict"] == "conformant", first["reason"]
    assert first["environment"]["compilation_cache"] == str(tmp_path / "tensorflow")
    programs = sorted(p.name for p in (tmp_path / "tensorflow").iterdir())
    assert programs and all(name.endswith(".pb") for name in programs)

    again = run_in_process(["ffn", "keras", "float32", "compiled", 6], env)
    assert (again["verdict"], again["max_ratio"]) == (first["verdict"], first["max_ratio"])
    assert sorted(p.name for p in (tmp_path / "tensorflow").iterdir()) == programs  # loaded, not compiled anew

    off = run_in_process(["ffn", "keras", "float32", "compiled", 3], {**env, CACHE_VARIABLE: "off",
                                                                      "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert off["environment"]["compilation_cache"] == "off" and not (tmp_path / "xdg").exists()

    mine = tmp_path / "mine"
    chosen = run_in_process(["ffn", "keras", "float32", "compiled", 3],
                            {**env, "TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={mine}"})
    assert chosen["environment"]["compilation_cache"] == str(mine) and any(mine.iterdir())
