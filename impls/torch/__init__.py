"""Implementations as torch.nn.Modules built from torch operations.

Each component module defines its nn.Module and a `load_canonical(module,
weights)` converter; `ModuleInstance` does the rest for all of them: dtype and
device placement, eval mode, NumPy <-> tensor conversion (bfloat16 included),
and the compiled mode through torch.compile.

On CUDA, float32 matmuls and convolutions may silently run in TF32 and half
precision reductions in lower precision; `pin_precision` switches both off so
that a dtype means what it says, and the results record the flags.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from impls import numpy_dtype


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


def environment() -> dict[str, Any]:
    """Versions, the GPU if any, and the precision flags as every cell runs with them."""
    pin_precision()
    env: dict[str, Any] = {"torch": torch.__version__, **precision_flags()}
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

    Static shapes because the harness groups examples by shape: each group
    compiles once. The recompile limit is raised so that a cell with many
    groups keeps compiling rather than silently falling back to eager, and
    hitting it anyway is an error, not a fallback.
    """
    torch._dynamo.config.recompile_limit = 1024
    torch._dynamo.config.accumulated_recompile_limit = 1024
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(module, fullgraph=fullgraph, dynamic=False)


class ModuleInstance:
    """One built module: canonical weights in through `load_canonical`, NumPy arrays in and out.

    `outputs` names the module's return values in order, as the spec names them.
    """

    def __init__(self, module: torch.nn.Module, load_canonical: Callable[[Any, Mapping[str, np.ndarray]], None],
                 outputs: tuple[str, ...], *, dtype: str, device: str, mode: str = "eager"):
        pin_precision()
        self.device = torch.device(DEVICE_NAMES[device])
        self.module = module.to(self.device, getattr(torch, dtype)).eval()
        self.load_canonical, self.outputs = load_canonical, outputs
        self.forward = compile_module(self.module) if mode == "compiled" else self.module

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.load_canonical(self.module, weights)

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        tensors = {name: None if x is None else to_tensor(x, self.device) for name, x in inputs.items()}
        with torch.no_grad():
            result = self.forward(**tensors)
        result = result if isinstance(result, tuple) else (result,)
        return {name: to_numpy(value) for name, value in zip(self.outputs, result)}


class TorchImplementation:
    """What every PyTorch implementation shares.

    A subclass names its component, its output names, and how to make the
    module from the layer parameters (`module`); `load_canonical` is the
    component's weight converter.
    """

    name = "torch"
    framework = "torch"
    dtypes = ("float64", "float32", "float16", "bfloat16")
    modes = ("eager", "compiled")
    outputs: tuple[str, ...]

    def devices(self) -> list[str]:
        return devices()

    def environment(self) -> dict[str, Any]:
        return environment()

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
        return ModuleInstance(self.module(config), type(self).load_canonical, self.outputs,
                              dtype=dtype, device=device, mode=mode)
