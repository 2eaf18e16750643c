"""Implementations under test: the protocol they follow and the registry.

An implementation of a component is an object with:

    component: str                 # the spec id, e.g. "mha"
    build(config, *, dtype, device) -> Instance

and optionally:

    name: str                      # defaults to the attribute's name
    framework: str                 # defaults to "numpy"
    dtypes: tuple[str, ...]        # defaults to ("float32", "float64"); of float64, float32,
                                   # float16, bfloat16
    modes: tuple[str, ...]         # defaults to ("eager",); of eager, compiled
    devices() -> list[str]         # the devices present on this machine; defaults to ["cpu"]
    backend() -> str | None        # e.g. the Keras backend; defaults to None
    environment() -> dict          # versions and precision flags to record; defaults to {}
    outputs: tuple[str, ...]       # the spec outputs it returns; defaults to all of them. A framework
                                   # layer that cannot produce one (e.g. attention weights) lists the
                                   # rest, and only those are compared (results record which)
    supports(config) -> str | None # None if it can express this layer config, else the reason it
                                   # cannot; such examples are skipped and counted, not failed. Make
                                   # the reason a fixed phrase per limit (results group by it), e.g.
                                   # "num_heads * d_head != d_model". Or supports(config, example):
                                   # the whole drawn example too (its data parameters: mask kind,
                                   # B, T, ...), for a limit on the data rather than the layer. A
                                   # cell shows how many it skipped, and warns when fewer examples
                                   # ran than were asked for. A `dtype` keyword, if it takes one, is
                                   # told the cell's dtype. What shows only when the layer runs is
                                   # `raise impls.Unsupported(reason)` from build or a call (also
                                   # conformance.plugin.Unsupported): skipped the same way
    compiles_per_shape(mode) -> bool
                                   # whether each new input shape costs a compilation in `mode`;
                                   # defaults to True for "compiled", False for "eager". Keras on
                                   # JAX says True for "eager" too: JAX compiles every operation
                                   # for each new shape. A compiled mode with dynamic shapes may
                                   # say False, and its cells draw shapes freely
    compilations() -> dict[str, int]
                                   # the framework's own running counts in this process, e.g.
                                   # {"graphs": 3, "cache_hits": 1}; the harness records how much
                                   # each grew over a cell. Defaults to {} (nothing to count)

An implementation that lists "compiled" in `modes` is built with
`build(config, dtype=..., device=..., mode="compiled")` for those cells and
should compile its forward pass once per input shape. Where a new shape costs
a compilation (`compiles_per_shape`), the harness draws a few shapes per cell
up front and searches within them, so that a cell compiles a handful of
times, not per example.

A framework with a compiler keeps its compiled code in a persistent cache
under `compilation_cache_dir(framework)` (CONFORMANCE_CACHE_DIR; "off" for
none), and its `environment()` says whether it used one and where.

`config` holds the spec's layer parameters only (see the spec's parameter
table). The returned Instance has:

    load(weights)                  # dict of NumPy float arrays, canonical names, shapes and layout
    __call__(inputs) -> outputs    # dict of NumPy arrays (or None) -> dict of array-likes by output name,
                                   # or a tuple of them in the order of `outputs` (the spec's output
                                   # table when it declares none), or one array for one output

and optionally:

    vjp(inputs, cotangents) -> {name: gradient}
                                   # the gradients of sum(cotangent * output) over the outputs, with
                                   # respect to every float input (by input name) and every weight
                                   # (canonical names and layout), at the weights last loaded;
                                   # `cotangents` has one entry per output the instance returns, in
                                   # that order, None for an integer output; gradients in the dtype
                                   # under test. Raising NotImplementedError(reason) says it cannot
                                   # differentiate this layer: the cell's gradients are then
                                   # unsupported, as without vjp (spec/README.md, "Gradients")

Our NumPy instances run the reference's backward pass in their dtype; our
PyTorch modules and Keras layers differentiate with the framework
(torch.autograd; jax.vjp, tf.GradientTape or torch.autograd through Keras'
`stateless_call`), and map the parameters' gradients back through
`load_canonical` by tracing where it puts each canonical element.

An Instance may be called many times, with other inputs, shapes and loaded
weights in between: its outputs must depend on the weights last loaded and
the call's inputs only, and a call must change neither (spec/README.md,
"Properties": statelessness and determinism are checked, and a failure that
needs earlier calls is replayed with them).

Inputs arrive as NumPy arrays of the dtype under test (masks as bool, tokens as
int64; bfloat16 is ml_dtypes.bfloat16, see `numpy_dtype`); outputs are
converted with numpy.asarray and must have that dtype. An
Instance is built once per distinct config and loaded with many weight sets.

Every component with a spec in spec/ has our implementations in
impls/<framework>/<component>.py (class Implementation) for each framework of
OUR_FRAMEWORKS. The frameworks' own layers are adapted in
impls/<framework>/builtin_*.py and listed in the harness's component records
(conformance/components.py). The harness's
registry (conformance/registry.py) imports them only when used, so a missing
framework shows as unavailable. Nothing here imports the harness: dtypes,
devices and modes are named by the strings of its axes
(conformance/vocabulary.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


class Unsupported(Exception):
    """Raised by `build` or a call: this example cannot be expressed here (a runtime without a kernel for the
    dtype, an exporter without a translation), found only when the layer runs; the harness skips the example
    with the reason, as one `supports` refuses."""


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype the harness hands in for a dtype name; bfloat16 is ml_dtypes.bfloat16."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


#: Where frameworks keep compiled code between runs (`compilation_cache_dir`); "off" for nowhere.
CACHE_VARIABLE = "CONFORMANCE_CACHE_DIR"


def compilation_cache_dir(framework: str) -> Path | None:
    """The folder for `framework`'s persistent compilation cache, or None when CONFORMANCE_CACHE_DIR is "off".

    Default: nn-conformance/<framework> under $XDG_CACHE_HOME (~/.cache), so that
    later runs, and the other worker processes of a run, reuse what one compiled.
    The caches key compiled code on the whole program (graph, shapes, dtypes,
    compiler flags and versions), so a hit is the code a fresh compilation
    would produce, and cannot change a result.
    """
    setting = os.environ.get(CACHE_VARIABLE, "").strip()
    if setting.lower() == "off":
        return None
    root = Path(setting) if setting else Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "nn-conformance"
    return root.expanduser() / framework


#: The frameworks we implement every component in: impls/<framework>/<component>.py, class Implementation.
OUR_FRAMEWORKS = ("numpy", "torch", "keras")


class FrameworkLayer:
    """Mixed into every adapter of a framework's own layer: they run in float64 and float32, eager.

    (Their point is what the framework computes in the dtypes people train in; the compiled mode and
    the half-precision dtypes are left to our own implementations.)
    """

    dtypes = ("float64", "float32")
    modes = ("eager",)


def jax_compilation_cache() -> dict[str, Any]:
    """Switch on JAX's persistent compilation cache unless CONFORMANCE_CACHE_DIR is "off"; what to record.

    JAX decides on its cache at its first compilation, so this runs at import.
    By default JAX caches only programs that took a second or more to compile;
    on a CPU nearly every program here is quicker (each operation of an eager
    call is a program of its own), so both thresholds are lowered to nothing.
    CONFORMANCE_CACHE_DIR decides, over JAX_COMPILATION_CACHE_DIR, so that
    results name one place. The cache keys a program on its HLO, the compile
    options, the flags and the versions of jax and jaxlib, so a hit cannot
    change a result.
    """
    import jax

    folder = compilation_cache_dir("jax")
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return {"compilation_cache": "off"}
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return {"compilation_cache": jax.config.jax_compilation_cache_dir,
            "jax_persistent_cache_min_compile_time_secs": jax.config.jax_persistent_cache_min_compile_time_secs}


def count_jax_compilations(counts: Any) -> None:
    """Count JAX's compilations into `counts` (a Counter) from its monitoring events: "graphs", the XLA
    programs compiled or loaded from the persistent cache, and "cache_hits", those loaded. Once per process and
    counter (impls.keras on JAX and impls.jax keep one each)."""
    import jax

    def on_duration(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":  # compiled, or loaded from the cache
            counts["graphs"] += 1

    def on_event(event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            counts["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
