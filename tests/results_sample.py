"""Small real results, for the tests of results files, merge, compare and the report; and large ones made from them.

Real `run_cell` calls on the NumPy implementation (a few examples each), one
cell of every verdict but error, and a deliberately wrong plug-in, so that the
files under test are the ones the suite writes. `many` copies those cells,
and one of a plug-in that fails as torch.nn.MultiheadAttention does on fully
masked rows, into a file of thousands, for the report's tests of scale.
`break_property` turns a cell of a written file into one whose property failed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import Any

from conformance.engine import CellResult, repro_command, run_cell
from conformance.properties import Record
from conformance.results import write_results
from conformance.spec import load_spec
from conformance.registry import find_shipped, resolve
from conformance.vocabulary import DEVICES, DTYPES, Held, MODES, Property, Verdict

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WRONG = f"{TESTS / 'wrong_mha.py'}:InvertedMask"
NAN_ROWS = f"{TESTS / 'wrong_mha.py'}:NaNOnFullyMaskedRow"
#: An example with fully masked query rows (6 queries, 7 keys), on which NAN_ROWS gives NaN.
MASKED_ROWS = {"d_model": 8, "num_heads": 2, "d_head": 4, "dropout": 0.0, "B": 2, "Lq": 6, "Lk": 7,
               "mask": "random", "scale_exp": 0, "seed": 0}


@functools.cache
def _cells() -> tuple[CellResult, ...]:
    mha, ffn = load_spec(ROOT / "spec" / "mha.md"), load_spec(ROOT / "spec" / "ffn.md")
    numpy_mha = find_shipped("mha", "numpy")
    return (
        run_cell(mha, numpy_mha, "float64", "cpu", max_examples=8),
        run_cell(mha, numpy_mha, "float32", "cpu", max_examples=8),
        run_cell(mha, numpy_mha, "float32", "cpu", "compiled"),  # unsupported: NumPy has no compiled mode
        run_cell(mha, numpy_mha, "float32", "cuda"),  # not-available
        run_cell(ffn, find_shipped("ffn", "numpy"), "float32", "cpu", max_examples=8),
        run_cell(mha, resolve("mha", WRONG), "float32", "cpu", max_examples=20),  # non-conformant
    )


def cells() -> list[CellResult]:
    """Fresh copies: a test may change them."""
    return [copy.deepcopy(c) for c in _cells()]


def write(path: Path, command: list[str] | None = None) -> Path:
    return write_results(path, cells(), command=command or ["conformance", "run", "--test"])


def read(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save(path: Path, data: dict[str, Any]) -> Path:
    Path(path).write_text(json.dumps(data, indent=1))
    return Path(path)


def find(data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The one cell of a document with these field values."""
    found = [c for c in data["cells"] if all(c[k] == v for k, v in fields.items())]
    assert len(found) == 1, f"{len(found)} cells match {fields}"
    return found[0]


def break_property(cell: dict[str, Any], name: Property, reason: str, *, alone: bool = True) -> dict[str, Any]:
    """Make a cell as a results file holds it (changed in place, and returned) one whose property `name`
    failed with `reason` on its worst example, recorded as conformance/properties.py records a failure;
    `alone`: the cell failed nothing else, so its verdict is the property's (as the engine's `finish` sets
    it: the property's reason, sections, example and command)."""
    was = cell["properties"][name.value]
    example = {**(cell["counterexample"] or cell["worst"]), "property": name.value}
    repro = repro_command(cell["component"], cell["implementation"], cell["dtype"], cell["device"], example,
                          cell["mode"])
    record = Record(Held.FAILED, was["examples"], was["exact"], was["max_ratio"], reason=reason,
                    sections=was["sections"], counterexample=example, repro=repro)
    cell["properties"][name.value] = record.to_json()
    if alone:
        cell.update(verdict=Verdict.NON_CONFORMANT.value, reason=f"property {name} ({', '.join(was['sections'])}): "
                                                                 f"{reason}",
                    sections=was["sections"], counterexample=example, repro=repro)
    return cell


@functools.cache
def _deviating() -> CellResult:
    """A cell that failed on MASKED_ROWS, its evidence holding NaN attention rows."""
    return run_cell(load_spec(ROOT / "spec" / "mha.md"), resolve("mha", NAN_ROWS), "float32", "cpu",
                    example=MASKED_ROWS)


#: Frameworks' own layers and plug-ins that `many` names its implementations after, before numbering more.
_IMPLEMENTATIONS = (("numpy", "numpy", None), ("torch", "torch", None), ("keras", "keras", "tensorflow"),
                    ("keras", "keras", "torch"), ("keras", "keras", "jax"),
                    ("torch.nn.MultiheadAttention", "torch", None),
                    ("torch.nn.MultiheadAttention[need_weights=False]", "torch", None),
                    ("keras.layers.MultiHeadAttention", "keras", "jax"),
                    ("keras.layers.MultiHeadAttention[scores=False]", "keras", "tensorflow"),
                    (f"{TESTS / 'plugins_of_a_user' / 'attention_with_a_rather_long_module_name.py'}:Layer",
                     "plugin", None))


def _implementation(i: int) -> tuple[str, str, str | None]:
    """(name, framework, backend) of the i-th implementation: a real one, then numbered plug-ins."""
    if i < len(_IMPLEMENTATIONS):
        return _IMPLEMENTATIONS[i]
    return f"plugins.attention_v{i}:Layer", "plugin", None


def many(n: int, seed: int = 0) -> list[CellResult]:
    """n cells shaped like a large run: mha and ffn over implementations x device x mode x dtype, most
    not run (no GPU; half-precision dtypes and NumPy's compiled mode unsupported) as in the quick start,
    the rest conformant with a few failing, deviating (with the evidence of a real failure), erring,
    or over half their budget."""
    conformant = {"mha": cells()[1], "ffn": cells()[4]}
    failing, deviating = cells()[5], _deviating()
    rng = random.Random(seed)
    found: list[CellResult] = []
    i = 0
    while len(found) < n:
        impl = i // 32
        name, framework, backend = _implementation(impl)
        component = ("mha", "ffn")[i // 16 % 2]
        device, mode, dtype = DEVICES[i // 8 % 2], MODES[i // 4 % 2], DTYPES[i % 4]
        i += 1
        slot = {"component": component, "implementation": name, "framework": framework, "backend": backend,
                "device": device, "mode": mode, "dtype": dtype}
        base = conformant[component]
        if device == "cuda":
            change = {"verdict": Verdict.NOT_AVAILABLE, "reason": f"device cuda not available on this machine; "
                                                                 f"{framework} sees: cpu", "examples": 0}
        elif dtype in ("float16", "bfloat16") and impl % 3:
            change = {"verdict": Verdict.UNSUPPORTED, "examples": 0,
                      "reason": f"dtype {dtype} not supported; supported: float64, float32"}
        elif mode == "compiled" and framework == "numpy":
            change = {"verdict": Verdict.UNSUPPORTED, "reason": "mode compiled not supported; supported: eager",
                      "examples": 0}
        else:
            draw = rng.random() if component == "mha" else 0.06 + 0.94 * rng.random()  # ffn has no failures here
            if draw < 0.03:
                base, change = failing, {
                    "verdict": Verdict.NON_CONFORMANT, "reason": failing.reason, "sections": failing.sections,
                    "counterexample": failing.counterexample}
            elif draw < 0.05:
                base, change = deviating, {
                    "verdict": Verdict.KNOWN_DEVIATION, "deviation": "fully-masked-row-nan", "known_deviations": 3,
                    "reason": "With need_weights=True the layer takes a softmax over a row of -inf scores, so a "
                              "query whose keys are all masked gets NaN weights and a NaN output.",
                    "counterexample": deviating.counterexample}
            elif draw < 0.06:
                change = {"verdict": Verdict.ERROR, "reason": "example 12 ran past --timeout 300 s",
                          "max_ratio": None}
            elif draw < 0.12:
                change = {"max_ratio": 0.5 + 0.45 * rng.random()}
            else:
                change = {"max_ratio": base.max_ratio * 10 ** rng.uniform(-2, 1.5)}
        if change.get("counterexample"):
            change["repro"] = repro_command(component, name, dtype, device, change["counterexample"], mode)
        found.append(dataclasses.replace(copy.deepcopy(base), **slot, **change))
    return found
