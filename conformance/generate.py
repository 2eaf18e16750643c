"""Examples: what hypothesis draws, and the arrays NumPy's generator makes from it.

An example is a flat dict of every spec parameter plus `seed` (for NumPy's
generator) and the magnitude parameters (`Spec.magnitudes`: float inputs have
standard deviation 10**scale_exp, weights their row's times 10**weight_exp, and
each row of a float input a common shift of +-offset times that deviation).
Hypothesis draws only these few numbers; the arrays come from the seed, which
keeps drawing fast and a shrunk example short enough to paste into a command.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, Mapping

import numpy as np
from hypothesis import strategies as st

from conformance.spec import Param, Spec, evaluate
from conformance.vocabulary import numpy_dtype, UsageError

#: The seeds an example may have (NumPy's generator takes any of them).
SEEDS = range(0, 2**32)


def domain_strategy(param: Param) -> st.SearchStrategy:
    if isinstance(param.domain, range):
        return st.integers(param.domain.start, param.domain.stop - 1)
    return st.sampled_from(param.domain)


def strata(spec: Spec) -> list[dict[str, Any]]:
    """Every combination of the categorical parameters (sets of words or booleans).

    Each combination is searched on its own with its share of the examples, so
    a rarely drawn category (one mask pattern, one activation) is never left out.
    """
    categorical = [p for p in spec.shape_params
                   if not isinstance(p.domain, range) and all(isinstance(v, (str, bool)) for v in p.domain)]
    return [dict(zip((p.name for p in categorical), values))
            for values in itertools.product(*(p.domain for p in categorical))]


def regions(spec: Spec) -> list[dict[str, Any]]:
    """The magnitude settings the spec's sensitivity table says reach a region where a changed constant shows
    (its `reached by` column), each once: every cell searches each within every stratum."""
    found = {setting: None for s in spec.sensitivity.values() for setting in s.reached_by}
    return [dict(r) for r in found]


def examples(spec: Spec, fixed: Mapping[str, Any] | None = None,
             groups: list[dict[str, Any]] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Examples with the `fixed` parameters as given; with `groups`, every layer and data parameter comes
    from one of them.

    Only the magnitudes and `seed` vary within a group: the input shapes stay those
    of the group, so an implementation that compiles per shape compiles once per group.
    """
    fixed = fixed or {}
    if groups is not None:
        fields = {"group": st.sampled_from(groups)}
    else:
        fields = {p.name: st.just(fixed[p.name]) if p.name in fixed else domain_strategy(p)
                  for p in spec.shape_params}
    for name, domain in spec.magnitudes().items():
        fields[name] = st.just(fixed[name]) if name in fixed else st.sampled_from(domain)
    fields["seed"] = st.integers(SEEDS.start, SEEDS.stop - 1)
    drawn = st.fixed_dictionaries(fields)
    if groups is None:
        return drawn
    return drawn.map(lambda d: {**d["group"], **{k: v for k, v in d.items() if k != "group"}})


def shape_groups(spec: Spec, fixed: Mapping[str, Any], count: int, rng: np.random.Generator,
                 accept: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """`count` settings of every layer and data parameter, uniform over their domains, with `fixed` as given.

    With `accept` (the implementation's `supports`, say), only settings it accepts, drawn until `count` are
    found or `SHAPE_TRIES` times `count` have been drawn; if none was accepted, the first `count` drawn (whose
    examples the implementation then skips, each with its reason)."""
    def draw(param: Param) -> Any:
        domain = list(param.domain)
        return domain[int(rng.integers(len(domain)))]

    def group() -> dict[str, Any]:
        return {p.name: fixed[p.name] if p.name in fixed else draw(p) for p in spec.shape_params}

    if accept is None:
        return [group() for _ in range(count)]
    drawn = [group() for _ in range(count)]
    kept = [g for g in drawn if accept(g)]
    tries = count
    while len(kept) < count and tries < SHAPE_TRIES * count:
        g = group()
        tries += 1
        if accept(g):
            kept.append(g)
    return kept or drawn


#: How many draws per wanted setting `shape_groups` makes before it settles for fewer.
SHAPE_TRIES = 200


def layer_config(spec: Spec, example: Mapping[str, Any]) -> dict[str, Any]:
    return {name: example[name] for name in spec.layer_params}


def _mask(pattern: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The harness's mask patterns (spec/README.md): the last axis is the key axis."""
    if pattern == "padding":  # per leading index, the first n keys are valid, n in 1..Lk
        lengths = rng.integers(1, shape[-1] + 1, size=shape[0])
        return np.arange(shape[-1]) < lengths.reshape((-1,) + (1,) * (len(shape) - 1))
    if pattern == "causal":  # mask[..., i, j] = j <= i
        i, j = np.indices(shape[-2:])
        return np.broadcast_to(j <= i, shape).copy()
    if pattern == "random":  # each entry true with probability 1/2, then a quarter of the rows masked whole
        whole_rows_masked = rng.random(shape[:-1] + (1,)) < 0.25
        return (rng.random(shape) < 0.5) & ~whole_rows_masked
    raise ValueError(f"unknown mask pattern {pattern!r}; valid: none, padding, causal, random")


def make_arrays(spec: Spec, example: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Float64 weights and inputs for one example, made by NumPy from its seed."""
    rng = np.random.default_rng(example["seed"])
    gain = 10.0 ** example.get("weight_exp", 0)
    weights = {name: rng.normal(0.0, std * gain, shape)
               for name, (shape, std) in spec.weight_shapes(example).items()}
    scale = 10.0 ** example["scale_exp"]
    inputs: dict[str, Any] = {}
    for t in spec.inputs.values():
        if t.kind == "float":
            inputs[t.name] = rng.normal(0.0, scale, spec.shape_of(t, example))
            if example.get("offset", 0):  # one common shift per row, of either sign
                rows = spec.shape_of(t, example)[:-1] + (1,)
                inputs[t.name] += rng.choice([-1.0, 1.0], rows) * example["offset"] * scale
        elif t.kind == "mask":
            pattern = example.get("mask", "none")
            inputs[t.name] = None if pattern == "none" else _mask(pattern, spec.shape_of(t, example, pattern), rng)
        elif t.kind.startswith("tokens("):  # ids in 0..n-1
            n = int(evaluate(t.kind[len("tokens("):-1], example))
            inputs[t.name] = rng.integers(0, n, spec.shape_of(t, example), dtype=np.int64)
        else:  # padded_tokens(n): per row, ids in 1..n-1 for a valid length in 1..T, then the padding id 0
            n = int(evaluate(t.kind[len("padded_tokens("):-1], example))
            shape = spec.shape_of(t, example)
            if n < 2:
                raise ValueError(f"padded_tokens({n}) needs at least one id besides the padding id 0")
            ids = rng.integers(1, n, shape, dtype=np.int64)
            lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1] + (1,))
            inputs[t.name] = np.where(np.arange(shape[-1]) < lengths, ids, 0)
    return weights, inputs


def worked_arrays(spec: Spec, weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple[dict, dict]:
    """A worked example's JSON lists as arrays: weights and float inputs float64, masks bool, tokens int64."""
    def convert(name: str, value: Any) -> Any:
        if value is None:
            return None
        kind = spec.inputs[name].kind if name in spec.inputs else "float"
        dtype = {"float": np.float64, "mask": bool}.get(kind, np.int64)
        return np.asarray(value, dtype=dtype)

    return ({k: np.asarray(v, dtype=np.float64) for k, v in weights.items()},
            {k: convert(k, v) for k, v in inputs.items()})


def cast(arrays: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """Round float arrays to dtype; leave masks, tokens and None as they are."""
    target = numpy_dtype(dtype)
    return {k: v.astype(target) if isinstance(v, np.ndarray) and is_float(v.dtype) else v
            for k, v in arrays.items()}


def is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == numpy_dtype("bfloat16")


def parse_example(spec: Spec, text: str) -> dict[str, Any]:
    """--example as JSON: exactly the spec's parameters, its magnitudes and `seed`, each in its domain; a
    failure's repro line may add the property it checks (`property`), the other shapes of a statelessness
    sequence (`then`, an example), the examples run on the same instance before it (`after`, a list) and
    whether it checks the gradients (`gradients`: true)."""
    try:
        example = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--example is not valid JSON: {e}") from None
    except RecursionError:
        raise UsageError("--example is not valid JSON: nested too deeply") from None
    if not isinstance(example, dict):
        return _checked_example(spec, example)
    extra = {k: example.pop(k) for k in ("property", "then", "after", "gradients") if k in example}
    example = _checked_example(spec, example)
    if "gradients" in extra:
        if extra["gradients"] is not True:
            raise UsageError(f"--example: gradients is {json.dumps(extra['gradients'])[:40]}; the only value is true")
        if not spec.gradients:
            raise UsageError(f"--example: gradients: spec/{spec.component}.md has no gradient table")
        example["gradients"] = True
    if "property" in extra:
        if extra["property"] not in spec.properties:
            raise UsageError(f"--example: property is {json.dumps(extra['property'])[:40]}; {spec.component}'s "
                             f"are {', '.join(spec.properties) or 'none'}")
        example["property"] = extra["property"]
    if "then" in extra:
        example["then"] = _checked_example(spec, extra["then"], "then")
        if layer_config(spec, example["then"]) != layer_config(spec, example):
            raise UsageError("--example: then must have the example's layer parameters "
                             f"({', '.join(spec.layer_params)})")
    if "after" in extra:
        if not isinstance(extra["after"], list):
            raise UsageError("--example: after must be a list of examples")
        example["after"] = [_checked_example(spec, e, "after") for e in extra["after"]]
        if any(layer_config(spec, e) != layer_config(spec, example) for e in example["after"]):
            raise UsageError("--example: every example in after must have the example's layer parameters "
                             f"({', '.join(spec.layer_params)})")
    return example


def _checked_example(spec: Spec, example: Any, where: str = "") -> dict[str, Any]:
    """One example's parameters, magnitudes and seed, each in its domain (UsageError naming the problem)."""
    valid = list(dict.fromkeys([*spec.params, *spec.magnitudes(), "seed"]))
    what = f"--example's {where}" if where else "--example"
    if not isinstance(example, dict):
        raise UsageError(f"{what} must be a JSON object with the keys {', '.join(valid)}; got "
                         f"{type(example).__name__} {json.dumps(example)[:40]}")
    missing = [k for k in valid if k not in example]
    if missing:
        raise UsageError(f"{what} lacks {', '.join(missing)}")
    unknown = [k for k in example if k not in valid]
    if unknown:
        raise UsageError(f"{what} has unknown keys {', '.join(unknown)}; {spec.component} takes "
                         f"{', '.join(valid)}")
    domains: dict[str, Any] = {name: p.domain for name, p in spec.params.items()}
    domains.update(spec.magnitudes(), seed=SEEDS)
    for name, domain in domains.items():
        value = example[name]
        if isinstance(domain, range):
            ok = type(value) is int and value in domain
            shown = f"an integer in {domain.start}..{domain.stop - 1}"
        else:
            ok = any(type(value) is type(v) and value == v for v in domain) or (
                type(value) in (int, float) and any(type(v) is float and value == v for v in domain))
            shown = f"one of {', '.join(json.dumps(v) for v in domain)}"
        if not ok:
            raise UsageError(f"{what}: {name} is {json.dumps(value)[:40]}; the spec's domain is {shown}")
    return example
