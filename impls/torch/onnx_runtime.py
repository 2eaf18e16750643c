"""ONNX Runtime as an execution target for PyTorch implementations: the module exported, then run by ORT.

`OnnxTarget(inner, exporter)` wraps one of our PyTorch implementations or an
adapter of torch's own layers (anything with `module(config)` and
`load_canonical`, as `TorchImplementation`) and is itself an implementation
(impls/__init__.py): it builds the inner module, exports it with
`torch.onnx.export` and runs the graph in `onnxruntime.InferenceSession`, so
the harness checks what a model deployed through ONNX computes.

- exporter "dynamo": `torch.onnx.export(..., dynamo=True)`, the default
  (torch.export, then onnxscript's torchlib). Named `<inner>[onnx]`.
- exporter "legacy": `torch.onnx.export(..., dynamo=False)`, the TorchScript
  tracer. Named `<inner>[onnx, legacy]`.

How the graph is made and run:

- The weights are graph inputs, not initializers: the module is exported as
  a function of (its inputs, its parameters) through
  `torch.nn.utils.stateless._reparametrize_module`, and `load` only runs the
  inner converter and keeps the parameters as NumPy arrays to feed. So one
  export serves every weight set of a layer config, and the process keeps it
  (`_EXPORTS`) for every instance of that config. The arithmetic is the
  exported module's either way: the exporters fold constants only, and no
  weight is one. The export runs as a user's does, gradients on and the
  parameters requiring them (under no_grad torch.nn.TransformerEncoderLayer
  traces its fused fast path, which the legacy exporter cannot export).
- Input shapes: the dynamo exporter gets `Dim.AUTO` for every input axis of
  size 2 or more and makes dynamic those the program does not specialise (a
  Python loop over T keeps its length), so one export serves every batch
  size and length it can; a call fits an export when its sizes match the
  static axes, agree where axes share a name and lie in the program's ranges
  (`Export.fits`). An export that fails so, or whose program checks sizes at
  run time (which ONNX would drop), is redone with static shapes. The legacy
  exporter exports each input shape anew: its tracer unrolls a Python loop
  over a length without a warning, so a trace given `dynamic_axes` runs at
  other lengths silently wrong (seen: our lstm_classifier, 0.92 for 0.28).
  A call whose shapes no export of its config fits is exported for them.
- An absent input (None: no mask) is left out of the graph; each set of
  present inputs has exports of its own.
- ORT runs on the CPUExecutionProvider, one thread, graph optimizations off
  (`GRAPH_OPTIMIZATION`): the session computes the exported graph's
  operations as they are, so a difference found is the exporter's or a
  kernel's, not one of ORT's fusions, which a deployment may add on top.
- ORT infers and does not differentiate: instances have no `vjp`, and the
  harness records the gradients as unsupported.

An export costs seconds with the dynamo exporter and a fraction of one with
the legacy exporter (2-core CPU, torch 2.13, mha: 2-4 s with dynamic axes
once the exporter's tables are built, `_torchlib_registry_once`; 0.2 s
legacy), so the dynamo targets say that each new layer config or shape costs
one (`compiles_per_shape`) and the harness draws a few per cell, among the
configs the layer accepts.

What ORT or an exporter cannot run is skipped, with the reason, not failed:
ORT has no float64 LSTM kernel, so the targets of torch.nn.LSTM run in
float32 only; it has no float64 Erf, so `supports` (told the dtype) refuses
the exact GELU in float64; another kernel found missing when a graph loads,
or an exporter's "Unsupported type", raises `impls.Unsupported` for the
example (and, for a missing kernel, for its config from then on).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module

from impls import Unsupported
from impls.torch import to_tensor

DYNAMO, LEGACY = "dynamo", "legacy"
EXPORTERS = (DYNAMO, LEGACY)
#: ORT's graph optimizations: off, so that the session runs the exported operations as they are (module doc).
GRAPH_OPTIMIZATION = "ORT_DISABLE_ALL"
#: Exports kept for the process, least recently used dropped first (each well under a MB here).
CACHE_SIZE = 256


class Functional(nn.Module):
    """`module` as a function of its inputs, then its parameters, all positional: what is exported."""

    def __init__(self, module: nn.Module, inputs: Sequence[str], params: Sequence[str]):
        super().__init__()
        self.inner, self.inputs, self.params = module, tuple(inputs), tuple(params)
        self.train(module.training)

    def forward(self, *args: torch.Tensor) -> Any:
        n = len(self.inputs)
        with _reparametrize_module(self.inner, dict(zip(self.params, args[n:]))):
            return self.inner(**dict(zip(self.inputs, args[:n])))


@dataclass
class Export:
    """One exported graph in its session, with its inputs' dims: an int is static, a name a dynamic axis (the
    same name on several axes: the same size), with the sizes the program allows each name (`ranges`)."""

    model: bytes  # the serialized ModelProto, to inspect
    session: Any  # onnxruntime.InferenceSession
    dims: dict[str, tuple[int | str, ...]]
    ranges: dict[str, tuple[int, float]]
    seconds: float

    def fits(self, feeds: Mapping[str, np.ndarray]) -> bool:
        sizes: dict[str, int] = {}
        for name, dims in self.dims.items():
            shape = np.shape(feeds[name]) if name in feeds else None
            if shape is None:
                continue
            if len(shape) != len(dims):
                return False
            for d, n in zip(dims, shape):
                if isinstance(d, int):
                    if d != n:
                        return False
                elif sizes.setdefault(d, n) != n or not self.ranges.get(d, (0, np.inf))[0] <= n <= \
                        self.ranges.get(d, (0, np.inf))[1]:
                    return False
        return True


class ExportError(Exception):
    """torch.onnx.export failed: the exporter's error, in one line."""


@contextlib.contextmanager
def _torchlib_registry_once() -> Iterator[None]:
    """The dynamo exporter's table of ONNX translations built once per process instead of at every export.

    torch.onnx.export(dynamo=True) rebuilds it from torchlib each time (2-4 s of an export of mha on a 2-core
    CPU, torch 2.13) and only reads it. Through a private name (torch.onnx._internal.exporter._registration);
    where that is missing, exports build it as usual.
    """
    try:
        from torch.onnx._internal.exporter import _registration
        build = _registration.ONNXRegistry.__dict__["from_torchlib"]
    except (ImportError, KeyError):
        yield
        return

    def once(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build.__func__(cls, *args, **kwargs)
        return _REGISTRIES[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(once)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = build


_REGISTRIES: dict[tuple, Any] = {}


@contextlib.contextmanager
def _stdout_discarded() -> Iterator[None]:
    """File descriptor 1 pointed at the null device: the legacy exporter prints its whole graph from C++ when
    it fails."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' notices (deprecation, torchvision's absence, printed progress and graphs) off."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _stdout_discarded():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # a trace is only used at its own shapes
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            yield
    finally:
        logger.setLevel(level)


def export_bytes(function: Functional, args: tuple[torch.Tensor, ...], exporter: str, dynamic: bool
                 ) -> tuple[bytes, dict[str, tuple[int, float]]]:
    """The serialized ONNX model of `function` on `args`, and the sizes its dynamic axes may take.

    With `dynamic` (the dynamo exporter only) every input axis of size 2 or more gets `Dim.AUTO`; an axis of
    size 1 stays static, since torch.export traces broadcasting at 1 that does not hold at other sizes (seen:
    torch.nn.MultiheadAttention exported from B = Lq = Lk = 1 fails at 2). A program that needs runtime checks
    on its sizes (which ONNX would drop) is refused with ValueError, and exported static by the caller.
    """
    names = list(function.inputs) + list(function.params)
    n = len(function.inputs)
    args = args[:n] + tuple(a.detach().requires_grad_(True) for a in args[n:])  # parameters, as a user's
    with _quiet(), torch.enable_grad():
        if exporter == DYNAMO:
            from torch.export import Dim

            shapes = tuple({i: Dim.AUTO for i in range(a.dim()) if a.shape[i] > 1} if j < n else None
                           for j, a in enumerate(args))
            with _torchlib_registry_once():
                program = torch.onnx.export(function, args, dynamo=True, input_names=names, verbose=False,
                                            dynamic_shapes=(shapes,) if dynamic else None)
            exported = program.exported_program
            if any("assert" in str(node.target) for node in exported.graph.nodes):
                raise ValueError("the program checks its sizes at run time")
            ranges = {str(symbol): (int(r.lower), float(r.upper)) for symbol, r in exported.range_constraints.items()}
            return program.model_proto.SerializeToString(), ranges
        buffer = io.BytesIO()
        torch.onnx.export(function, args, buffer, dynamo=False, input_names=names)
        return buffer.getvalue(), {}


def session(model: bytes) -> Any:
    """An InferenceSession of the model: CPUExecutionProvider, one thread, GRAPH_OPTIMIZATION, warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def make_export(function: Functional, args: tuple[torch.Tensor, ...], exporter: str) -> Export:
    """`function` exported (dynamic axes first with dynamo, static if that fails) and loaded in a session."""
    import onnx

    start = time.perf_counter()
    try:
        try:
            model, ranges = export_bytes(function, args, exporter, dynamic=exporter == DYNAMO)
        except Exception:
            if exporter != DYNAMO:
                raise
            model, ranges = export_bytes(function, args, exporter, dynamic=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if type(e).__name__ == "UnsupportedOperatorError" or first.startswith("Unsupported type"):
            # the exporter says it has no translation for this (seen: the legacy exporter's attention with a
            # float64 mask, "Unsupported type for attn_mask: 7"): the example cannot be expressed, not a failure
            raise Unsupported(f"torch.onnx.export(dynamo={exporter == DYNAMO}) cannot export it: {first}") from None
        raise ExportError(f"torch.onnx.export(dynamo={exporter == DYNAMO}) failed: {type(e).__name__}: {first}"
                          ) from None
    dims = {i.name: tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim)
            for i in onnx.load_from_string(model).graph.input}
    try:
        loaded = session(model)
    except Exception as e:
        missing = re.search(r"NOT_IMPLEMENTED : Could not find an implementation for (\w+)\((\d+)\)", str(e))
        if missing is None:
            raise
        dtype = next((str(a.dtype).replace("torch.", "") for a in args if a.is_floating_point()), "this dtype")
        raise Unsupported(f"ONNX Runtime's CPU provider has no {dtype} kernel for {missing[1]} "
                          f"(opset {missing[2]})") from None
    found = Export(model, loaded, dims, ranges, time.perf_counter() - start)
    _COUNTS["exports"] += 1
    _COUNTS["export_ms"] += round(1000 * found.seconds)
    return found


#: (target name, layer config, dtype, present inputs) -> the exports made for them, shared by all instances
_EXPORTS: "OrderedDict[tuple, list[Export]]" = OrderedDict()
#: the same keys (with the present inputs) -> why ORT cannot run their graphs (a kernel it lacks for the dtype)
_UNSUPPORTED: dict[tuple, str] = {}
#: the process's running counts (`OnnxTarget.compilations`)
_COUNTS = {"exports": 0, "export_ms": 0}


class OnnxInstance:
    """One layer config: the inner module (for its converter and parameters) and its exports, fed by name."""

    def __init__(self, target: "OnnxTarget", module: nn.Module, config: Mapping[str, Any], dtype: str):
        self.target, self.module = target, module
        self.key = (target.name, tuple(sorted(config.items())), dtype)
        self.params = self._parameters()

    def _parameters(self) -> dict[str, np.ndarray]:
        return {name: p.detach().numpy().copy() for name, p in self.module.named_parameters()}

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.target.inner.load_canonical(self.module, weights)
        self.params = self._parameters()

    def __call__(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        present = [name for name, x in inputs.items() if x is not None]
        feeds = {**{name: np.ascontiguousarray(inputs[name]) for name in present}, **self.params}
        key = (*self.key, tuple(present))
        if key in _UNSUPPORTED:  # a missing kernel is the graph's operations' and dtype's, whatever the shapes
            raise Unsupported(_UNSUPPORTED[key])
        exports = _EXPORTS.setdefault(key, [])
        _EXPORTS.move_to_end(key)
        found = next((e for e in exports if e.fits(feeds)), None)
        if found is None:
            args = tuple(to_tensor(feeds[name]) for name in feeds)  # inputs, then parameters
            try:
                found = make_export(Functional(self.module, present, list(self.params)), args, self.target.exporter)
            except Unsupported as e:
                _UNSUPPORTED[key] = str(e)
                raise
            exports.append(found)
            while len(_EXPORTS) > CACHE_SIZE:
                _EXPORTS.popitem(last=False)
        self.last_export = found
        wanted = {i.name for i in found.session.get_inputs()}  # an exporter may drop an input nothing reads
        return tuple(found.session.run(None, {k: v for k, v in feeds.items() if k in wanted}))


def tagged(name: str, tag: str) -> str:
    """`name[tag]`, or the tag added inside the name's own brackets: torch.nn.X[a] -> torch.nn.X[a, tag]."""
    return f"{name[:-1]}, {tag}]" if name.endswith("]") else f"{name}[{tag}]"


class OnnxTarget:
    """A PyTorch implementation (ours, or an adapter of torch's own layer) exported to ONNX and run by ORT."""

    framework = "torch"
    modes = ("eager",)

    def __init__(self, inner: Any, exporter: str = DYNAMO, dtypes: tuple[str, ...] = ("float64", "float32"),
                 pooled: bool | None = None):
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
        self.inner, self.exporter, self.dtypes = inner, exporter, tuple(dtypes)
        self.pooled = exporter == DYNAMO if pooled is None else pooled
        self.component = inner.component
        self.name = tagged(inner.name, "onnx" if exporter == DYNAMO else "onnx, legacy")
        if getattr(inner, "outputs", None) is not None:
            self.outputs = tuple(inner.outputs)

    def supports(self, config: Mapping[str, Any], *, dtype: str | None = None) -> str | None:
        """The inner implementation's limits, and ONNX Runtime's: its CPU provider has no float64 Erf, which
        the exact GELU's graph needs (ONNX Gelu's function body; F.gelu's export). Other kernels it lacks show
        when a graph loads, and those examples are skipped then (`make_export`)."""
        if dtype == "float64" and config.get("activation") == "gelu":
            return "ONNX Runtime's CPU provider has no float64 kernel for Erf (the exact GELU)"
        return self.inner.supports(config)

    def devices(self) -> list[str]:
        return ["cpu"]  # the CPUExecutionProvider

    def compiles_per_shape(self, mode: str) -> bool:
        """Whether the harness should draw a few layer configs and shapes per cell and search within them: each
        new one costs an export, seconds long with dynamo (`pooled`)."""
        return self.pooled

    def compilations(self) -> dict[str, int]:
        return dict(_COUNTS)

    def environment(self) -> dict[str, Any]:
        import onnx
        import onnxruntime

        env = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
               "exporter": f"torch.onnx.export(dynamo={self.exporter == DYNAMO})",
               "graph_optimization_level": GRAPH_OPTIMIZATION, "execution_provider": "CPUExecutionProvider"}
        if self.exporter == DYNAMO:
            import onnxscript

            env["onnxscript"] = onnxscript.__version__
        return env

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str, mode: str = "eager") -> OnnxInstance:
        reason = self.supports(config, dtype=dtype)
        if reason is not None:  # the harness asks first; this is for direct callers
            raise ValueError(f"{self.name}: unsupported configuration: {reason}")
        if device != "cpu" or mode != "eager" or dtype not in self.dtypes:
            raise ValueError(f"{self.name} runs on cpu, eager, in {', '.join(self.dtypes)}; "
                             f"got {device}, {mode}, {dtype}")
        module = self.inner.module(config).to(getattr(torch, dtype)).eval()
        return OnnxInstance(self, module, config, dtype)


def load_inner(target: str) -> Any:
    """The implementation at "package.module:Class" (a class is instantiated)."""
    module, _, attr = target.rpartition(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if isinstance(obj, type) else obj


def targets(inner_target: str, dtypes: tuple[str, ...] = ("float64", "float32"), pooled: bool | None = None
            ) -> list[OnnxTarget]:
    """Both targets of one inner implementation ("package.module:Class"): the dynamo exporter's, the legacy's."""
    inner = load_inner(inner_target)
    return [OnnxTarget(inner, exporter, dtypes, pooled if exporter == DYNAMO else None) for exporter in EXPORTERS]


def _target(class_name: str, inner_target: str, exporter: str, dtypes: tuple[str, ...] = ("float64", "float32"),
            pooled: bool | None = None) -> type:
    """A class the registry can name ("impls.torch.onnx_runtime:Class"): OnnxTarget(inner, exporter, ...), with
    its name and component as class attributes, as the registry's records expect of an adapter."""
    module, _, attr = inner_target.rpartition(":")
    inner = getattr(importlib.import_module(module), attr)

    def __init__(self: OnnxTarget) -> None:
        OnnxTarget.__init__(self, load_inner(inner_target), exporter, dtypes, pooled)

    return type(class_name, (OnnxTarget,), {
        "__init__": __init__, "__module__": __name__, "component": inner.component,
        "name": tagged(inner.name, "onnx" if exporter == DYNAMO else "onnx, legacy"), "dtypes": tuple(dtypes),
        "__doc__": f"{inner_target} through torch.onnx.export ({exporter})."})


FLOAT32 = ("float32",)  # ONNX Runtime's CPU LSTM kernel has no float64 ("LSTM operator does not support double")

# our implementations (impls/torch/<component>.py)
MhaOnnx = _target("MhaOnnx", "impls.torch.mha:Implementation", DYNAMO)
MhaOnnxLegacy = _target("MhaOnnxLegacy", "impls.torch.mha:Implementation", LEGACY)
FfnOnnx = _target("FfnOnnx", "impls.torch.ffn:Implementation", DYNAMO)
FfnOnnxLegacy = _target("FfnOnnxLegacy", "impls.torch.ffn:Implementation", LEGACY)
EmbeddingOnnx = _target("EmbeddingOnnx", "impls.torch.embedding:Implementation", DYNAMO)
EmbeddingOnnxLegacy = _target("EmbeddingOnnxLegacy", "impls.torch.embedding:Implementation", LEGACY)
EncoderBlockOnnx = _target("EncoderBlockOnnx", "impls.torch.encoder_block:Implementation", DYNAMO)
EncoderBlockOnnxLegacy = _target("EncoderBlockOnnxLegacy", "impls.torch.encoder_block:Implementation", LEGACY)
LstmClassifierOnnx = _target("LstmClassifierOnnx", "impls.torch.lstm_classifier:Implementation", DYNAMO)
LstmClassifierOnnxLegacy = _target("LstmClassifierOnnxLegacy", "impls.torch.lstm_classifier:Implementation", LEGACY)
LstmSeq2SeqOnnx = _target("LstmSeq2SeqOnnx", "impls.torch.lstm_seq2seq:Implementation", DYNAMO)
LstmSeq2SeqOnnxLegacy = _target("LstmSeq2SeqOnnxLegacy", "impls.torch.lstm_seq2seq:Implementation", LEGACY)
TextClassifierOnnx = _target("TextClassifierOnnx", "impls.torch.text_classifier:Implementation", DYNAMO)
TextClassifierOnnxLegacy = _target("TextClassifierOnnxLegacy", "impls.torch.text_classifier:Implementation", LEGACY)

# torch's own layers (impls/torch/builtin_*.py). Its attention layers split d_model evenly across the heads and
# reject other configs (`supports`); a pooled cell draws its few configs among those they accept
MultiheadAttentionOnnx = _target("MultiheadAttentionOnnx", "impls.torch.builtin_mha:MultiheadAttentionWeights",
                                 DYNAMO)
MultiheadAttentionOnnxLegacy = _target("MultiheadAttentionOnnxLegacy",
                                       "impls.torch.builtin_mha:MultiheadAttentionWeights", LEGACY)
TransformerEncoderLayerOnnx = _target("TransformerEncoderLayerOnnx",
                                      "impls.torch.builtin_encoder:TransformerEncoderLayer", DYNAMO)
TransformerEncoderLayerOnnxLegacy = _target("TransformerEncoderLayerOnnxLegacy",
                                            "impls.torch.builtin_encoder:TransformerEncoderLayer", LEGACY)
LSTMClassifierOnnx = _target("LSTMClassifierOnnx", "impls.torch.builtin_lstm:Classifier", DYNAMO, FLOAT32)
LSTMClassifierOnnxLegacy = _target("LSTMClassifierOnnxLegacy", "impls.torch.builtin_lstm:Classifier", LEGACY,
                                   FLOAT32)
LSTMSeq2SeqOnnx = _target("LSTMSeq2SeqOnnx", "impls.torch.builtin_lstm:Seq2Seq", DYNAMO, FLOAT32)
LSTMSeq2SeqOnnxLegacy = _target("LSTMSeq2SeqOnnxLegacy", "impls.torch.builtin_lstm:Seq2Seq", LEGACY, FLOAT32)
