"""Implementations as torch.nn.Modules built from torch operations.

Each component module defines its nn.Module and a `load_canonical(module,
weights)` converter; `ModuleInstance` does the rest for all of them: dtype and
device placement, eval mode, NumPy <-> tensor conversion (bfloat16 included),
and the compiled mode through torch.compile.

On CUDA, float32 matmuls and convolutions may silently run in TF32 and half
precision reductions in lower precision; `pin_precision` switches both off so
that a dtype means what it says, and the results record the flags.

Inductor keeps what it compiled (FX graphs and AOT autograd results, on by
default in torch 2.13) in a persistent cache; `compilation_cache` puts it
under the project's cache folder, so that a rerun of a compiled cell loads its
graphs instead of compiling them, and the results record where.
"""

from __future__ import annotations

import copy
import os
import weakref
from typing import Any, Callable, Mapping

import numpy as np
import torch

from impls import compilation_cache_dir, numpy_dtype


#: The harness's device names as torch devices. Tests point "cuda" at the CPU
#: to run the GPU code path on machines without one.
DEVICE_NAMES = {"cpu": "cpu", "cuda": "cuda"}


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pin_precision() -> None:
    """Full-precision float32 matmuls, convolutions and reductions on CUDA (no TF32)."""
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False


def precision_flags() -> dict[str, Any]:
    matmul = torch.backends.cuda.matmul
    return {"torch.backends.cuda.matmul.fp32_precision": matmul.fp32_precision,
            "torch.backends.cudnn.conv.fp32_precision": torch.backends.cudnn.conv.fp32_precision,
            "torch.backends.cudnn.rnn.fp32_precision": torch.backends.cudnn.rnn.fp32_precision,
            "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction":
                matmul.allow_fp16_reduced_precision_reduction,
            "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction":
                matmul.allow_bf16_reduced_precision_reduction,
            "torch.get_float32_matmul_precision": torch.get_float32_matmul_precision()}


def compilation_cache() -> dict[str, Any]:
    """Point inductor's persistent cache at the project's folder (before any compilation); what to record.

    CONFORMANCE_CACHE_DIR decides, over TORCHINDUCTOR_CACHE_DIR: importing
    inductor (which Keras on the torch backend does) sets that to torch's
    default under /tmp already, so a value found there says nothing about the
    user's wish; inductor reads it again at each compilation. The FX graph and
    AOT autograd caches are switched on or off with it (torch 2.13 has both on
    by default); switched off, inductor still reuses the kernels it built,
    keyed on their source, in its default folder, which changes no code. A hit
    returns the code compiled earlier for the same graph, input shapes,
    dtypes, configuration and versions, so it cannot change a result.
    """
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config

    folder = compilation_cache_dir("torch")
    inductor_config.fx_graph_cache = functorch_config.enable_autograd_cache = folder is not None
    if folder is None:
        return {"compilation_cache": "off"}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return {"compilation_cache": str(folder)}


def compilations() -> dict[str, int]:
    """Dynamo's running counts in this process: graphs compiled (graph breaks make more), and of them those
    whose inductor code came from the persistent cache."""
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "cache_hits": counters["inductor"]["fxgraph_cache_hit"]}


def environment() -> dict[str, Any]:
    """Versions, the GPU if any, the precision flags as every cell runs with them, and the compilation cache."""
    pin_precision()
    env: dict[str, Any] = {"torch": torch.__version__, **precision_flags(), **compilation_cache()}
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def to_tensor(a: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A NumPy array as a tensor; bfloat16 (ml_dtypes) goes through float32, which holds it exactly."""
    if a.dtype == numpy_dtype("bfloat16"):
        return torch.from_numpy(a.astype(np.float32)).to(device, torch.bfloat16)
    return torch.as_tensor(np.ascontiguousarray(a), device=device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16 of its own; float32 holds it exactly
        return t.float().numpy().astype(numpy_dtype("bfloat16"))
    return t.numpy()


def compile_module(module: torch.nn.Module, fullgraph: bool = True) -> Callable[..., Any]:
    """torch.compile with the default (inductor) backend, shapes static; a whole graph unless told otherwise.

    Static shapes, not dynamic ones, because they would not save a compilation
    here: the harness draws a few shapes per cell, each with a layer config of
    its own, and torch.compile specialises a graph on the layer's parameter
    shapes and integer attributes (num_heads, d_head) whatever `dynamic` says,
    so each group compiles once either way. Measured on a 2-core CPU with
    torch 2.13, dynamic=True compiled as many graphs and was slower: our
    encoder_block in float32, 8 graphs both ways, 58 s against 55 s from a cold
    cache and 10 s against 6 s from a warm one; Keras' mha on the torch
    backend, 14 graphs against 12 and 85 s against 46 s. Making the parameters
    and attributes symbolic too (force_parameter_static_shapes=False,
    allow_unspec_int_on_nn_module) still recompiled on size-1 dimensions and
    duck-sized guards. What saves time is the persistent cache
    (`compilation_cache`), which a rerun hits for every group.

    The recompile limit is raised so that a cell with many groups keeps
    compiling rather than silently falling back to eager, and hitting it
    anyway is an error, not a fallback.
    """
    compilation_cache()
    torch._dynamo.config.recompile_limit = 1024
    torch._dynamo.config.accumulated_recompile_limit = 1024
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(module, fullgraph=fullgraph, dynamic=False)


class ModuleInstance:
    """One built module: canonical weights in through `load_canonical`, NumPy arrays in and out.

    It returns the module's values as a tuple in the order of the spec's output
    table (or of the implementation's `outputs`, where it returns fewer), which
    the harness names.
    """

    def __init__(self, module: torch.nn.Module, load_canonical: Callable[[Any, Mapping[str, np.ndarray]], None],
                 *, dtype: str, device: str, mode: str = "eager"):
        pin_precision()
        self.device = torch.device(DEVICE_NAMES[device])
        self.module = module.to(self.device, getattr(torch, dtype)).eval()
        self.load_canonical = load_canonical
        self.forward = compile_module(self.module) if mode == "compiled" else self.module

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.load_canonical(self.module, weights)
        self.shapes = {name: np.shape(w) for name, w in weights.items()}

    def __call__(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        tensors = {name: None if x is None else to_tensor(x, self.device) for name, x in inputs.items()}
        with torch.no_grad():
            result = self.forward(**tensors)
        result = result if isinstance(result, tuple) else (result,)
        return tuple(to_numpy(value) for value in result)

    def vjp(self, inputs: Mapping[str, Any], cotangents: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """The gradients of sum(cotangent * output) over the outputs given a cotangent (in the order the module
        returns them, None for an output that has none), with respect to the float inputs and the canonical
        weights, by autograd through the module (the compiled one in the compiled mode); the weights' through
        `load_canonical` backwards (`canonical_gradients`)."""
        tensors = {name: None if x is None else to_tensor(x, self.device) for name, x in inputs.items()}
        floats = [name for name, t in tensors.items() if t is not None and t.is_floating_point()]
        for name in floats:
            tensors[name].requires_grad_(True)
        # the module the call runs: the one built here, or one it was copied into (`called`)
        params = dict(getattr(self, "called", self.module).named_parameters())
        with torch.enable_grad():
            result = self.forward(**tensors)
        result = result if isinstance(result, tuple) else (result,)
        pairs = [(out, to_tensor(c, self.device)) for out, c in zip(result, cotangents.values(), strict=True)
                 if c is not None]
        wrt = [tensors[name] for name in floats] + list(params.values())
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [c for _, c in pairs], allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
        found = {name: to_numpy(g) for name, g in zip(floats, grads)}
        by_param = {name: to_numpy(g) for name, g in zip(params, grads[len(floats):])}
        return {**found, **canonical_gradients(self.module, self.load_canonical, self.shapes, by_param)}


def canonical_gradients(module: torch.nn.Module, load_canonical: Callable[[Any, Mapping[str, np.ndarray]], None],
                        shapes: Mapping[str, tuple[int, ...]], by_param: Mapping[str, np.ndarray]
                        ) -> dict[str, np.ndarray]:
    """Gradients of a module's parameters as gradients of the canonical weights it was loaded from.

    A converter that places each canonical element somewhere (transposed, split, packed, reordered, or in
    several places) and fills the rest with constants is undone by summing each parameter element's gradient
    into the element it came from. Where each came from is found once per set of shapes: a float64 copy of
    the module is loaded with every canonical element's own number (1, 2, ...; 0 is no element) and its
    parameters read back. A converter that computes with the weights (scales, adds) is not such a
    rearrangement, and gets a ValueError: its implementation must give `vjp` itself."""
    found_for = _SOURCES.setdefault(module, {})
    key = tuple(sorted((n, tuple(s)) for n, s in shapes.items()))
    if key not in found_for:
        probe = copy.deepcopy(module).to("cpu", torch.float64)
        numbers, start = {}, 1
        for name, shape in shapes.items():
            size = int(np.prod(shape))
            numbers[name] = np.arange(start, start + size, dtype=np.float64).reshape(shape)
            start += size
        load_canonical(probe, numbers)
        sources = {}
        for name, p in probe.named_parameters():
            found = p.detach().numpy()
            if not (np.all(found == np.round(found)) and found.min(initial=0) >= 0 and found.max(initial=0) < start):
                raise ValueError(f"load_canonical does more than rearrange the weights into {name!r}; give vjp")
            sources[name] = found.astype(np.int64)
        found_for[key] = (sources, start)
    sources, total = found_for[key]
    flat = np.zeros(total)
    for name, g in by_param.items():
        np.add.at(flat, sources[name].ravel(), np.asarray(g, dtype=np.float64).ravel())
    dtype = next(iter(by_param.values())).dtype if by_param else np.float64
    out, start = {}, 1
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        out[name] = flat[start:start + size].reshape(shape).astype(dtype)
        start += size
    return out


#: canonical_gradients' findings: module -> its weights' shapes -> (each parameter's source numbers, their count + 1)
_SOURCES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


class TorchImplementation:
    """What every PyTorch implementation shares.

    A subclass names its component and how to make the module from the layer
    parameters (`module`); `load_canonical` is the component's weight
    converter. The module returns the spec's outputs in the order of its
    output table; one that returns fewer declares them (`outputs`).
    """

    name = "torch"
    framework = "torch"
    dtypes = ("float64", "float32", "float16", "bfloat16")
    modes = ("eager", "compiled")

    def devices(self) -> list[str]:
        return devices()

    def environment(self) -> dict[str, Any]:
        return environment()

    def compilations(self) -> dict[str, int]:
        return compilations()

    def module(self, config: Mapping[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    @staticmethod
    def load_canonical(module: Any, weights: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def supports(self, config: Mapping[str, Any]) -> str | None:
        """None: every configuration of the spec can be built (a framework layer may say otherwise)."""
        return None

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str, mode: str = "eager") -> ModuleInstance:
        reason = self.supports(config)
        if reason is not None:  # the harness asks first; this is for direct callers
            raise ValueError(f"{self.name}: unsupported configuration: {reason}")
        return ModuleInstance(self.module(config), type(self).load_canonical, dtype=dtype, device=device, mode=mode)
