"""Implementations under test: the protocol they follow and the registry.

An implementation of a component is an object with:

    component: str                 # the spec id, e.g. "mha"
    build(config, *, dtype, device) -> Instance

and optionally:

    name: str                      # defaults to the attribute's name
    framework: str                 # defaults to "numpy"
    dtypes: tuple[str, ...]        # defaults to ("float32", "float64"); see DTYPES
    modes: tuple[str, ...]         # defaults to ("eager",); see MODES
    devices() -> list[str]         # the devices present on this machine; defaults to ["cpu"]
    backend() -> str | None        # e.g. the Keras backend; defaults to None
    environment() -> dict          # versions and precision flags to record; defaults to {}
    outputs: tuple[str, ...]       # the spec outputs it returns; defaults to all of them. A framework
                                   # layer that cannot produce one (e.g. attention weights) lists the
                                   # rest, and only those are compared (results record which)
    supports(config) -> str | None # None if it can express this layer config, else the reason it
                                   # cannot; such examples are skipped and counted, not failed. Make
                                   # the reason a fixed phrase per limit (results group by it), e.g.
                                   # "num_heads * d_head != d_model"
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
    __call__(inputs) -> outputs    # dict of NumPy arrays (or None) -> dict of array-likes

Inputs arrive as NumPy arrays of the dtype under test (masks as bool, tokens as
int64; bfloat16 is ml_dtypes.bfloat16, see `numpy_dtype`); outputs are
converted with numpy.asarray and must have that dtype. An
Instance is built once per distinct config and loaded with many weight sets.

Every component with a spec in spec/ has built-in implementations in
impls/<framework>/<component>.py (class Implementation), imported only when
used, so a missing framework shows as unavailable. The frameworks' own layers
are registered too, as adapters listed in FRAMEWORK_LAYERS.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

__all__ = ["DEVICES", "DTYPES", "FrameworkLayer", "KERAS_BACKENDS", "Implementation", "Instance", "MODES", "Registered", "UsageError", "builtin",
           "builtins", "CACHE_VARIABLE", "compilation_cache_dir", "entry_point_targets", "load_target",
           "numpy_dtype", "registry", "resolve"]

ENTRY_POINT_GROUP = "conformance.implementations"

#: The dtype axis of the matrix, widest first.
DTYPES = ("float64", "float32", "float16", "bfloat16")
DEFAULT_DTYPES = ("float32", "float64")
#: The device axis: "cuda" is an NVIDIA (or ROCm) GPU, whatever the framework calls it.
DEVICES = ("cpu", "cuda")
#: The execution-mode axis: op by op, or through the framework's compiler.
MODES = ("eager", "compiled")
#: The backends Keras 3 runs on; a worker process runs one (KERAS_BACKEND).
KERAS_BACKENDS = ("tensorflow", "torch", "jax")


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a dtype name; NumPy has no bfloat16 of its own, so it comes from ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return np.dtype(name)


class UsageError(Exception):
    """A name or target that does not exist; the message lists the valid choices."""


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


@runtime_checkable
class Instance(Protocol):
    def load(self, weights: Mapping[str, np.ndarray]) -> None: ...

    def __call__(self, inputs: Mapping[str, np.ndarray | None]) -> Mapping[str, Any]: ...


@runtime_checkable
class Implementation(Protocol):
    component: str

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str) -> Instance: ...


# Which importable modules a framework needs. Keras also needs its backend.
FRAMEWORK_MODULES = {"numpy": ("numpy",), "torch": ("torch",), "keras": ("keras",)}


def keras_backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def missing_modules(framework: str) -> list[str]:
    modules = list(FRAMEWORK_MODULES.get(framework, ()))
    if framework == "keras":
        modules.append(keras_backend())
    return [m for m in modules if importlib.util.find_spec(m) is None]


@dataclass
class Registered:
    """One implementation as the harness sees it: metadata, and the object once loaded."""

    component: str
    name: str
    framework: str
    target: str  # "module:attr" or "path/file.py:attr"
    source: str  # "builtin", "plugin" or "entry point"
    _obj: Any = None

    def unavailable_reason(self) -> str | None:
        missing = missing_modules(self.framework)
        if missing:
            return f"not installed: {', '.join(missing)}"
        return None

    @property
    def label(self) -> str:
        """How results name it: a plug-in by its target, so that the name alone finds it again."""
        return self.target if self.source == "plugin" else self.name

    def load(self) -> Any:
        if self._obj is None:
            self._obj = load_target(self.target)
        return self._obj

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(getattr(self.load(), "dtypes", DEFAULT_DTYPES))

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(getattr(self.load(), "modes", ("eager",)))

    def devices(self) -> list[str]:
        devices = getattr(self.load(), "devices", None)
        return list(devices()) if callable(devices) else ["cpu"]

    def backend(self) -> str | None:
        backend = getattr(self.load(), "backend", None)
        return backend() if callable(backend) else None

    def environment(self) -> dict[str, Any]:
        environment = getattr(self.load(), "environment", None)
        return dict(environment()) if callable(environment) else {}

    def outputs(self, spec_outputs: tuple[str, ...]) -> tuple[str, ...]:
        """The spec outputs this implementation returns; all of them unless it says otherwise."""
        declared = getattr(self.load(), "outputs", None)
        if declared is None:
            return tuple(spec_outputs)
        unknown = [o for o in declared if o not in spec_outputs]
        if unknown or not declared:
            raise UsageError(f"{self.label} declares outputs {tuple(declared)}; they must be a non-empty "
                             f"subset of the spec's: {', '.join(spec_outputs)}")
        return tuple(declared)

    def unsupported_config(self, config: Mapping[str, Any]) -> str | None:
        """Why this implementation cannot express `config`, or None when it can (or does not say)."""
        supports = getattr(self.load(), "supports", None)
        return supports(config) if callable(supports) else None

    def compiles_per_shape(self, mode: str) -> bool:
        """Whether each new input shape costs a compilation in `mode`: by default, in the compiled mode only."""
        says = getattr(self.load(), "compiles_per_shape", None)
        return bool(says(mode)) if callable(says) else mode != "eager"

    def compilations(self) -> dict[str, int]:
        """The framework's running compilation counts in this process, as the implementation reports them."""
        counts = getattr(self.load(), "compilations", None)
        return {k: int(v) for k, v in counts().items()} if callable(counts) else {}


#: Frameworks with a built-in implementation of every component: impls/<framework>/<component>.py,
#: class Implementation.
BUILTIN_FRAMEWORKS = ("numpy", "torch", "keras")


class FrameworkLayer:
    """Mixed into every adapter of a framework's own layer: they run in float64 and float32, eager.

    (Their point is what the framework computes in the dtypes people train in; the compiled mode and
    the half-precision dtypes are left to our own implementations.)
    """

    dtypes = ("float64", "float32")
    modes = ("eager",)


#: The frameworks' own layers, configured from the canonical weights: (component, name, framework, target).
#: The names repeat the adapter classes' `name`, so that the registry lists them without importing a framework.
FRAMEWORK_LAYERS = (
    ("mha", "torch.nn.MultiheadAttention", "torch", "impls.torch.builtin_mha:MultiheadAttentionWeights"),
    ("mha", "torch.nn.MultiheadAttention[need_weights=False]", "torch",
     "impls.torch.builtin_mha:MultiheadAttentionNoWeights"),
    ("mha", "torch.sdpa", "torch", "impls.torch.builtin_mha:SDPA"),
    ("lstm_classifier", "torch.nn.LSTM", "torch", "impls.torch.builtin_lstm:Classifier"),
    ("lstm_seq2seq", "torch.nn.LSTM", "torch", "impls.torch.builtin_lstm:Seq2Seq"),
    ("lstm_seq2seq", "torch.nn.LSTMCell", "torch", "impls.torch.builtin_lstm:Seq2SeqCell"),
    ("encoder_block", "torch.nn.TransformerEncoderLayer", "torch",
     "impls.torch.builtin_encoder:TransformerEncoderLayer"),
    ("encoder_block", "torch.nn.TransformerEncoderLayer[fastpath=False]", "torch",
     "impls.torch.builtin_encoder:TransformerEncoderLayerNoFastpath"),
    ("encoder_block", "torch.nn.TransformerEncoder[nested]", "torch",
     "impls.torch.builtin_encoder:NestedTransformerEncoder"),
    ("lstm_classifier", "keras.layers.LSTM", "keras", "impls.keras.builtin_lstm:Classifier"),
    ("lstm_seq2seq", "keras.layers.LSTM", "keras", "impls.keras.builtin_lstm:Seq2Seq"),
    ("embedding", "keras.layers.Embedding", "keras", "impls.keras.builtin_layers:Embedding"),
    ("ffn", "keras.layers.Dense", "keras", "impls.keras.builtin_layers:Dense"),
    ("mha", "keras.layers.MultiHeadAttention", "keras", "impls.keras.builtin_mha:MultiHeadAttentionScores"),
    ("mha", "keras.layers.MultiHeadAttention[scores=False]", "keras",
     "impls.keras.builtin_mha:MultiHeadAttentionNoScores"),
    ("encoder_block", "keras.layers.LayerNormalization", "keras", "impls.keras.builtin_encoder:LayerNormalization"),
)


def _builtins() -> list[Registered]:
    from conformance.spec import list_components

    components = list_components()
    ours = [Registered(c, fw, fw, f"impls.{fw}.{c}:Implementation", "builtin")
            for c in components for fw in BUILTIN_FRAMEWORKS]
    return ours + [Registered(c, name, fw, target, "builtin")
                   for c, name, fw, target in FRAMEWORK_LAYERS if c in components]


def builtin(component: str, name: str) -> Registered:
    for r in _builtins():
        if r.component == component and r.name == name:
            return r
    raise UsageError(f"no built-in implementation {name!r} of {component!r}")


def registry() -> list[Registered]:
    """Built-in implementations, then those installed under the entry-point group (imported here:
    `conformance list` uses this; `check` and `run` import plug-ins in worker processes instead)."""
    found = _builtins()
    for name, value in entry_point_targets():
        try:
            obj = load_target(value)
            found.append(_describe(obj, value, "entry point", default_name=name))
        except Exception as e:  # a broken plug-in is listed, not fatal
            found.append(Registered("?", name, "?", value, f"entry point (broken: {e})"))
    return found


def builtins() -> list[Registered]:
    """The built-in implementations, known without importing any framework."""
    return _builtins()


def entry_point_targets() -> list[tuple[str, str]]:
    """(name, "module:attr") of each implementation installed under the entry-point group, not imported."""
    return [(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)]


def load_target(target: str) -> Any:
    """Import `package.module:attr` or `path/to/file.py:attr`; instantiate it if it is a class.

    Whatever goes wrong is a UsageError of one line: for a plug-in that fails to
    import or to construct, its file and line and the first line of its error.
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{target!r} is not of the form package.module:attr or path/to/file.py:attr")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"no such file {module_name!r} (from {target!r})")
        # like running a script: the file's folder is importable, so it can import its neighbours
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(f"_conformance_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise UsageError(f"cannot import {target!r}: {_failure(e)}") from None
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):  # the module itself, or its package
                raise UsageError(f"cannot import {module_name!r} (from {target!r}): {e}") from None
            raise UsageError(f"cannot import {target!r}: {_failure(e)}") from None
        except Exception as e:
            raise UsageError(f"cannot import {target!r}: {_failure(e)}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        public = [n for n in vars(module) if not n.startswith("_")]
        raise UsageError(f"{module_name!r} has no attribute {attr!r}; it has: {', '.join(public)}") from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:
            raise UsageError(f"cannot construct {target!r} (it is called with no arguments): "
                             f"{_failure(e, obj)}") from None
    return obj


def _failure(e: BaseException, cls: type | None = None) -> str:
    """`file:line: Type: the first line of the message`, the line being where the error arose."""
    import inspect
    import traceback

    where = None
    if isinstance(e, SyntaxError) and e.filename:
        where, message = f"{e.filename}:{e.lineno}", e.msg
    else:
        message = str(e)
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if f.filename != __file__ and "importlib" not in f.filename and not f.filename.startswith("<")]
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno}"
        elif cls is not None:  # raised at the call itself, e.g. missing arguments: point at the class
            try:
                where = f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
            except (OSError, TypeError):
                pass
    first = (message.strip().splitlines() or [""])[0]
    return f"{where + ': ' if where else ''}{type(e).__name__}{': ' + first if first else ''}"


def _describe(obj: Any, target: str, source: str, default_name: str) -> Registered:
    if not isinstance(getattr(obj, "component", None), str) or not callable(getattr(obj, "build", None)):
        raise UsageError(f"{target!r} is not an implementation: it needs a 'component' string "
                         "and a build(config, *, dtype, device) method (see impls/__init__.py)")
    r = Registered(obj.component, getattr(obj, "name", default_name), getattr(obj, "framework", "numpy"),
                   target, source)
    r._obj = obj
    return r


def resolve(component: str, name_or_target: str) -> Registered:
    """A registered implementation by name, or a plug-in given as module:attr / file.py:attr."""
    if ":" in name_or_target:
        attr = name_or_target.rpartition(":")[2]
        r = _describe(load_target(name_or_target), name_or_target, "plugin", default_name=attr)
        if r.component != component:
            raise UsageError(f"{name_or_target!r} implements {r.component!r}, not {component!r}")
        return r
    return by_name(component, name_or_target, registry())


def by_name(component: str, name: str, registered: list[Any]) -> Any:
    """The one of `registered` (anything with `component` and `name`) that is `name` of `component`."""
    candidates = [r for r in registered if r.component == component]
    for r in candidates:
        if r.name == name:
            return r
    names = ", ".join(r.name for r in candidates) or "none"
    raise UsageError(f"unknown implementation {name!r} of {component!r}; "
                     f"registered: {names}; or give a plug-in as package.module:attr or file.py:attr")
