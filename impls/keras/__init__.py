"""Implementations as Keras 3 layers using keras.ops only, so they run on every backend.

Keras picks its backend once per process from KERAS_BACKEND. On JAX, float64
needs jax_enable_x64, which is switched on here before any array is made;
without it JAX silently computes float64 layers in float32. TF32 and other
reduced-precision matmuls are switched off for every backend (`pin_precision`).

JAX compiles every operation for each new input shape, in the eager mode too,
so there both modes say they compile per shape (`compiles_per_shape`) and the
harness draws a few shapes per cell. JAX's persistent compilation cache is
switched on here, also before anything compiles (`jax_compilation_cache`), and
so is TensorFlow's for its XLA programs (`tensorflow_compilation_cache`); on
the torch backend the compiled mode uses torch's (impls/torch).

Each component module defines its layer and a `load_canonical(layer, weights)`
converter; `LayerInstance` does the rest: device placement through
keras.device, NumPy conversion, and the compiled mode through each backend's
own compiler (tf.function with XLA, jax.jit, torch.compile).
"""

from __future__ import annotations

import collections
import os
import warnings
from typing import Any, Callable, Mapping

from impls import compilation_cache_dir, count_jax_compilations, jax_compilation_cache

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

#: JAX's compilations in this process, counted from its monitoring events: "graphs" (XLA programs compiled
#: or loaded from the persistent cache) and "cache_hits" (those loaded).
JAX_COUNTS: collections.Counter = collections.Counter()
#: What `jax_compilation_cache` or `tensorflow_compilation_cache` set, for the environment; empty on torch.
CACHE: dict[str, Any] = {}


def tensorflow_compilation_cache() -> dict[str, Any]:
    """Point XLA's persistent cache (the compiled mode's `jit_compile=True`) at our folder; what to record.

    TensorFlow reads TF_XLA_FLAGS once, when it first compiles, so this runs
    before Keras imports it. The cache keys a program on its XLA computation
    and the device type, so a hit is what a fresh compilation would produce.
    A folder already named in TF_XLA_FLAGS is left as the user set it.
    """
    folder = compilation_cache_dir("tensorflow")
    flags = os.environ.get("TF_XLA_FLAGS", "")
    given = [f.split("=", 1)[1] for f in flags.split() if f.startswith("--tf_xla_persistent_cache_directory=")]
    if given:
        return {"compilation_cache": given[-1]}
    if folder is None:
        return {"compilation_cache": "off"}
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={folder}".strip()
    return {"compilation_cache": str(folder)}


if os.environ.get("KERAS_BACKEND") == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)
    CACHE.update(jax_compilation_cache())
    count_jax_compilations(JAX_COUNTS)
elif os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    CACHE.update(tensorflow_compilation_cache())

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402


def softmax(x: Any, axis: int = -1) -> Any:
    """keras.ops.softmax, without the warning Keras gives when the axis has size 1.

    A key length of 1 is valid input (every query sees one key), and Keras warns
    about it on every call; the warning is silenced here, around this call only.
    Only then: torch.compile cannot trace the warnings machinery and would break
    the graph there, so other sizes (known when tracing) call Keras directly.
    """
    if x.shape[axis] != 1:
        return ops.softmax(x, axis=axis)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using a softmax over axis -1 of a tensor of shape")
        return ops.softmax(x, axis=axis)


#: How each backend's compiled mode compiles a layer call.
COMPILERS = {"tensorflow": "tf.function(jit_compile=True)", "jax": "jax.jit",
             "torch": "torch.compile(fullgraph=False)"}


def backend() -> str:
    return keras.backend.backend()


def devices() -> list[str]:
    name = backend()
    if name == "torch":
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if name == "jax":
        import jax

        return ["cpu"] + (["cuda"] if any(d.platform == "gpu" for d in jax.devices()) else [])
    if name == "tensorflow":
        import tensorflow as tf

        return ["cpu"] + (["cuda"] if tf.config.list_physical_devices("GPU") else [])
    return ["cpu"]


def pin_precision() -> dict[str, Any]:
    """Full-precision float32 matmuls on GPUs (no TF32), per backend; returns the flags as set."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
        return {"tf.config.experimental.tensor_float_32_execution_enabled":
                tf.config.experimental.tensor_float_32_execution_enabled()}
    if name == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
                "jax_enable_x64": jax.config.jax_enable_x64}
    if name == "torch":
        from impls import torch as torch_impls

        torch_impls.pin_precision()
        return torch_impls.precision_flags()
    return {}


def environment() -> dict[str, Any]:
    """Versions, precision flags, and the compilation cache of the backends that have one here."""
    name = backend()
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(name, "keras"))
    env = {"keras": keras.__version__, name: getattr(module, "__version__", "?"), **pin_precision()}
    if name in ("jax", "tensorflow"):
        env.update(CACHE)
    elif name == "torch":
        from impls import torch as torch_impls

        env.update(torch_impls.compilation_cache())
    return env


def compilations() -> dict[str, int]:
    """The backend's running compilation counts (see `impls.torch.compilations`, `JAX_COUNTS`); {} on TensorFlow."""
    name = backend()
    if name == "jax":
        return {"graphs": JAX_COUNTS["graphs"], "cache_hits": JAX_COUNTS["cache_hits"]}
    if name == "torch":
        from impls import torch as torch_impls

        return torch_impls.compilations()
    return {}


#: The harness's device names as keras.device scopes. Tests point "cuda" at the
#: CPU to run the GPU code path on machines without one.
DEVICE_SCOPES = {"cpu": "cpu:0", "cuda": "gpu:0"}
#: On the torch backend a scope names the torch device as given, and torch.compile
#: treats "cpu:0" and "cpu" as two devices, so it gets torch's own default names.
TORCH_DEVICE_SCOPES = {"cpu": "cpu", "cuda": "cuda"}


def keras_device(device: str) -> str:
    return (TORCH_DEVICE_SCOPES if backend() == "torch" else DEVICE_SCOPES)[device]


def compile_call(layer: keras.layers.Layer) -> Callable[[dict[str, Any]], Any]:
    """The layer's inference call through the backend's compiler; one compilation per input shape."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda tensors: layer(**tensors, training=False), jit_compile=True)
    if name == "jax":
        import jax

        # Variables are arguments, not constants, so loading new weights does not recompile.
        @jax.jit
        def call(trainable, non_trainable, tensors):
            outputs, _ = layer.stateless_call(trainable, non_trainable, **tensors, training=False)
            return outputs

        return lambda tensors: call([v.value for v in layer.trainable_variables],
                                    [v.value for v in layer.non_trainable_variables], tensors)
    if name == "torch":
        from impls.torch import compile_module

        # Keras layer calls hold Python the tracer cannot follow (warnings, device scopes);
        # graph breaks are allowed, as in Keras's own jit_compile on this backend.
        compiled = compile_module(layer, fullgraph=False)
        return lambda tensors: compiled(**tensors, training=False)
    raise ValueError(f"no compiled mode for the Keras backend {name!r}; valid: {', '.join(COMPILERS)}")


class LayerInstance:
    """One built layer: canonical weights in through `load_canonical`, NumPy arrays in and out.

    It returns the layer's values as a tuple in the order of the spec's output
    table (or of the implementation's `outputs`, where it returns fewer), which
    the harness names.
    """

    def __init__(self, layer: keras.layers.Layer, load_canonical: Callable[[Any, Mapping[str, np.ndarray]], None],
                 *, device: str, mode: str = "eager", probe: Callable[[], keras.layers.Layer] | None = None):
        self.layer, self.load_canonical, self.mode, self.probe = layer, load_canonical, mode, probe
        self.device = keras_device(device)
        pin_precision()
        with keras.device(self.device):
            layer.build()
        if mode == "compiled":
            self.call = compile_call(layer)
        else:
            self.call = lambda tensors: layer(**tensors, training=False)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._gradient_call: Callable[..., Any] | None = None

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        with keras.device(self.device):
            self.load_canonical(self.layer, weights)
        self.shapes = {name: np.shape(w) for name, w in weights.items()}

    def vjp(self, inputs: Mapping[str, Any], cotangents: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """The gradients of sum(cotangent * output) over the outputs given a cotangent (in the order the layer
        returns them, None for an output that has none), with respect to the float inputs and the canonical
        weights: the backend's own differentiation (`gradient_call`) of the layer's `stateless_call`, compiled
        in the compiled mode; the trainable variables' gradients go through `load_canonical` backwards
        (`impls.torch.canonical_gradients`' method, on a float64 copy of the layer made by `probe`)."""
        if getattr(self, "probe", None) is None:
            raise NotImplementedError("its instance has no float64 copy of the layer to map the variables' "
                                      "gradients to the canonical weights")
        with keras.device(self.device):
            tensors = {name: None if x is None else ops.convert_to_tensor(x) for name, x in inputs.items()}
            floats = [name for name, x in inputs.items() if x is not None and np.asarray(x).dtype.kind in "fV"]
            given = [ops.convert_to_tensor(c) if c is not None else None for c in cotangents.values()]
            if self._gradient_call is None:
                self._gradient_call = gradient_call(self.layer, compiled=self.mode == "compiled")
            trainable = [v.value for v in self.layer.trainable_variables]
            non_trainable = [v.value for v in self.layer.non_trainable_variables]
            by_input, by_variable = self._gradient_call(trainable, non_trainable, tensors, floats, given)
        found = {name: ops.convert_to_numpy(g) for name, g in zip(floats, by_input)}
        by_variable = [ops.convert_to_numpy(g) for g in by_variable]
        return {**found, **canonical_weight_gradients(self, by_variable)}

    def __call__(self, inputs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        with keras.device(self.device):
            tensors = {name: None if x is None else ops.convert_to_tensor(x) for name, x in inputs.items()}
            result = self.call(tensors)
        result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        return tuple(ops.convert_to_numpy(value) for value in result)


def gradient_call(layer: keras.layers.Layer, compiled: bool) -> Callable[..., tuple[list, list]]:
    """A function (trainable values, non-trainable values, tensors, names of the float tensors, cotangents) ->
    (gradients of the float tensors, of the trainable values), through the backend's differentiation: jax.vjp,
    tf.GradientTape or torch.autograd; jax.jit, tf.function (XLA) or torch.compile of it when `compiled`."""
    name = backend()

    def outputs(trainable, non_trainable, tensors):
        result, _ = layer.stateless_call(trainable, non_trainable, **tensors, training=False)
        return list(result) if isinstance(result, (tuple, list)) else [result]

    if name == "jax":
        import jax

        def grads(trainable, non_trainable, tensors, floats, given):
            def f(trainable, chosen):
                out = outputs(trainable, non_trainable, {**tensors, **chosen})
                return [o for o, c in zip(out, given, strict=True) if c is not None]
            _, pull = jax.vjp(f, trainable, {n: tensors[n] for n in floats})
            by_variable, by_input = pull([c for c in given if c is not None])
            return [by_input[n] for n in floats], list(by_variable)

        if not compiled:
            return grads
        traced = jax.jit(grads, static_argnums=(3,))  # the names are static, so hashable: a tuple
        return lambda trainable, non_trainable, tensors, floats, given: traced(
            trainable, non_trainable, tensors, tuple(floats), given)
    if name == "tensorflow":
        import tensorflow as tf

        def grads(trainable, non_trainable, tensors, floats, given):
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                tape.watch([tensors[n] for n in floats])
                out = outputs(trainable, non_trainable, tensors)
                chosen = [(o, c) for o, c in zip(out, given, strict=True) if c is not None]
            found = tape.gradient([o for o, _ in chosen], [tensors[n] for n in floats] + list(trainable),
                                  output_gradients=[c for _, c in chosen],
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return found[:len(floats)], found[len(floats):]

        if not compiled:
            return grads
        traced = tf.function(lambda t, n, x, c, floats: grads(t, n, x, floats, c), jit_compile=True)
        return lambda trainable, non_trainable, tensors, floats, given: traced(
            trainable, non_trainable, tensors, given, tuple(floats))
    if name == "torch":
        import torch

        def forward(trainable, non_trainable, tensors):
            return outputs(trainable, non_trainable, tensors)

        run = torch.compile(forward, fullgraph=False, dynamic=False) if compiled else forward

        def grads(trainable, non_trainable, tensors, floats, given):
            trainable = [t.detach().requires_grad_(True) for t in trainable]
            tensors = {n: t.detach().requires_grad_(True) if n in floats else t for n, t in tensors.items()}
            with torch.enable_grad():
                out = run(trainable, non_trainable, tensors)
            chosen = [(o, c) for o, c in zip(out, given, strict=True) if c is not None]
            wrt = [tensors[n] for n in floats] + trainable
            found = torch.autograd.grad([o for o, _ in chosen], wrt, [c for _, c in chosen], allow_unused=True)
            found = [torch.zeros_like(x) if g is None else g for g, x in zip(found, wrt)]
            return found[:len(floats)], found[len(floats):]

        return grads
    raise ValueError(f"no differentiation for the Keras backend {name!r}")


def canonical_weight_gradients(instance: LayerInstance, by_variable: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The trainable variables' gradients as the canonical weights': each variable element's gradient summed
    into the canonical element `load_canonical` put there, found once per set of shapes by loading a float64
    copy of the layer (`instance.probe`) with each canonical element's own number (1, 2, ...; 0 is none)."""
    key = tuple(sorted((n, tuple(s)) for n, s in instance.shapes.items()))
    found = instance.__dict__.setdefault("_sources", {})
    if key not in found:
        numbers, start = {}, 1
        for name, shape in instance.shapes.items():
            size = int(np.prod(shape))
            numbers[name] = np.arange(start, start + size, dtype=np.float64).reshape(shape)
            start += size
        with keras.device("cpu"):
            probe = instance.probe()
            probe.build()
            instance.load_canonical(probe, numbers)
            read = [np.asarray(ops.convert_to_numpy(v.value), dtype=np.float64) for v in probe.trainable_variables]
        if [r.shape for r in read] != [g.shape for g in by_variable]:
            raise ValueError("the float64 copy of the layer has other trainable variables than the layer")
        for r in read:
            if not (np.all(r == np.round(r)) and r.min(initial=0) >= 0 and r.max(initial=0) < start):
                raise ValueError("load_canonical does more than rearrange the weights; give vjp")
        found[key] = ([r.astype(np.int64) for r in read], start)
    sources, total = found[key]
    flat = np.zeros(total)
    for where, g in zip(sources, by_variable):
        np.add.at(flat, where.ravel(), np.asarray(g, dtype=np.float64).ravel())
    dtype = by_variable[0].dtype if by_variable else np.float64
    out, start = {}, 1
    for name, shape in instance.shapes.items():
        size = int(np.prod(shape))
        out[name] = flat[start:start + size].reshape(shape).astype(dtype)
        start += size
    return out


class KerasImplementation:
    """What every Keras implementation shares.

    A subclass names its component and how to make the layer from the layer
    parameters and a dtype (`layer`); `load_canonical` is the component's
    weight converter. The layer returns the spec's outputs in the order of its
    output table; one that returns fewer declares them (`outputs`).
    """

    name = "keras"
    framework = "keras"
    dtypes = ("float64", "float32", "float16", "bfloat16")
    modes = ("eager", "compiled")

    def devices(self) -> list[str]:
        return devices()

    def backend(self) -> str:
        return backend()

    def environment(self) -> dict[str, Any]:
        return environment()

    def compiles_per_shape(self, mode: str) -> bool:
        """The compiled mode compiles per shape on every backend; on JAX the eager mode does too."""
        return mode != "eager" or backend() == "jax"

    def compilations(self) -> dict[str, int]:
        return compilations()

    def layer(self, config: Mapping[str, Any], dtype: str) -> keras.layers.Layer:
        raise NotImplementedError

    @staticmethod
    def load_canonical(layer: Any, weights: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str, mode: str = "eager") -> LayerInstance:
        return LayerInstance(self.layer(config, dtype), type(self).load_canonical, device=device, mode=mode,
                             probe=lambda: self.layer(config, "float64"))
