"""Reading results files: parse, check against conformance/results.schema.json, upgrade older versions.

`merge`, `report` and `compare` read files written on other machines, perhaps
by other versions, perhaps cut short; each problem is reported once, naming the
file and what is wrong with it, before anything is written.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from conformance.results import SCHEMA
from conformance.vocabulary import UsageError, Verdict

SCHEMA_FILE = Path(__file__).with_name("results.schema.json")
#: Versions this code reads; older ones are upgraded in memory to SCHEMA, one version at a time.
READABLE = ("conformance-results/2", "conformance-results/3", "conformance-results/4", "conformance-results/5",
            "conformance-results/6", SCHEMA)
#: Cell fields that hold a number, or "inf"/"-inf"/"nan" for a non-finite one.
_REAL_FIELDS = ("max_ratio", "p99_ratio")
_PER_OUTPUT_FIELDS = ("max_error", "p99_error", "budget", "output_ratio")
#: The same, in each of a cell's property records.
_PROPERTY_REAL_FIELDS = ("max_ratio", "spread")
#: The same, in a cell's gradient record: one number, and per gradient.
_GRADIENT_REAL_FIELDS = ("max_ratio",)
_PER_GRADIENT_FIELDS = ("max_error", "ratio")
#: Why the cells of a file older than conformance-results/7 read as having unsupported gradients.
GRADIENTS_NOT_RECORDED = "recorded before gradients were checked (conformance-results/6 or older)"


class ResultsFileError(UsageError):
    """A results file that cannot be read, is not JSON, or does not follow a schema this code reads."""

    def __init__(self, path: Path | str, message: str):
        self.path, self.message = str(path), message
        super().__init__(f"{path}: {message}")


@functools.cache
def validator() -> Any:
    """A validator for results.schema.json (the schema itself is checked once, too)."""
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def problems(data: Any) -> list[str]:
    """What keeps `data` from being a valid SCHEMA document, most relevant first; [] if it is one."""
    errors = sorted(validator().iter_errors(data), key=jsonschema.exceptions.relevance)
    found = [_describe(e) for e in errors]
    if not found:  # what JSON Schema cannot say: each cell's environment exists
        n = len(data["environments"])
        found = [f"at cells/{i}/env: environment {c['env']} does not exist (the file has {n})"
                 for i, c in enumerate(data["cells"]) if c["env"] >= n]
    return found


def _describe(error: jsonschema.exceptions.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    message = error.message
    if len(message) > 200:  # a long value quoted: cut it, and say which rule it breaks where that is short
        rule = error.validator_value
        message = message[:100] + "..." + (f" (fails {error.validator} {rule})" if isinstance(rule, (int, str)) else "")
    return f"at {where}: {message}"


def load_results(path: Path | str) -> dict[str, Any]:
    """One results file as a SCHEMA document, non-finite numbers as floats; ResultsFileError if it is not one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ResultsFileError(path, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ResultsFileError(path, "not a results file: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsFileError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise ResultsFileError(path, f"not a results file: no 'schema' field; readable: {', '.join(READABLE)}")
    version = data["schema"]
    if version not in READABLE:
        raise ResultsFileError(path, f"schema {version!r} is not one this version reads; "
                                     f"readable: {', '.join(READABLE)}")
    if version == "conformance-results/2":
        data = _upgrade_2(path, data)
    if data["schema"] == "conformance-results/3":
        data = _upgrade_3(data)
    if data["schema"] == "conformance-results/4":
        data = _upgrade_4(data)
    if data["schema"] == "conformance-results/5":
        data = _upgrade_5(data)
    if data["schema"] == "conformance-results/6":
        data = _upgrade_6(data)
    found = problems(data)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ResultsFileError(path, f"does not follow {version}: {found[0]}{more}")
    return _decode_reals(data)


def _upgrade_2(path: Path | str, data: dict[str, Any]) -> dict[str, Any]:
    """A conformance-results/2 file (one run, one top-level environment) in the shape of /3."""
    if not isinstance(data.get("environment"), dict) or not isinstance(data.get("cells"), list):
        raise ResultsFileError(path, "does not follow conformance-results/2: it needs an 'environment' "
                                     "object and a 'cells' list")
    env = {"created": data.get("created", ""), "command": data.get("command", []), **data["environment"]}
    empty = {"columns": [], "rows": [], "total": 0}
    cells = [{"samples": empty, "output_ratio": {}, **c, "env": 0} if isinstance(c, dict) else c
             for c in data["cells"]]
    rest = {k: v for k, v in data.items() if k not in ("environment", "cells", "schema")}
    return {**rest, "schema": "conformance-results/3", "environments": [env], "cells": cells}


def _upgrade_3(data: dict[str, Any]) -> dict[str, Any]:
    """A conformance-results/3 file in the shape of /4: its cells kept no arrays (`evidence` null; one
    that a development version wrote under /3 has another format, and is dropped)."""
    cells = data.get("cells")
    if isinstance(cells, list):
        cells = [{**c, "evidence": None} if isinstance(c, dict) else c for c in cells]
    return {**data, "schema": "conformance-results/4", "cells": cells}


def _upgrade_4(data: dict[str, Any]) -> dict[str, Any]:
    """A conformance-results/4 file in the shape of /5: its cells did not record their first failure."""
    cells = data.get("cells")
    if isinstance(cells, list):
        cells = [{**c, "first_failure": None} if isinstance(c, dict) else c for c in cells]
    return {**data, "schema": "conformance-results/5", "cells": cells}


def _upgrade_5(data: dict[str, Any]) -> dict[str, Any]:
    """A conformance-results/5 file in the shape of /6: its cells recorded no properties (`properties`
    empty, as for a component whose spec has none; those a development version wrote under /5 are kept)."""
    cells = data.get("cells")
    if isinstance(cells, list):
        cells = [{"properties": {}, **c} if isinstance(c, dict) else c for c in cells]
    return {**data, "schema": "conformance-results/6", "cells": cells}


def _upgrade_6(data: dict[str, Any]) -> dict[str, Any]:
    """A conformance-results/6 file in the shape of SCHEMA: its cells checked no gradients (`gradients`
    unsupported, saying so). Those a development version wrote under /6 are kept, with no arrays."""
    def upgrade(cell: dict[str, Any]) -> dict[str, Any]:
        record = cell.get("gradients")
        if not isinstance(record, dict):
            return {**cell, "gradients": {
                "verdict": Verdict.UNSUPPORTED.value, "examples": 0, "max_error": {}, "ratio": {}, "max_ratio": None,
                "reason": GRADIENTS_NOT_RECORDED, "sections": [], "counterexample": None, "repro": None,
                "evidence": None}}
        return {**cell, "gradients": {**record, "evidence": None} if record else record}

    cells = data.get("cells")
    if isinstance(cells, list):
        cells = [upgrade(c) if isinstance(c, dict) else c for c in cells]
    return {**data, "schema": SCHEMA, "cells": cells}


def _decode_reals(data: dict[str, Any]) -> dict[str, Any]:
    """The strings "inf", "-inf" and "nan" that results files use for non-finite numbers, as floats."""
    def real(v: Any) -> Any:
        return float(v) if isinstance(v, str) else v

    for cell in data["cells"]:
        for name in _REAL_FIELDS:
            cell[name] = real(cell[name])
        for name in _PER_OUTPUT_FIELDS:
            cell[name] = {k: real(v) for k, v in cell[name].items()}
        for record in cell["properties"].values():
            for name in _PROPERTY_REAL_FIELDS:
                record[name] = real(record[name])
        if gradients := cell["gradients"]:
            for name in _GRADIENT_REAL_FIELDS:
                gradients[name] = real(gradients[name])
            for name in _PER_GRADIENT_FIELDS:
                gradients[name] = {k: real(v) for k, v in gradients[name].items()}
    return data
