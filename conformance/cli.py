"""The `conformance` command: list, check, run, merge, compare, report.

Exit 0 conformant (compare: no regression), 1 not (compare: a regression), 2 usage error
(including a results file that cannot be read or does not follow the schema).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Callable, Sequence

from conformance import deviations
from conformance.compare import DEFAULT_FACTOR, DEFAULT_FLOOR, compare, format_comparison
from conformance.engine import CellResult, cells_of, run_cell, run_matrix
from conformance.merge import merge_documents
from conformance.results import format_cell, header, summary_line, write_document, write_results
from conformance.schema import load_results
from conformance.spec import Spec, SpecError, find_spec_dir, list_components, load_spec
from impls import DEVICES, DTYPES, MODES, Registered, UsageError, registry, resolve

#: Examples per cell for each profile; --examples overrides.
PROFILES = {"dev": 25, "ci": 100, "thorough": 1000}
DEFAULT_PROFILE = "ci"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, SpecError) as e:
        print(f"conformance: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conformance", description=(
        "Check implementations of neural-network components against the written specs in spec/."))
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="components, implementations and their availability")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    def budget_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--examples", type=int, help="examples per cell (default: from --profile)")
        sp.add_argument("--profile", choices=sorted(PROFILES),
                        default=os.environ.get("CONFORMANCE_PROFILE", DEFAULT_PROFILE),
                        help=f"examples per cell: {', '.join(f'{k}={v}' for k, v in PROFILES.items())} "
                             f"(default: $CONFORMANCE_PROFILE or {DEFAULT_PROFILE})")
        sp.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0: runs repeat exactly)")
        sp.add_argument("--ledger", default=str(deviations.LEDGER),
                        help="known-deviation ledger (default: the repository's spec/deviations.toml)")

    def axis_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dtype", action="append", help=f"repeatable: {', '.join(DTYPES)} (default: all)")
        sp.add_argument("--device", action="append", help=f"repeatable: {', '.join(DEVICES)} (default: all; "
                                                          "those this machine lacks come out not-available)")
        sp.add_argument("--mode", action="append", help=f"repeatable: {', '.join(MODES)} (default: all)")

    ck = sub.add_parser("check", help="check one implementation of one component")
    ck.add_argument("component", help="a component id, e.g. mha (see 'conformance list')")
    ck.add_argument("--impl", required=True, help="a registered name, or a plug-in as package.module:attr "
                                                  "or path/to/file.py:attr")
    axis_args(ck)
    ck.add_argument("--example", help="replay one example given as JSON (as printed in a failure's repro line)")
    ck.add_argument("--output", "-o", help="also write the results to this JSON file")
    budget_args(ck)
    ck.set_defaults(func=cmd_check)

    rn = sub.add_parser("run", help="the whole matrix: every registered implementation of every component")
    rn.add_argument("--framework", action="append", help="only implementations in these frameworks (repeatable)")
    rn.add_argument("--component", action="append", help="only these components (repeatable)")
    axis_args(rn)
    rn.add_argument("--output", "-o", default="reports/results.json", help="results file (default %(default)s)")
    budget_args(rn)
    rn.set_defaults(func=cmd_run)

    def threshold_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--factor", type=float, default=DEFAULT_FACTOR,
                        help="a conformant slot regresses when its largest error/budget grows past this many "
                             "times the baseline's (default %(default)s)")
        sp.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                        help="baselines below this error/budget count as this much, so growth from "
                             "near zero is ignored (default %(default)s)")

    mg = sub.add_parser("merge", help="combine results files from several environments into one")
    mg.add_argument("files", nargs="+", metavar="FILE", help="results files (runs' or merged)")
    mg.add_argument("--output", "-o", required=True, help="the merged results file")
    mg.set_defaults(func=cmd_merge)

    cp = sub.add_parser("compare", help="regressions and improvements from a baseline; exit 1 on a regression")
    cp.add_argument("baseline", metavar="BASELINE", help="results file to compare against")
    cp.add_argument("current", metavar="CURRENT", help="results file to judge")
    threshold_args(cp)
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="one self-contained HTML report of results files")
    rp.add_argument("files", nargs="+", metavar="RESULTS",
                    help="results files (runs' or merged); a folder means its results-*.json files")
    rp.add_argument("--output", "-o", default="reports/index.html",
                    help="the HTML file; counterexamples go to npz/ beside it (default %(default)s)")
    rp.add_argument("--baseline", help="a results file to compare with: regressions are highlighted")
    rp.add_argument("--spec-url", help="where spec/ is published, e.g. https://github.com/ORG/REPO/blob/main/spec "
                                       "(default: a relative link to this checkout's spec/)")
    threshold_args(rp)
    rp.set_defaults(func=cmd_report)

    df = sub.add_parser("differences", help="what differs between frameworks, as Markdown, from the ledger and "
                                            "results")
    df.add_argument("files", nargs="+", metavar="RESULTS",
                    help="results files (runs' or merged); a folder means its results-*.json files")
    df.add_argument("--ledger", default=str(deviations.LEDGER),
                    help="known-deviation ledger (default: the repository's spec/deviations.toml)")
    df.add_argument("--readme", metavar="FILE",
                    help="put the table into FILE between its marker lines instead of printing it")
    df.set_defaults(func=cmd_differences)
    return p


def _specs(names: Sequence[str] | None) -> list[Spec]:
    known = list_components()
    for n in names or []:
        if n not in known:
            raise UsageError(f"unknown component {n!r}; known: {', '.join(known)}")
    spec_dir = find_spec_dir()
    return [load_spec(spec_dir / f"{n}.md") for n in (names or known)]


def _check_axes(args: argparse.Namespace) -> None:
    for flag, given, valid in (("--dtype", args.dtype, DTYPES), ("--device", args.device, DEVICES),
                               ("--mode", args.mode, MODES)):
        for value in given or []:
            if value not in valid:
                raise UsageError(f"unknown {flag} {value!r}; valid: {', '.join(valid)}")


def _exit_code(cells: list[CellResult]) -> int:
    """0 when something ran and nothing failed; cells that cannot run here and known deviations are not failures."""
    ran = [c for c in cells if c.verdict not in ("unsupported", "not-available")]
    if not ran:
        print("nothing ran: every cell asked for is unsupported or not available here", file=sys.stderr)
    return 0 if ran and all(c.verdict in ("conformant", "known-deviation") for c in ran) else 1


def _examples(args: argparse.Namespace) -> int:
    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be at least 1, got {args.examples}")
    return args.examples or PROFILES[args.profile]


def cmd_list(args: argparse.Namespace) -> int:
    components = list_components()
    rows = [_describe(r) for r in registry()]
    if args.json:
        json.dump({"components": components, "dtypes": list(DTYPES), "devices": list(DEVICES),
                   "modes": list(MODES), "implementations": rows},
                  sys.stdout, indent=1)
        print()
        return 0
    print(f"spec directory: {find_spec_dir()}")
    label = {id(row): row["name"] + (f"[{row['backend']}]" if row["backend"] else "") for row in rows}
    width = max([20, *map(len, label.values())])
    for c in components:
        spec = load_spec(find_spec_dir() / f"{c}.md")
        print(f"\n{c}: {spec.title}  ({len(spec.sections)} sections, {len(spec.examples)} worked examples)")
        for row in (r for r in rows if r["component"] == c):
            if row["available"]:
                status = (f"dtypes {', '.join(row['dtypes'])}; modes {', '.join(row['modes'])}; "
                          f"devices {', '.join(row['devices'])}")
            else:
                status = f"unavailable: {row['reason']}"
            print(f"  {label[id(row)]:<{width}} {row['framework']:<8} {status}")
    for row in (r for r in rows if r["component"] not in components):
        print(f"\n(unknown component {row['component']!r}) {row['name']} from {row['source']}")
    return 0


def _describe(r: Registered) -> dict[str, Any]:
    """One implementation for `list`; importing it is how its dtypes and devices are known."""
    row: dict[str, Any] = {"component": r.component, "name": r.name, "framework": r.framework,
                           "source": r.source, "target": r.target, "available": False, "reason": None,
                           "backend": None, "dtypes": [], "modes": [], "devices": []}
    row["reason"] = r.unavailable_reason() if r.component != "?" else r.source
    if row["reason"] is None:
        try:
            row.update(dtypes=list(r.dtypes), modes=list(r.modes), devices=r.devices(), backend=r.backend(), available=True)
        except Exception as e:  # installed but broken: shown, not fatal
            row["reason"] = f"failed to load: {type(e).__name__}: {e}"
    return row


def _column(impls: list[Registered]) -> int:
    """Width of the implementation column: Keras names gain their backend, e.g. "[tensorflow]"."""
    return max([24, *(len(r.label) + (12 if r.framework == "keras" else 0) for r in impls)])


def _printer(width: int) -> Callable[[CellResult], None]:
    return lambda cell: print(format_cell(cell, width), flush=True)


def _ledger(path: str) -> list:
    """The known-deviation ledger, read and checked once, before anything runs (a bad entry is a usage error)."""
    if not os.path.exists(path) or os.path.isdir(path):  # /dev/null is a fine empty ledger
        raise UsageError(f"no ledger file {path!r} (--ledger)")
    ledger = deviations.load(path)
    if os.environ.get("CONFORMANCE_SPEC_DIR"):  # a folder of some specs: entries for the others do not apply
        ledger = [d for d in ledger if d.component in list_components()]
    deviations.check_names(ledger, registry())
    return ledger


def cmd_check(args: argparse.Namespace) -> int:
    _check_axes(args)
    spec = _specs([args.component])[0]  # a malformed spec is the first error reported, before the ledger
    ledger = _ledger(args.ledger)
    impl = resolve(args.component, args.impl)
    example = None
    if args.example:
        try:
            example = json.loads(args.example)
        except json.JSONDecodeError as e:
            raise UsageError(f"--example is not valid JSON: {e}") from None
        missing = [p for p in [*spec.params, "seed", "scale_exp"] if p not in example]
        if missing:
            raise UsageError(f"--example lacks {', '.join(missing)}")
    n = _examples(args)
    width = _column([impl])
    show = _printer(width)
    print(header(width))
    if example is None:
        cells = run_matrix([spec], [impl], dtypes=args.dtype, devices=args.device, modes=args.mode,
                           max_examples=n, seed=args.seed, on_result=show, ledger=ledger)
    else:
        cells = [run_cell(spec, impl, d, dev, m, example=example, ledger=ledger)
                 for d, dev, m in cells_of(args.dtype, args.device, args.mode)]
        for c in cells:
            show(c)
    if args.output:
        write_results(args.output, cells)
    print(summary_line(cells))
    return _exit_code(cells)


def cmd_run(args: argparse.Namespace) -> int:
    _check_axes(args)
    specs = _specs(args.component)
    ledger = _ledger(args.ledger)
    impls: list[Registered] = [r for r in registry() if r.component in {s.component for s in specs}]
    if args.framework:
        known = sorted({r.framework for r in registry()})
        for f in args.framework:
            if f not in known:
                raise UsageError(f"unknown framework {f!r}; known: {', '.join(known)}")
        impls = [r for r in impls if r.framework in args.framework]
    n = _examples(args)
    width = _column(impls)
    print(f"{len(specs)} component(s), {len(impls)} implementation(s), {n} examples per cell\n{header(width)}")
    cells = run_matrix(specs, impls, dtypes=args.dtype, devices=args.device, modes=args.mode, max_examples=n,
                       seed=args.seed, on_result=_printer(width), ledger=ledger)
    path = write_results(args.output, cells)
    print(f"\n{summary_line(cells)}\nresults: {path}")
    return _exit_code(cells)


def _thresholds(args: argparse.Namespace) -> None:
    if not args.factor > 1:
        raise UsageError(f"--factor must be greater than 1, got {args.factor}")
    if not args.floor >= 0:
        raise UsageError(f"--floor must be at least 0, got {args.floor}")


def cmd_merge(args: argparse.Namespace) -> int:
    docs = [(path, load_results(path)) for path in args.files]  # every input read before anything is written
    merged = merge_documents(docs, sys.argv)
    path = write_document(args.output, merged)
    print(f"{len(merged['cells'])} cells from {len(merged['environments'])} environment(s) "
          f"in {len(docs)} file(s): {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    _thresholds(args)
    baseline, current = load_results(args.baseline), load_results(args.current)
    result = compare(baseline, current, factor=args.factor, floor=args.floor)
    if not result.compared and not result.changes:
        raise UsageError(f"{args.baseline} and {args.current} have no slot in common: nothing to compare")
    print(format_comparison(result, args.baseline, args.current))
    return 1 if result.regressions else 0


def _results_files(paths: list[str]) -> list[str]:
    """Files as given; a folder stands for the results-*.json files in it (what `tox` leaves in reports/)."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(glob.glob(os.path.join(path, "results-*.json")))
            if not inside:
                raise UsageError(f"{path} is a folder with no results-*.json files in it")
            found += inside
        else:
            found.append(path)
    return found


def cmd_report(args: argparse.Namespace) -> int:
    from conformance.report import write_report  # jinja2 and the report's helpers, only when asked for

    _thresholds(args)
    written = write_report(_results_files(args.files), args.output, baseline=args.baseline, spec_url=args.spec_url,
                           factor=args.factor, floor=args.floor)
    print(f"report: {written.html} ({written.npz} .npz file(s) beside it)")
    for note in written.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_differences(args: argparse.Namespace) -> int:
    from conformance import differences
    from conformance.atomic import atomic_write

    ledger = _ledger(args.ledger)
    documents = [load_results(path) for path in _results_files(args.files)]
    table = differences.from_documents(ledger, documents)
    if not args.readme:
        print(table, end="")
        return 0
    try:
        with open(args.readme, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read --readme {args.readme!r}: {e.strerror}") from None
    updated = differences.replace_block(text, table, args.readme)
    if updated != text:
        atomic_write(args.readme, lambda f: f.write(updated))
    print(f"{args.readme}: {'updated' if updated != text else 'already up to date'}")
    return 0
