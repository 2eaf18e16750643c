"""The known-deviation ledger: where a framework is known to disagree with a spec, and why.

spec/deviations.toml lists entries, each an `[[deviation]]` table:

    id             = "torch-mha-fully-masked-row"   # how results and messages name it
    implementation = "torch.nn.MultiheadAttention"  # a registered name (as results label it)
    component      = "mha"
    condition      = "fully_masked_query_row"       # which examples it covers: "always", or a condition of the
                                                    #   component's spec (conformance/conditions.py)
    sections       = ["7.4"]                        # the spec sections it departs from
    bound          = "region"                       # how far the deviation may go (below)
    explanation    = "..."                          # one sentence
    reference      = "https://..."                  # optional: the upstream issue
    repro          = "..."                          # optional: a few lines of the library alone that show it
                                                    #   (a multi-line TOML string), ready to file upstream
    seen_on        = {torch = "2.13.0"}             # optional: versions it was observed with
    dtypes         = ["float64"]                    # optional: only these cells (default: every one);
    backends       = ["torch"]                      #   likewise for the Keras backend, the device
    devices        = ["cpu"]                        #   and the execution mode
    modes          = ["eager"]
    parts          = ["forward", "gradients"]   # optional: what it covers, the outputs ("forward", the
                                                #   default) and the cell's gradients (conformance/gradients.py)

`implementation` names a registered implementation, or a plug-in as the
command line names it: `package.module:attr`, an entry point's name, or
`file.py:attr`, a path taken from the ledger file's own folder (so that a
project keeps its ledger beside its plug-ins and passes it with `--ledger`).

A plug-in built on a framework's layer inherits that layer's entries when a
ledger says so in a `[[plugin]]` table:

    [[plugin]]
    implementation = "my_attention.py:MyAttention"   # the plug-in, named as above
    component      = "mha"
    built_on       = "keras.layers.MultiHeadAttention"  # a registered name of the same component

Its cells are then judged by every entry of that layer as if it named the
plug-in (results name the inherited entry by its own id), besides the
plug-in's own entries.

`bound` says how far the deviation may go, one of:

    "region"        only inside the condition's region: every element outside it is held to its budget
                    (the condition must be one that marks elements, such as fully_masked_query_row)
    "float32"       a dtype: every output within that dtype's budget, its eps in place of the cell's
                    (a float64 layer that computes in float32)
    "3e5 eps"       every output within that many eps of the cell's dtype, in units of the output's scale,
                    in place of its budget
    "like NAME"     every output within its budget of what the reference module's function NAME gives
                    (same arguments as `forward`): the deviation modelled exactly

An entry narrows, it never skips. Examples outside its condition are checked
in full. On an example that meets it the engine still runs the candidate: if
it disagrees with the spec the example counts as a known deviation, if it
agrees it counts as a pass. When a cell has examples the entry covers and none
of them deviates, the entry is stale and the cell is non-conformant, so a
fixed upstream bug is noticed. An example that deviates beyond the bound of
every entry that covers it (alone, or of all of them together) is
non-conformant, and its reason names the entries and the excess. (Per cell, not per example: a deviation such as
"float64 computed in float32" is invisible on an example whose values float32
holds exactly, as in some worked examples.)

An entry whose `parts` list "gradients" covers the gradient checks of its
cells the same way: a gradient beyond its budget on an example the entry
covers counts as a known deviation if it holds the entry's bound (a dtype: the
reference's backward pass with that dtype's eps, measured in it; a number of
eps: allowed in place of the budget), and the entry is stale for the gradients
when the cell compared gradients on examples it covers and none deviated. A
gradient bound is a dtype or a number of eps ("region" and "like NAME" model
outputs, not gradients).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from conformance import conditions, tolerances
from conformance.vocabulary import DEVICES, DTYPES, MODES, UsageError

LEDGER = Path(__file__).resolve().parent.parent / "spec" / "deviations.toml"


REQUIRED = ("id", "implementation", "component", "condition", "sections", "explanation", "bound")
#: Optional fields that narrow an entry to some cells, and the values each may list.
SCOPES = {"dtypes": DTYPES, "backends": ("tensorflow", "torch", "jax"), "devices": DEVICES, "modes": MODES}
#: What an entry may cover (`parts`): the outputs, and the gradient checks.
PARTS = ("forward", "gradients")
OPTIONAL = ("reference", "seen_on", *SCOPES, "parts", "repro")
#: The fields of a `[[plugin]]` table: a plug-in that inherits the entries of the layer it is built on.
PLUGIN_FIELDS = ("implementation", "component", "built_on")


class LedgerError(UsageError):
    """A malformed ledger entry; the message names the entry and the valid fields."""


class BoundKind(str, Enum):
    """The forms of an entry's `bound` (the module docstring)."""

    REGION = "region"
    DTYPE = "dtype"
    EPS = "eps"
    LIKE = "like"


@dataclass(frozen=True)
class Bound:
    """How far a recorded deviation may go: `kind`, and its dtype, number of eps or function name."""

    kind: BoundKind
    value: Any = None

    @property
    def text(self) -> str:
        if self.kind == BoundKind.REGION:
            return "region"
        if self.kind == BoundKind.EPS:
            return f"{self.value:g} eps"
        if self.kind == BoundKind.LIKE:
            return f"like {self.value}"
        return self.value  # a dtype


BOUND_FORMS = '"region", a dtype ("float32"), a number of eps ("3e5 eps") or "like NAME" (a function of the reference)'


def parse_bound(text: Any, name: str) -> Bound:
    """An entry's `bound` as a Bound; LedgerError naming the entry and the valid forms otherwise."""
    if isinstance(text, str):
        words = text.split()
        if text == "region":
            return Bound(BoundKind.REGION)
        if text in DTYPES and text != "float64":
            return Bound(BoundKind.DTYPE, text)
        if len(words) == 2 and words[1] == "eps":
            try:
                number = float(words[0])
            except ValueError:
                number = -1.0
            if number > 0 and number != float("inf"):
                return Bound(BoundKind.EPS, number)
        if len(words) == 2 and words[0] == "like" and re.fullmatch(r"[A-Za-z_]\w*", words[1]):
            return Bound(BoundKind.LIKE, words[1])
    raise LedgerError(f"{name}: bound is {text!r}; it is {BOUND_FORMS}")


@dataclass(frozen=True)
class Deviation:
    id: str
    implementation: str
    component: str
    condition: str
    sections: tuple[str, ...]
    explanation: str
    bound: Bound
    reference: str | None = None
    seen_on: Mapping[str, str] = field(default_factory=dict)
    scope: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # SCOPES field -> the values listed
    parts: tuple[str, ...] = ("forward",)  # of PARTS
    repro: str | None = None  # a few lines of the library alone that show the deviation
    origin: str = ""  # the ledger file's folder, from which a plug-in's `file.py:attr` is found
    inherited_from: str | None = None  # for an entry a plug-in inherits (`[[plugin]]`): the layer's name

    def names(self, label: str) -> bool:
        """Whether the entry is about the implementation results label `label` (a plug-in's `file.py:attr`
        as the command line gave it, found from the working folder; the entry's, from its ledger's)."""
        return self.implementation == label or (
            is_file_target(label) and is_file_target(self.implementation)
            and file_key(self.implementation, self.origin) == file_key(label, os.getcwd()))

    def applies(self, *, dtype: str, backend: str | None, device: str, mode: str) -> bool:
        """Whether the entry covers this cell; a field it does not give covers every value."""
        cell = {"dtypes": dtype, "backends": backend, "devices": device, "modes": mode}
        return all(cell[k] in values for k, values in self.scope.items())

    def matches(self, example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
        return conditions.holds(self.component, self.condition, example, inputs)


def is_file_target(name: str) -> bool:
    """Whether an implementation's name is a plug-in file's `path/to/file.py:attr`."""
    module, sep, _ = name.rpartition(":")
    return bool(sep) and (module.endswith(".py") or os.sep in module)


def file_key(name: str, folder: str) -> tuple[str, str]:
    """A plug-in file's `path:attr` as (the file's absolute path, attr), a relative path taken from `folder`."""
    module, _, attr = name.rpartition(":")
    return os.path.abspath(os.path.join(folder or os.getcwd(), os.path.expanduser(module))), attr


def parse(entries: list[Mapping[str, Any]], source: str = "ledger", origin: str = "") -> list[Deviation]:
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
        text = [k for k in ("id", "implementation", "component", "condition", "explanation")
                if not isinstance(entry[k], str)]
        sections = entry["sections"]
        if text or not isinstance(sections, list) or not all(isinstance(s, str) for s in sections):
            raise LedgerError(f"{name}: {', '.join(text) or 'sections'} has the wrong type; id, implementation, "
                              f"component, condition and explanation are strings, sections a list of strings like \"7.4\"")
        if not isinstance(entry.get("reference", ""), str):
            raise LedgerError(f"{name}: reference has the wrong type; it is a string, the upstream issue's URL")
        if not isinstance(entry.get("repro", ""), str):
            raise LedgerError(f"{name}: repro has the wrong type; it is a string, a few lines of code")
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
        bound = parse_bound(entry["bound"], name)
        parts = entry.get("parts", ["forward"])
        if not isinstance(parts, list) or not parts or not all(p in PARTS for p in parts):
            raise LedgerError(f"{name}: parts is {parts!r}; it is a non-empty list of: {', '.join(PARTS)}")
        if "gradients" in parts and bound.kind not in (BoundKind.DTYPE, BoundKind.EPS):
            raise LedgerError(f"{name}: bound {bound.text!r} cannot cover gradients; an entry whose parts list "
                              f"\"gradients\" bounds them by a dtype (\"float32\") or a number of eps (\"3e5 eps\")")
        parsed.append(Deviation(entry["id"], entry["implementation"], entry["component"], entry["condition"],
                                tuple(sections), entry["explanation"], bound, entry.get("reference"),
                                dict(entry.get("seen_on", {})), scope, tuple(dict.fromkeys(parts)),
                                entry.get("repro"), origin))
    return parsed


@dataclass(frozen=True)
class Inheritance:
    """A `[[plugin]]` table: `implementation` (of `component`) inherits the entries of the layer `built_on`."""

    implementation: str
    component: str
    built_on: str
    origin: str = ""
    source: str = "ledger"


def parse_plugins(tables: Any, source: str = "ledger", origin: str = "") -> list[Inheritance]:
    """The `[[plugin]]` tables of a ledger file, checked."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise LedgerError(f"{source}: 'plugin' must be [[plugin]] tables, each with {', '.join(PLUGIN_FIELDS)}")
    found = []
    for n, table in enumerate(tables):
        name = f"{source} [[plugin]] #{n + 1}"
        wrong = sorted(set(table) ^ set(PLUGIN_FIELDS))
        if wrong or not all(isinstance(table[k], str) for k in PLUGIN_FIELDS):
            raise LedgerError(f"{name}: it has exactly the string fields {', '.join(PLUGIN_FIELDS)}"
                              f"{'; not so: ' + ', '.join(wrong) if wrong else ''}")
        found.append(Inheritance(table["implementation"], table["component"], table["built_on"], origin, source))
    return found


def inherit(ledger: list[Deviation], plugins: list[Inheritance]) -> list[Deviation]:
    """`ledger` and, for each plug-in built on a layer, a copy of each of that layer's entries naming it."""
    copies = [replace(d, implementation=p.implementation, origin=p.origin, inherited_from=d.implementation)
              for p in plugins for d in ledger
              if d.component == p.component and d.implementation == p.built_on and d.inherited_from is None]
    return [*ledger, *copies]


def load(path: Path | str = LEDGER) -> list[Deviation]:
    """Every entry of a ledger file, with those its `[[plugin]]` tables inherit; no file means no entries."""
    entries, plugins = read(path)
    return inherit(entries, plugins)


class Ledger(list):
    """Entries (inherited ones included), and the `[[plugin]]` tables they were inherited by."""

    plugins: list[Inheritance] = []


def load_all(paths: list[Path | str]) -> Ledger:
    """The entries of several ledger files together (ids unique across them), with those that `[[plugin]]`
    tables in any of them inherit from entries in any."""
    entries: list[Deviation] = []
    plugins: list[Inheritance] = []
    where: dict[str, str] = {}
    for path in paths:
        found, inherits = read(path)
        for d in found:
            if d.id in where:
                raise LedgerError(f"ledger entry {d.id!r} is in both {where[d.id]} and {path}; ids must be unique")
            where[d.id] = str(path)
        entries += found
        plugins += inherits
    ledger = Ledger(inherit(entries, plugins))
    ledger.plugins = plugins
    return ledger


def check_plugins(plugins: list[Inheritance], registered: list[Any]) -> None:
    """Each `[[plugin]]` table builds on a registered implementation of its component."""
    for p in plugins:
        names = sorted(r.label for r in registered if r.component == p.component)
        if p.built_on not in names:
            raise LedgerError(f"{p.source}: [[plugin]] {p.implementation!r} is built_on {p.built_on!r}, which is not "
                              f"a registered implementation of {p.component!r}; registered: "
                              f"{', '.join(names) or 'none (unknown component)'}")


def read(path: Path | str) -> tuple[list[Deviation], list[Inheritance]]:
    """A ledger file's entries and `[[plugin]]` tables, checked; no file means none."""
    path = Path(path)
    if not path.exists():
        return [], []
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise LedgerError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise LedgerError(f"{path} is not valid TOML: it is not UTF-8 text") from None
    except OSError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e.strerror or e}") from None
    unknown = sorted(set(document) - {"deviation", "plugin"})
    if unknown:
        raise LedgerError(f"{path}: unknown top-level keys {', '.join(unknown)}; entries are [[deviation]] tables, "
                          f"and a plug-in built on a layer is a [[plugin]] table")
    folder = str(path.resolve().parent) if path.is_file() else ""
    return (parse(document.get("deviation", []), source=str(path), origin=folder),
            parse_plugins(document.get("plugin", []), source=str(path), origin=folder))


def entries_for(ledger: list[Deviation], component: str, implementation: str, *, dtype: str,
                backend: str | None, device: str, mode: str) -> list[Deviation]:
    """The entries that cover one cell."""
    return [d for d in ledger if d.component == component and d.names(implementation)
            and d.applies(dtype=dtype, backend=backend, device=device, mode=mode)]


def tries(covering: list[Deviation]) -> list[list[Deviation]]:
    """The bounds an example covered by `covering` is held to, in order: each entry alone, then all together."""
    return [[d] for d in covering] + ([list(covering)] if len(covering) > 1 else [])


def widest(entries: list[Deviation], dtype: str) -> tuple[str, float | None]:
    """What the dtype and eps bounds of `entries` allow together, in a cell of `dtype`: the dtype whose eps
    measures errors (the coarsest named, or the cell's own) and the number of eps allowed in place of the
    budget (None where no entry gives one)."""
    named = [d.bound.value for d in entries if d.bound.kind == BoundKind.DTYPE]
    allowed = [d.bound.value for d in entries if d.bound.kind == BoundKind.EPS]
    return max([dtype, *named], key=lambda t: tolerances.EPS[t]), max(allowed) if allowed else None


def beyond(covering: list[Deviation], reason: str) -> str:
    """The reason for an example that deviates beyond every bound of the entries that cover it."""
    names = " and ".join(f"{d.id!r} (bound: {d.bound.text})" for d in covering)
    return f"beyond ledger {'entry' if len(covering) == 1 else 'entries'} {names}: {reason}"


def check_against_specs(ledger: list[Deviation], specs: dict[str, Any]) -> None:
    """Every section and condition an entry names exists in its component's spec (`specs`: component -> Spec)."""
    for d in ledger:
        spec = specs.get(d.component)
        if spec is None:
            continue
        missing = [s for s in d.sections if s not in spec.sections]
        if missing:
            raise LedgerError(f"ledger entry {d.id!r} names section {', '.join(missing)} of {d.component}, "
                              f"which {spec.path} does not have; its sections: {', '.join(spec.sections)}")
        if d.condition != conditions.ALWAYS and d.condition not in spec.conditions:
            raise LedgerError(f"ledger entry {d.id!r}: unknown condition {d.condition!r}; valid for {d.component}: "
                              f"{', '.join([conditions.ALWAYS, *spec.conditions])} (the condition table of {spec.path})")
        if d.bound.kind == BoundKind.REGION and d.condition == conditions.ALWAYS:
            raise LedgerError(f"ledger entry {d.id!r}: bound \"region\" needs a condition that marks elements, "
                              f"not \"always\"; give a dtype, a number of eps or \"like NAME\" instead")
        if d.bound.kind == BoundKind.LIKE:
            try:
                conditions.reference_function(d.component, d.bound.value)
            except AttributeError:
                raise LedgerError(f"ledger entry {d.id!r}: bound {d.bound.text!r} names no function of "
                                  f"impls/numpy/{d.component}.py; it takes forward's arguments and returns the "
                                  f"outputs the deviation gives") from None


def names_plugin(name: str) -> bool:
    """Whether an entry's `implementation` names a plug-in by its target (`module:attr`, `file.py:attr`)."""
    return ":" in name


def check_names(ledger: list[Deviation], registered: list[Any]) -> None:
    """Every entry names a registered implementation of its component (a typo would cover nothing), or a
    plug-in's file that exists; a plug-in inherits from a registered layer of its component."""
    for d in ledger:
        names = sorted(r.label for r in registered if r.component == d.component)
        if not names:
            known = sorted({r.component for r in registered})
            raise LedgerError(f"ledger entry {d.id!r}: unknown component {d.component!r}; known: {', '.join(known)}")
        if is_file_target(d.implementation):
            path = file_key(d.implementation, d.origin)[0]
            if not os.path.isfile(path):
                raise LedgerError(f"ledger entry {d.id!r} names the plug-in {d.implementation!r}, but there is no "
                                  f"file {path} (a plug-in's file is found from the ledger's folder)")
            continue
        if names_plugin(d.implementation):  # module:attr, imported only when a cell runs it
            continue
        if d.implementation not in names:
            raise LedgerError(f"ledger entry {d.id!r}: {d.component} has no implementation {d.implementation!r}; "
                              f"registered: {', '.join(names)}")
