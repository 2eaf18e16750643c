"""The known-deviation ledger: where a framework is known to disagree with a spec, and why.

spec/deviations.toml lists entries, each an `[[deviation]]` table:

    id             = "torch-mha-fully-masked-row"   # how results and messages name it
    implementation = "torch.nn.MultiheadAttention"  # a registered name (as results label it)
    component      = "mha"
    condition      = "fully_masked_query_row"       # one of CONDITIONS: which examples it covers
    sections       = ["7.4"]                        # the spec sections it departs from
    explanation    = "..."                          # one sentence
    reference      = "https://..."                  # optional: the upstream issue
    seen_on        = {torch = "2.13.0"}             # optional: versions it was observed with
    dtypes         = ["float64"]                    # optional: only these cells (default: every one);
    backends       = ["torch"]                      #   likewise for the Keras backend, the device
    devices        = ["cpu"]                        #   and the execution mode
    modes          = ["eager"]

An entry narrows, it never skips. Examples outside its condition are checked
in full. On an example that meets it the engine still runs the candidate: if
it disagrees with the spec the example counts as a known deviation, if it
agrees it counts as a pass. When a cell has examples the entry covers and none
of them deviates, the entry is stale and the cell is non-conformant, so a
fixed upstream bug is noticed. (Per cell, not per example: a deviation such as
"float64 computed in float32" is invisible on an example whose values float32
holds exactly, as in some worked examples.)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from conformance.vocabulary import DEVICES, DTYPES, MODES, UsageError

LEDGER = Path(__file__).resolve().parent.parent / "spec" / "deviations.toml"


def fully_masked_query_row(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """Some query row has every key masked (mha §7.4)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return False
    full = np.broadcast_to(mask, (example["B"], example["Lq"], example["Lk"]))  # (B, Lq, Lk), §7.2
    return bool((~full).all(axis=-1).any())


def padded_position(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """Some sequence has a padded position: `padding_mask` is given and False somewhere (encoder_block §6)."""
    mask = inputs.get("padding_mask")
    return mask is not None and not bool(np.all(mask))


def always(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """Every example of the cells the entry names (for a deviation that is a matter of dtype or backend)."""
    return True


def gelu_activation(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """The layer's activation is either GELU, exact or tanh (ffn §6.2, §6.3), not relu."""
    return example.get("activation") in ("gelu", "gelu_tanh")


def single_feature(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """The layer has one feature, d_model = 1: a layer norm's input then equals its mean, and
    LN(v) = beta exactly (encoder_block §5.3)."""
    return example.get("d_model") == 1


def score_scale_inexact_in_float32(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """The score scale 1 / sqrt(d_head) of mha §6.3 is not a float32 number (d_head is not a power of 4),
    so a framework that rounds it to float32 is off in float64."""
    if "d_head" not in example:
        return False
    scale = 1.0 / np.sqrt(example["d_head"])
    return bool(np.float32(scale) != scale)


#: Conditions an entry may name: a predicate over the example and its input arrays.
CONDITIONS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], bool]] = {
    "always": always,
    "fully_masked_query_row": fully_masked_query_row,
    "padded_position": padded_position,
    "gelu_activation": gelu_activation,
    "single_feature": single_feature,
    "score_scale_inexact_in_float32": score_scale_inexact_in_float32,
}

REQUIRED = ("id", "implementation", "component", "condition", "sections", "explanation")
#: Optional fields that narrow an entry to some cells, and the values each may list.
SCOPES = {"dtypes": DTYPES, "backends": ("tensorflow", "torch", "jax"), "devices": DEVICES, "modes": MODES}
OPTIONAL = ("reference", "seen_on", *SCOPES)


class LedgerError(UsageError):
    """A malformed ledger entry; the message names the entry and the valid fields."""


@dataclass(frozen=True)
class Deviation:
    id: str
    implementation: str
    component: str
    condition: str
    sections: tuple[str, ...]
    explanation: str
    reference: str | None = None
    seen_on: Mapping[str, str] = field(default_factory=dict)
    scope: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # SCOPES field -> the values listed

    def applies(self, *, dtype: str, backend: str | None, device: str, mode: str) -> bool:
        """Whether the entry covers this cell; a field it does not give covers every value."""
        cell = {"dtypes": dtype, "backends": backend, "devices": device, "modes": mode}
        return all(cell[k] in values for k, values in self.scope.items())

    def matches(self, example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
        return CONDITIONS[self.condition](example, inputs)


def parse(entries: list[Mapping[str, Any]], source: str = "ledger") -> list[Deviation]:
    """Ledger entries (the `deviation` tables) checked and turned into Deviations."""
    parsed, seen = [], set()
    valid = f"required: {', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)}"
    if not isinstance(entries, list):
        raise LedgerError(f"{source}: 'deviation' is {type(entries).__name__}, not a list of tables; "
                          f"write each entry as a [[deviation]] table")
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise LedgerError(f"{source}: deviation #{n + 1} is {type(entry).__name__}, not a table; "
                              f"write each entry as a [[deviation]] table")
        name = f"{source} entry {entry.get('id', f'#{n + 1}')!r}"
        unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
        missing = [k for k in REQUIRED if k not in entry]
        if unknown or missing:
            problems = ([f"unknown fields {', '.join(unknown)}"] if unknown else []) + (
                [f"missing fields {', '.join(missing)}"] if missing else [])
            raise LedgerError(f"{name}: {'; '.join(problems)}; {valid}")
        if entry["condition"] not in CONDITIONS:
            raise LedgerError(f"{name}: unknown condition {entry['condition']!r}; valid: {', '.join(CONDITIONS)}")
        text = [k for k in ("id", "implementation", "component", "explanation") if not isinstance(entry[k], str)]
        sections = entry["sections"]
        if text or not isinstance(sections, list) or not all(isinstance(s, str) for s in sections):
            raise LedgerError(f"{name}: {', '.join(text) or 'sections'} has the wrong type; id, implementation, "
                              f"component and explanation are strings, sections a list of strings like \"7.4\"")
        if not isinstance(entry.get("reference", ""), str):
            raise LedgerError(f"{name}: reference has the wrong type; it is a string, the upstream issue's URL")
        seen_on = entry.get("seen_on", {})
        if not isinstance(seen_on, dict) or not all(isinstance(v, str) for v in seen_on.values()):
            raise LedgerError(f"{name}: seen_on has the wrong type; it is a table of package versions, "
                              f"e.g. {{torch = \"2.13.0\"}}")
        scope = {}
        for key, valid_values in SCOPES.items():
            if key in entry:
                values = entry[key]
                bad = ([values] if not isinstance(values, list) else
                       [v for v in values if v not in valid_values]) or ([] if values else ["(empty list)"])
                if bad:
                    raise LedgerError(f"{name}: {key} has {', '.join(map(str, bad))}; it is a non-empty list of: "
                                      f"{', '.join(valid_values)}")
                scope[key] = tuple(values)
        if entry["id"] in seen:
            raise LedgerError(f"{name}: the id is used twice; ids must be unique")
        seen.add(entry["id"])
        parsed.append(Deviation(entry["id"], entry["implementation"], entry["component"], entry["condition"],
                                tuple(sections), entry["explanation"], entry.get("reference"),
                                dict(entry.get("seen_on", {})), scope))
    return parsed


def load(path: Path | str = LEDGER) -> list[Deviation]:
    """Every entry of a ledger file; no file means no entries."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise LedgerError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise LedgerError(f"{path} is not valid TOML: it is not UTF-8 text") from None
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror or e}") from None
    unknown = sorted(set(document) - {"deviation"})
    if unknown:
        raise LedgerError(f"{path}: unknown top-level keys {', '.join(unknown)}; entries are [[deviation]] tables")
    return parse(document.get("deviation", []), source=str(path))


def entries_for(ledger: list[Deviation], component: str, implementation: str, *, dtype: str,
                backend: str | None, device: str, mode: str) -> list[Deviation]:
    """The entries that cover one cell."""
    return [d for d in ledger if d.component == component and d.implementation == implementation
            and d.applies(dtype=dtype, backend=backend, device=device, mode=mode)]


def check_sections(ledger: list[Deviation], specs: dict[str, Any]) -> None:
    """Every section an entry names exists in its component's spec (`specs`: component -> Spec)."""
    for d in ledger:
        spec = specs.get(d.component)
        missing = [s for s in d.sections if spec is not None and s not in spec.sections]
        if missing:
            raise LedgerError(f"ledger entry {d.id!r} names section {', '.join(missing)} of {d.component}, "
                              f"which {spec.path} does not have; its sections: {', '.join(spec.sections)}")


def check_names(ledger: list[Deviation], registered: list[Any]) -> None:
    """Every entry names a registered implementation of its component (a typo would cover nothing)."""
    for d in ledger:
        names = sorted(r.label for r in registered if r.component == d.component)
        if not names:
            known = sorted({r.component for r in registered})
            raise LedgerError(f"ledger entry {d.id!r}: unknown component {d.component!r}; known: {', '.join(known)}")
        if d.implementation not in names:
            raise LedgerError(f"ledger entry {d.id!r}: {d.component} has no implementation {d.implementation!r}; "
                              f"registered: {', '.join(names)}")
