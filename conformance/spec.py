"""Read a component spec (spec/<id>.md) into the tables the harness uses.

The format is described in spec/README.md. Everything the harness knows about
a component (parameter domains, input and output shapes, the canonical weight
table, error-budget growth, worked examples) comes from here.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from conformance.vocabulary import Property

__all__ = [
    "Condition", "Example", "Param", "Spec", "SpecError", "Tensor",
    "evaluate", "find_spec_dir", "load_spec", "list_components",
]


class SpecError(Exception):
    """A spec file that does not follow spec/README.md."""

    def __init__(self, path: Path | str, section: str, message: str):
        self.path, self.section, self.message = Path(path), section, message
        where = f"{self.path}" + (f", section {section}" if section else "")
        super().__init__(f"{where}: {message}")


#: The magnitude parameters the harness knows (spec/README.md, "Parameters"), with the default domain of
#: each: float inputs have standard deviation 10**scale_exp, every weight's standard deviation is its
#: row's times 10**weight_exp, and each row of a float input (its last axis) is shifted by +-offset times
#: that standard deviation. Plainest first: hypothesis shrinks towards it.
MAGNITUDES: dict[str, tuple[int, ...]] = {"scale_exp": (0, -1, 1, -2, -3), "weight_exp": (0,), "offset": (0,)}


@dataclass(frozen=True)
class Param:
    name: str
    role: str  # "layer", "data" or "magnitude" (how the harness draws values: no shape depends on it)
    domain: tuple[Any, ...] | range
    sections: tuple[str, ...]


@dataclass(frozen=True)
class Tensor:
    """An input, output or weight row: name, shape expressions, and extras."""

    name: str
    shapes: Mapping[str, tuple[str, ...]]  # {"": shape} or one per mask pattern
    sections: tuple[str, ...]
    kind: str = "float"  # inputs: float | mask | tokens(n) | padded_tokens(n)
    std: str = ""  # weights: standard deviation expression
    repeat: tuple[str, str, str] | None = None  # weights: (variable, first, last) from the `for` column
    dtype: str = "float"  # outputs: float (the dtype under test), int or bool
    compare: str = "close"  # outputs: close | greedy(<logits output>)

    @property
    def shape(self) -> tuple[str, ...]:
        return self.shapes[""]


@dataclass(frozen=True)
class Sensitivity:
    """A constant or convention the spec fixes, where in the domain a change of it shows (`constant` table),
    and optionally a quantity over the reference's diagnostics the search drives upwards, towards there."""

    name: str
    sections: tuple[str, ...]
    region: str
    target: str | None = None
    # the settings of magnitude parameters that reach the region, each a tuple of (name, value); () = any draw
    reached_by: tuple[tuple[tuple[str, Any], ...], ...] = ()


@dataclass(frozen=True)
class Condition:
    """A named set of examples, or of output elements, where one rule of the spec applies (`condition` table).

    The reference module defines a function of the same name (spec/README.md, "Conditions"); failures
    inside its region name its sections, and ledger entries name it to say which examples they cover.
    """

    name: str
    sections: tuple[str, ...]
    meaning: str


@dataclass(frozen=True)
class PropertyRow:
    """A property the component has (`property` table): its name is one of `vocabulary.Property`, checked by
    conformance/properties.py, with the help of the reference's function of that name where the check needs
    to know which inputs a mask, padding or step order leaves out (spec/README.md, "Properties")."""

    name: str
    sections: tuple[str, ...]
    meaning: str


@dataclass(frozen=True)
class GradientRow:
    """A gradient the component's backward pass gives (`gradient` table): of the loss <cotangents, float
    outputs>, with respect to one float input or one weight, by the sections that say how (spec/README.md,
    "Gradients")."""

    name: str
    sections: tuple[str, ...]
    meaning: str


@dataclass(frozen=True)
class Example:
    name: str
    sections: tuple[str, ...]
    config: dict[str, Any]
    weights: dict[str, Any]
    inputs: dict[str, Any]
    expected: dict[str, Any]
    cotangents: dict[str, Any] = field(default_factory=dict)  # optional: with `gradients`, §Gradients' values
    gradients: dict[str, Any] = field(default_factory=dict)  # by input or weight name


@dataclass
class Spec:
    component: str
    title: str
    path: Path
    sections: dict[str, str]  # number -> title
    informative: set[str]
    params: dict[str, Param]
    weights: dict[str, Tensor]
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    budgets: dict[str, tuple[str, str]]  # output -> (scale, growth) expressions
    examples: list[Example] = field(default_factory=list)
    conditions: dict[str, Condition] = field(default_factory=dict)  # the optional `condition` table
    sensitivity: dict[str, Sensitivity] = field(default_factory=dict)  # the optional `constant` table
    properties: dict[str, PropertyRow] = field(default_factory=dict)  # the optional `property` table
    gradients: dict[str, GradientRow] = field(default_factory=dict)  # the optional `gradient` table

    @property
    def layer_params(self) -> list[str]:
        return [p.name for p in self.params.values() if p.role == "layer"]

    def magnitudes(self) -> dict[str, tuple[Any, ...]]:
        """The magnitude parameters every example has, each with its domain: those the spec's parameter
        table declares (role `magnitude`), and `scale_exp` with the harness's default domain if it does not."""
        declared = {p.name: tuple(p.domain) for p in self.params.values() if p.role == "magnitude"}
        return {"scale_exp": MAGNITUDES["scale_exp"], **declared}

    @property
    def shape_params(self) -> list["Param"]:
        """The layer and data parameters: what a new value of may change a shape or a code path."""
        return [p for p in self.params.values() if p.role != "magnitude"]

    def normative_sections(self) -> list[str]:
        return [n for n in self.sections if not any(
            n == i or n.startswith(i + ".") for i in self.informative)]

    def covered_sections(self) -> set[str]:
        """Sections something enforces: named by a row or worked example (a check names the
        section itself: naming §7 does not cover a §7.5), or made only of covered subsections."""
        named: set[str] = set()
        rows = [*self.params.values(), *self.weights.values(), *self.inputs.values(), *self.outputs.values(),
                *self.conditions.values(), *self.properties.values(), *self.gradients.values(), *self.examples]
        for row in rows:
            named.update(row.sections)
        covered = {n for n in self.sections if n in named}
        for n in sorted(self.sections, key=lambda n: -n.count(".")):  # deepest first, so parents see their children
            children = [c for c in self.normative_sections() if c.startswith(n + ".")]  # informative ones enforce nothing
            if children and all(c in covered for c in children):
                covered.add(n)
        return covered

    def weight_shapes(self, env: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], float]]:
        """Every weight of one configuration as name -> (shape, std), rows with `for` expanded."""
        out: dict[str, tuple[tuple[int, ...], float]] = {}
        for w in self.weights.values():
            if w.repeat is None:
                out[w.name] = (self.shape_of(w, env), float(evaluate(w.std, env)))
                continue
            var, first, last = w.repeat
            for i in range(int(evaluate(first, env)), int(evaluate(last, env)) + 1):
                local = {**env, var: i}
                out[w.name.replace("{" + var + "}", str(i))] = (self.shape_of(w, local), float(evaluate(w.std, local)))
        return out

    def shape_of(self, tensor: Tensor, env: Mapping[str, Any], pattern: str = "") -> tuple[int, ...]:
        exprs = tensor.shapes.get(pattern) or tensor.shapes.get("")
        if exprs is None:
            raise SpecError(self.path, "", f"{tensor.name} has no shape for pattern {pattern!r}")
        return tuple(int(evaluate(e, env)) for e in exprs)


# --- expressions --------------------------------------------------------------

_FUNCS = {"sqrt": math.sqrt, "log": math.log, "max": max, "min": min}
_BINOPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b,
}


def expression_names(expr: str) -> set[str]:
    """The names a spec expression reads (its functions left out)."""
    return {n.id for n in ast.walk(ast.parse(expr.strip(), mode="eval")) if isinstance(n, ast.Name)} - set(_FUNCS)


def evaluate(expr: str, env: Mapping[str, Any]) -> Any:
    """Evaluate a spec expression (numbers, names, + - * / // **, sqrt/log/max/min)."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise KeyError(f"unknown name {node.id!r} in {expr!r}; known: {', '.join(sorted(env))}")
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _FUNCS and not node.keywords):
            return _FUNCS[node.func.id](*(walk(a) for a in node.args))
        raise ValueError(f"unsupported expression {expr!r}")

    return walk(ast.parse(expr.strip(), mode="eval"))


# --- parsing ------------------------------------------------------------------

def _assignments(text: str, spec: "Spec") -> tuple[tuple[tuple[str, Any], ...], ...]:
    """`scale_exp = 3 or scale_exp = 5, norm = post`: settings of magnitude parameters, and optionally of
    categorical ones (sets of words) to say which strata reach the region, each a value of its domain."""
    return tuple(_assignment(alternative, spec) for alternative in text.split(" or ") if alternative.strip())


def _assignment(text: str, spec: "Spec") -> tuple[tuple[str, Any], ...]:
    found = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (w.strip() for w in part.partition("="))
        words = {p.name: tuple(p.domain) for p in spec.shape_params
                 if not isinstance(p.domain, range) and all(isinstance(v, str) for v in p.domain)}
        domain = spec.magnitudes().get(name, words.get(name))
        if domain is None:
            raise ValueError(f"reached by {part!r}: {name!r} is not a magnitude parameter or one of words; valid: "
                             f"{', '.join([*spec.magnitudes(), *words])}")
        number = float(value) if re.fullmatch(r"-?\d+(\.\d+)?", value) else None
        chosen = [v for v in domain if v == (value if name in words else number)]
        if not chosen:
            raise ValueError(f"reached by {part!r}: {value!r} is not in the domain of {name}: "
                             f"{', '.join(map(str, domain))}")
        found.append((name, chosen[0]))
    return tuple(found)


class _AnyName(dict):
    """An environment in which every name is 1.0: to check an expression's form before its names are known."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> float:
        return 1.0


_HEADING = re.compile(r"^(#{2,3})\s+(\d+(?:\.\d+)?)\.?\s+(.*?)\s*$")
_TITLE = re.compile(r"^#\s+(.*?)\s*\(component\s+`([a-z0-9_]+)`\)\s*$")
_SHAPE = re.compile(r"^\((.*)\)$")


def _cell(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "`" else text


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _sections(text: str) -> tuple[str, ...]:
    return tuple(s.strip().lstrip("§") for s in text.split(",") if s.strip())


def _domain(text: str) -> tuple[Any, ...] | range:
    text = _cell(text)
    if m := re.fullmatch(r"(-?\d+)\s*\.\.\s*(-?\d+)", text):
        lo, hi = int(m[1]), int(m[2])
        if lo > hi:
            raise ValueError(f"empty range {text!r}")
        return range(lo, hi + 1)
    if text.startswith("{") and text.endswith("}"):
        items = []
        for word in (w.strip() for w in text[1:-1].split(",")):
            if re.fullmatch(r"-?\d+", word):
                items.append(int(word))
            elif re.fullmatch(r"-?\d*\.\d+(e-?\d+)?", word):
                items.append(float(word))
            elif word in ("true", "false"):
                items.append(word == "true")
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word):
                items.append(word)
            else:
                raise ValueError(f"bad set element {word!r}")
        if not items:
            raise ValueError("empty set")
        return tuple(items)
    raise ValueError(f"domain {text!r} is neither a range a..b nor a set {{x, y}}")


def _shapes(text: str) -> dict[str, tuple[str, ...]]:
    """`(B, Lq, d)` or `padding: (B, 1, Lk)`, `causal: (Lq, Lk)`, ..."""
    parts = re.findall(r"`([^`]*)`", text) or [text]
    out: dict[str, tuple[str, ...]] = {}
    for part in parts:
        pattern, _, shape = part.rpartition(":")
        m = _SHAPE.match(shape.strip())
        if not m:
            raise ValueError(f"shape {part!r} is not a tuple like (B, T, d_model)")
        out[pattern.strip()] = tuple(e.strip() for e in m[1].split(",") if e.strip())
    return out


def _tables(lines: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every Markdown table as (section it stands in, header, rows)."""
    found, section, i = [], "", 0
    while i < len(lines):
        if m := _HEADING.match(lines[i]):
            section = m[2]
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = [h.lower() for h in _split_row(lines[i])]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            found.append((section, header, rows))
            continue
        i += 1
    return found


def _column(header: list[str], name: str, path: Path, section: str) -> int:
    if name not in header:
        raise SpecError(path, section, f"table {header[0]!r} has no column {name!r} (columns: {', '.join(header)})")
    return header.index(name)


def load_spec(path: Path | str) -> Spec:
    """Parse one spec file; raise SpecError naming the file and section on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(path, "", f"cannot read: {e.strerror}") from None
    lines = text.splitlines()
    title_match = next((m for m in map(_TITLE.match, lines) if m), None)
    if title_match is None:
        raise SpecError(path, "", "no title line '# Name (component `id`)'")
    if title_match[2] != path.stem:
        raise SpecError(path, "", f"title names component {title_match[2]!r} but the file is {path.name}")

    sections: dict[str, str] = {}
    informative: set[str] = set()
    for line in lines:
        if m := _HEADING.match(line):
            if m[2] in sections:
                raise SpecError(path, m[2], "section number used twice")
            sections[m[2]] = m[3]
            if m[3].lower().endswith("(informative)"):
                informative.add(m[2])

    spec = Spec(component=path.stem, title=title_match[1], path=path, sections=sections,
                informative=informative, params={}, weights={}, inputs={}, outputs={}, budgets={})
    kinds = {"parameter": spec.params, "weight": spec.weights, "input": spec.inputs,
             "output": spec.outputs, "budget": spec.budgets, "condition": spec.conditions,
             "constant": spec.sensitivity, "property": spec.properties, "gradient": spec.gradients}
    for section, header, rows in _tables(lines):
        if header[0] not in kinds:
            continue
        for row in rows:
            if len(row) != len(header):
                raise SpecError(path, section, f"row {row!r} has {len(row)} cells, the header has {len(header)}")
            name = _cell(row[0])
            try:
                _add_row(spec, header, row, name, path, section)
            except SpecError:
                raise
            except (ValueError, KeyError) as e:
                raise SpecError(path, section, f"{header[0]} {name!r}: {e}") from None

    for kind, table in kinds.items():
        if not table and kind not in ("condition", "constant", "property", "gradient"):
            raise SpecError(path, "", f"no table with first column {kind!r}")
    for output in spec.outputs.values():
        if output.dtype == "float" and output.name not in spec.budgets:
            raise SpecError(path, "", f"output {output.name!r} has no row in the budget table")
        if output.compare.startswith("greedy("):
            logits = output.compare[len("greedy("):-1]
            if logits not in spec.outputs or spec.outputs[logits].dtype != "float":
                raise SpecError(path, "", f"output {output.name!r} compares greedily against {logits!r}, "
                                          "which is not a float output")
    if spec.gradients:  # every float input and every weight is differentiated (spec/README.md, "Gradients")
        floats = [t.name for t in spec.inputs.values() if t.kind == "float"] + list(spec.weights)
        unknown = [n for n in spec.gradients if n not in floats]
        if unknown:
            raise SpecError(path, "", f"gradient {unknown[0]!r} is not a float input or a weight of this component; "
                                      f"valid: {', '.join(floats)}")
        missing = [n for n in floats if n not in spec.gradients]
        if missing:
            raise SpecError(path, "", f"the gradient table has no row for {', '.join(missing)}")
    for row in [*spec.params.values(), *spec.weights.values(), *spec.inputs.values(), *spec.outputs.values(),
                *spec.conditions.values(), *spec.sensitivity.values(), *spec.properties.values(),
                *spec.gradients.values()]:
        for s in row.sections:
            if s not in sections:
                raise SpecError(path, "", f"{row.name!r} names section {s}, which does not exist")

    spec.examples = _examples(text, path, spec)
    return spec


def _add_row(spec: Spec, header: list[str], row: list[str], name: str, path: Path, section: str) -> None:
    col = lambda c: row[_column(header, c, path, section)]  # noqa: E731
    kind = header[0]
    if kind == "parameter":
        role = _cell(col("role"))
        if role not in ("layer", "data", "magnitude"):
            raise ValueError(f"role {role!r} is not 'layer', 'data' or 'magnitude'")
        if role == "magnitude" and name not in MAGNITUDES:
            raise ValueError(f"magnitude parameter {name!r} is not one the harness draws; valid: "
                             f"{', '.join(MAGNITUDES)}")
        spec.params[name] = Param(name, role, _domain(col("domain")), _sections(col("sections")))
    elif kind == "weight":
        repeat = None
        if "for" in header and _cell(col("for")) not in ("", "-"):
            m = re.fullmatch(r"([A-Za-z_]\w*)\s+in\s+(.+?)\s*\.\.\s*(.+)", _cell(col("for")))
            if not m:
                raise ValueError(f"for {col('for')!r} is not 'var in first..last'")
            if "{" + m[1] + "}" not in name:
                raise ValueError(f"a weight repeated over {m[1]!r} needs {{{m[1]}}} in its name")
            repeat = (m[1], m[2], m[3])
        spec.weights[name] = Tensor(name, _shapes(col("shape")), _sections(col("sections")), std=_cell(col("std")),
                                    repeat=repeat)
    elif kind == "input":
        input_kind = _cell(col("kind"))
        if not re.fullmatch(r"float|mask|(padded_)?tokens\(.+\)", input_kind):
            raise ValueError(f"kind {input_kind!r} is not float, mask, tokens(n) or padded_tokens(n)")
        spec.inputs[name] = Tensor(name, _shapes(col("shape")), _sections(col("sections")), kind=input_kind)
    elif kind == "output":
        dtype = _cell(col("dtype")) if "dtype" in header else "float"
        compare = _cell(col("compare")) if "compare" in header else "close"
        if dtype not in ("float", "int", "bool"):
            raise ValueError(f"dtype {dtype!r} is not float, int or bool")
        if not re.fullmatch(r"close|greedy\(\w+\)", compare):
            raise ValueError(f"compare {compare!r} is not close or greedy(<logits output>)")
        spec.outputs[name] = Tensor(name, _shapes(col("shape")), _sections(col("sections")),
                                    dtype=dtype, compare=compare)
    elif kind == "budget":
        spec.budgets[name] = (_cell(col("scale")), _cell(col("growth")))
    elif kind == "condition":
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name == "always":
            raise ValueError("a condition's name is a Python identifier, the name of a function of the reference "
                             "module, and not 'always' (every ledger entry may name that)")
        spec.conditions[name] = Condition(name, _sections(col("sections")), col("meaning"))
    elif kind == "property":
        valid = [p.value for p in Property]
        if name not in valid:
            raise ValueError(f"is not a property the harness checks; valid: {', '.join(valid)}")
        spec.properties[name] = PropertyRow(name, _sections(col("sections")), col("meaning"))
    elif kind == "gradient":  # its names are checked once every table is read
        spec.gradients[name] = GradientRow(name, _sections(col("sections")), col("meaning"))
    elif kind == "constant":
        target = _cell(col("target")) if "target" in header else ""
        if target:
            evaluate(target, _AnyName())  # the expression's form; its names are the reference's diagnostics
        reached = col("reached by").replace("`", "") if "reached by" in header else ""
        spec.sensitivity[name] = Sensitivity(name, _sections(col("sections")), col("region"), target or None,
                                             _assignments(reached, spec))


def _examples(text: str, path: Path, spec: Spec) -> list[Example]:
    examples = []
    section = ""
    for block in re.finditer(r"^```json example\s*\n(.*?)^```", text, re.M | re.S):
        heads = [m for m in (_HEADING.match(l) for l in text[: block.start()].splitlines()) if m]
        section = heads[-1][2] if heads else ""
        try:
            data = json.loads(block[1])
            # an example enforces the sections it names and the one it stands in
            example = Example(data["name"], tuple(dict.fromkeys([*data["sections"], section])), data["config"],
                              data["weights"], data["inputs"], data["expected"], data.get("cotangents", {}),
                              data.get("gradients", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SpecError(path, section, f"worked example is not valid: {e}") from None
        unknown = [s for s in data["sections"] if s not in spec.sections]
        if unknown:
            raise SpecError(path, section, f"worked example {example.name!r} names section {', '.join(unknown)}, "
                                           "which does not exist")
        if bool(example.cotangents) != bool(example.gradients):
            raise SpecError(path, section, f"worked example {example.name!r} gives cotangents without gradients or "
                                           "gradients without cotangents; give both or neither")
        missing = [p.name for p in spec.shape_params if p.name not in example.config]
        if missing:
            raise SpecError(path, section, f"worked example {example.name!r} lacks parameters {missing}")
        examples.append(example)
    return examples


# --- finding specs ------------------------------------------------------------

def find_spec_dir() -> Path:
    """spec/ of this checkout, or $CONFORMANCE_SPEC_DIR."""
    env = os.environ.get("CONFORMANCE_SPEC_DIR")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parent.parent / "spec", Path.cwd() / "spec"]
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    raise SpecError(candidates[0], "", "spec directory not found; install the project with "
                    "'pip install -e .' from a checkout, or set CONFORMANCE_SPEC_DIR")


def list_components(spec_dir: Path | None = None) -> list[str]:
    spec_dir = spec_dir or find_spec_dir()
    return sorted(p.stem for p in spec_dir.glob("*.md") if p.name != "README.md")
