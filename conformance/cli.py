"""The `conformance` command: list, check, run, merge, compare, report.

Exit 0 conformant (compare: no regression), 1 not (a cell non-conformant or in error, or its gradients
non-conformant; compare: a regression), 2 usage error (including a results file that cannot be read or does
not follow the schema).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import glob
import json
import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

from conformance import deviations, journal, schedule
from conformance.compare import DEFAULT_FACTOR, DEFAULT_FLOOR, compare, format_comparison
from conformance.engine import CellResult, cells_of
from conformance.atomic import check_output
from conformance.generate import parse_example
from conformance.merge import merge_documents
from conformance.results import format_cell, gradients_failed, header, summary_line, write_document, write_results
from conformance.schema import load_results
from conformance.spec import Spec, SpecError, find_spec_dir, list_components, load_spec
from conformance.workers import (CellTask, ImplRef, Interrupted, Limits, Pool, default_jobs, entry_point_refs,
                                 resolve_ref)
from conformance.vocabulary import DEVICES, DTYPES, impl_label, KERAS_BACKENDS, MODES, UsageError, Verdict
from conformance.registry import shipped, Registered, registry

#: Examples per cell for each profile; --examples overrides.
PROFILES = {"dev": 25, "ci": 100, "thorough": 1000}
DEFAULT_PROFILE = "ci"


class _UsageExit(Exception):
    """argparse's complaint about the command line, raised instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other usage error
        raise _UsageExit(f"{self.prog}: {message}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside the cells (they have handlers of their own: see workers.Pool)."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _main(argv)
    finally:
        if main_thread:
            # As the command (argv None: sys.argv), the run is over and its files are written: a SIGTERM
            # while the interpreter exits would change nothing but the exit status, so it is ignored.
            # Called from Python, the caller's handler comes back.
            signal.signal(signal.SIGTERM, signal.SIG_IGN if argv is None else previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        return args.func(args)
    except _UsageExit as e:
        print(f"conformance: error: {e}", file=sys.stderr)
        return 2
    except (UsageError, SpecError) as e:
        print(f"conformance: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # before or after the cells: nothing of a run is lost (see the journal)
        print("conformance: interrupted", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130


def _one_line(message: str) -> str:
    return " ".join(message.split("\n")[0].split()) if "\n" in message else message


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="conformance", description=(
        "Check implementations of neural-network components against the written specs in spec/."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ls = sub.add_parser("list", help="components, implementations and their availability")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    def budget_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--examples", type=int, help="examples per cell (default: from --profile)")
        sp.add_argument("--profile", choices=sorted(PROFILES),
                        default=os.environ.get("CONFORMANCE_PROFILE", DEFAULT_PROFILE),
                        help=f"examples per cell: {', '.join(f'{k}={v}' for k, v in PROFILES.items())} "
                             f"(default: $CONFORMANCE_PROFILE or {DEFAULT_PROFILE})")
        sp.add_argument("--seed", type=int, default=0, help="hypothesis seed, 0 or more (default 0: runs repeat "
                                                              "exactly)")
        sp.add_argument("--ledger", action="append", default=[], metavar="FILE",
                        help="a known-deviation ledger applied besides the built-in spec/deviations.toml, "
                             "repeatable (a project's own, beside its plug-ins); 'none' drops the built-in one")
        sp.add_argument("--timeout", type=float, default=Limits.example, metavar="SECONDS",
                        help="an example that takes longer ends its cell as error, and its worker is replaced "
                             "(default %(default)g)")
        sp.add_argument("--compile-timeout", type=float, default=Limits.compile, metavar="SECONDS",
                        help="allowed on top for importing an implementation and its framework, and for each "
                             "first call on a new shape in the compiled mode (default %(default)g)")
        sp.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                        help="a whole cell that takes longer ends as error (default: an hour plus 10 s per "
                             "example)")
        sp.add_argument("--no-shrink", action="store_true",
                        help="end a failing cell at the first failing example, without shrinking it: a quick yes or "
                             "no (the counterexample is then the first found, not the smallest)")
        sp.add_argument("--resume", action="store_true",
                        help="run only the cells that the output's journal lacks, after an interrupted run")

    def axis_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--jobs", "-j", type=int, default=default_jobs(),
                        help="cells run at once, each in a worker process (default: the CPUs this process may "
                             "use, %(default)s here)")
        sp.add_argument("--backend", action="append",
                        help=f"Keras backend, repeatable: {', '.join(KERAS_BACKENDS)} (default: $KERAS_BACKEND "
                             "if set, else every one installed; each runs in workers of its own)")
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
    rn.add_argument("--framework", action="append",
                    help="only implementations in these frameworks (repeatable); a library's adapters go by the "
                         "library's name (transformers, keras_hub, flax, equinox, onnxruntime), not its framework's")
    rn.add_argument("--impl", action="append", dest="impls", metavar="NAME",
                    help="only implementations of this registered name, of any component (repeatable), e.g. "
                         "transformers.BertLayer")
    rn.add_argument("--component", action="append", help="only these components (repeatable)")
    axis_args(rn)
    rn.add_argument("--output", "-o", default="reports/results.json", help="results file (default %(default)s)")
    rn.add_argument("--shard", metavar="K/N",
                    help="run part K of N of the matrix, split by estimated cost the same way on every machine; "
                         "'conformance merge' joins the N results files")
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
    df.add_argument("--ledger", action="append", default=[], metavar="FILE",
                    help="a known-deviation ledger besides the built-in spec/deviations.toml, repeatable; "
                         "'none' drops the built-in one")
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


def keras_backends(args: argparse.Namespace) -> list[str]:
    """The Keras backends to run: --backend, else $KERAS_BACKEND, else every one installed."""
    if args.backend:
        return list(dict.fromkeys(args.backend))
    if os.environ.get("KERAS_BACKEND"):
        return [os.environ["KERAS_BACKEND"]]
    return [b for b in KERAS_BACKENDS if importlib.util.find_spec(b) is not None] or [KERAS_BACKENDS[0]]


def _check_axes(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    for flag, given, valid in (("--dtype", args.dtype, DTYPES), ("--device", args.device, DEVICES),
                               ("--mode", args.mode, MODES), ("--backend", args.backend, KERAS_BACKENDS)):
        for value in given or []:
            if value not in valid:
                raise UsageError(f"unknown {flag} {value!r}; valid: {', '.join(valid)}")


def _exit_code(cells: list[CellResult]) -> int:
    """0 when something ran and nothing failed; cells that cannot run here and known deviations are not failures.
    Non-conformant gradients fail as a non-conformant verdict does, though the verdict is the forward one."""
    ran = [c for c in cells if Verdict(c.verdict).ran]
    if not ran:
        print("nothing ran: every cell asked for is unsupported or not available here", file=sys.stderr)
    failed = any(Verdict(c.verdict).failed or gradients_failed(c.gradients) for c in ran)
    return 0 if ran and not failed else 1


def _examples(args: argparse.Namespace) -> int:
    if args.examples is not None and args.examples < 1:
        raise UsageError(f"--examples must be at least 1, got {args.examples}")
    return args.examples or PROFILES[args.profile]


def cmd_list(args: argparse.Namespace) -> int:
    components = list_components()
    with contextlib.redirect_stdout(sys.stderr):  # what plug-ins print on import must not mix with the listing
        rows = [_describe(r) for r in registry()]
    if args.json:
        json.dump({"components": components, "dtypes": list(DTYPES), "devices": list(DEVICES),
                   "modes": list(MODES), "implementations": rows},
                  sys.stdout, indent=1)
        print()
        return 0
    print(f"spec directory: {find_spec_dir()}")
    label = {id(row): impl_label(row["name"], row["backend"]) for row in rows}
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


def _column(impls: list[Registered] | list[ImplRef]) -> int:
    """Width of the implementation column: Keras names gain their backend, e.g. "[tensorflow]"."""
    return max([24, *(len(r.label) + (12 if r.framework == "keras" else 0) for r in impls)])


def _printer(width: int) -> Callable[[CellResult], None]:
    return lambda cell: print(format_cell(cell, width), flush=True)


#: The --ledger value that drops the built-in ledger.
NO_LEDGER = "none"


def ledgers(given: list[str], probed: list[ImplRef] | None = None) -> list:
    """The known-deviation ledgers (the built-in one, unless `--ledger none`, and each --ledger file), read and
    checked once, before anything runs (a bad entry is a usage error).

    Names are checked against the built-ins, and against `probed` (entry points imported in a worker)."""
    paths = ([] if NO_LEDGER in given else [str(deviations.LEDGER)]) + [p for p in given if p != NO_LEDGER]
    for path in paths:
        if not os.path.exists(path) or os.path.isdir(path):  # /dev/null is a fine empty ledger
            raise UsageError(f"no ledger file {path!r} (--ledger: a TOML file, or {NO_LEDGER!r} to drop the "
                             f"built-in one)")
    ledger = deviations.load_all(paths)
    plugins = ledger.plugins
    components = list_components()
    if os.environ.get("CONFORMANCE_SPEC_DIR"):  # a folder of some specs: entries for the others do not apply
        ledger = [d for d in ledger if d.component in components]
        plugins = [p for p in plugins if p.component in components]
    deviations.check_against_specs(ledger, {s.component: s for s in _specs(None)})
    deviations.check_plugins(plugins, shipped())
    if probed is not None:
        deviations.check_names(ledger, [*shipped(), *probed])
    return ledger


def _ledger_names_others(ledger: list) -> bool:
    """Whether an entry names an implementation that is not built in (an entry point's, to be imported)."""
    known = {(r.component, r.label) for r in shipped()}
    return any((d.component, d.implementation) not in known and not deviations.names_plugin(d.implementation)
               for d in ledger)


def _check_run_args(args: argparse.Namespace) -> Limits:
    """Checks shared by check and run, before anything is imported or started; the time limits."""
    _check_axes(args)
    if args.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")
    for flag, value in (("--timeout", args.timeout), ("--compile-timeout", args.compile_timeout),
                        ("--cell-timeout", args.cell_timeout)):
        if value is not None and not (value > 0 and value != float("inf")):
            raise UsageError(f"{flag} must be a positive number of seconds, got {value}")
    if args.resume and not args.output:
        raise UsageError("--resume needs --output (-o): the journal of an interrupted run is kept beside it")
    return Limits(example=args.timeout, compile=args.compile_timeout, cell=args.cell_timeout)


def _tasks(specs: list[Spec], impls: list[ImplRef], args: argparse.Namespace, ledger: list,
           example: dict[str, Any] | None = None) -> list[CellTask]:
    """Every cell asked for; a Keras implementation's once per Keras backend."""
    n = _examples(args)
    backends = keras_backends(args)
    return [CellTask(impl, spec, dtype, device, mode, max_examples=n, seed=args.seed, example=example,
                     shrink=not args.no_shrink, ledger=tuple(ledger), env=env)
            for spec in specs for impl in impls if impl.component == spec.component
            for env in ([(("KERAS_BACKEND", b),) for b in backends] if impl.framework == "keras" else [()])
            for dtype, device, mode in cells_of(args.dtype, args.device, args.mode)]


def _identity(tasks: list[CellTask], args: argparse.Namespace) -> dict[str, Any]:
    """What makes a run the same run again, for --resume (as JSON gives it back)."""
    first = tasks[0] if tasks else None
    return json.loads(json.dumps({
        "cells": [t.label for t in tasks], "examples": first.max_examples if first else None,
        "seed": args.seed, "example": first.example if first else None,
        "ledger": sorted(repr(d) for d in (first.ledger or ())) if first else [],
        **({"shrink": False} if args.no_shrink else {}),  # absent when shrinking, as journals before the flag
    }))


def _execute(pool: Pool, tasks: list[CellTask], args: argparse.Namespace, width: int) -> tuple[list[CellResult], int | None]:
    """Run the tasks in workers, journaled beside --output; print a line as each cell ends.

    Returns the cells (those that finished, in task order) and, when interrupted, the exit code."""
    done: dict[int, CellResult] = {}
    book = None
    if args.output:
        path = journal.path_for(args.output)
        identity = _identity(tasks, args)
        if args.resume:
            done = journal.read(path, identity)
            print(f"resuming: {len(done)} of {len(tasks)} cells already done ({path})", flush=True)
        book = journal.Journal(path, identity, done)
    total = len(tasks)
    todo: list[int] = []

    def finished(j: int, cell: CellResult) -> None:
        done[todo[j]] = cell
        if book:
            book.append(todo[j], cell)
        head, _, rest = format_cell(cell, width).partition("\n")
        print(f"{head}  [{len(done)}/{total}]" + (f"\n{rest}" if rest else ""), flush=True)

    def status(running: list[str]) -> None:
        print(f"  ... {len(done)}/{total} cells done; running: {'; '.join(running)}", file=sys.stderr, flush=True)

    pool.on_status = status
    interrupted = None
    try:  # from the journal's start: a signal at any moment now leaves a results file
        pending = [i for i in range(len(tasks)) if i not in done]
        previous = schedule.previous_costs(args.output)  # an earlier run's seconds per cell, for the order
        todo += [pending[j] for j in schedule.longest_first([tasks[i] for i in pending], previous)]
        pool.run([tasks[i] for i in todo], on_result=finished)
    except Interrupted as e:
        interrupted = e
    except KeyboardInterrupt as e:  # a signal before the workers' signal handlers were in place
        interrupted = Interrupted(signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT, {})
    cells = [done[i] for i in range(len(tasks)) if i in done]
    if interrupted is None:
        with _deferred_signals() as caught:  # every cell ran: the results are written whatever comes now
            if args.output:
                write_results(args.output, cells)
            if book:
                book.close(remove=True)
        return cells, (128 + caught[0] if caught else None)
    if book:
        book.close()
    missing = [tasks[i].label for i in range(len(tasks)) if i not in done]
    reason = str(interrupted)
    if args.output:
        write_results(args.output, cells, incomplete={"reason": reason, "missing": missing})
    print(f"\n{reason}: {len(cells)} of {total} cells finished"
          + (f", written to {args.output} marked incomplete; the rest: the same command with --resume"
             if args.output else ""), file=sys.stderr, flush=True)
    return cells, interrupted.exit_code


@contextlib.contextmanager
def _deferred_signals() -> Any:
    """SIGINT and SIGTERM wait for the block to end; the list it gives holds the signals that came."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cmd_check(args: argparse.Namespace) -> int:
    limits = _check_run_args(args)
    spec = _specs([args.component])[0]  # a malformed spec is the first error reported, before the ledger
    ledger = ledgers(args.ledger)
    example = parse_example(spec, args.example) if args.example else None
    _examples(args)
    if args.output:
        check_output(args.output)
    with Pool(jobs=args.jobs, limits=limits) as pool:
        probed = entry_point_refs(pool) if _ledger_names_others(ledger) else None
        impl = resolve_ref(pool, spec.component, args.impl, probed)
        ledgers(args.ledger, probed or [])
        tasks = _tasks([spec], [impl], args, ledger, example)
        width = _column([impl])
        print(header(width), flush=True)
        cells, interrupted = _execute(pool, tasks, args, width)
    print(summary_line(cells))
    return interrupted if interrupted is not None else _exit_code(cells)


def cmd_run(args: argparse.Namespace) -> int:
    limits = _check_run_args(args)
    specs = _specs(args.component)
    ledger = ledgers(args.ledger)
    known = sorted({r.group for r in shipped()})
    for f in args.framework or []:
        if f not in known:
            raise UsageError(f"unknown framework {f!r}; known: {', '.join(known)}")
    known_names = {r.name for r in shipped()}
    for name in args.impls or []:
        if name not in known_names:
            raise UsageError(f"unknown implementation {name!r} (--impl); registered: {', '.join(sorted(known_names))}")
    n = _examples(args)
    shard_of = schedule.parse_shard(args.shard) if args.shard else None
    check_output(args.output)
    with Pool(jobs=args.jobs, limits=limits) as pool:
        probed = entry_point_refs(pool)
        ledgers(args.ledger, probed)
        impls = [ImplRef.of(r) for r in shipped()] + probed
        impls = [r for r in impls if r.component in {s.component for s in specs}
                 and (not args.framework or r.group in args.framework)
                 and (not args.impls or r.name in args.impls)]
        tasks = _tasks(specs, impls, args, ledger)
        part = ""
        if shard_of is not None:
            tasks = [tasks[i] for i in schedule.shard(tasks, *shard_of)]
            part = f" (shard {shard_of[0]}/{shard_of[1]})"
        width = _column(impls)
        print(f"{len(specs)} component(s), {len(impls)} implementation(s), {n} examples per cell, "
              f"{len(tasks)} cells{part}, {args.jobs} at a time\n{header(width)}", flush=True)
        cells, interrupted = _execute(pool, tasks, args, width)
    print(f"\n{summary_line(cells)}\nresults: {args.output}")
    return interrupted if interrupted is not None else _exit_code(cells)


def _thresholds(args: argparse.Namespace) -> None:
    if not args.factor > 1:
        raise UsageError(f"--factor must be greater than 1, got {args.factor}")
    if not args.floor >= 0:
        raise UsageError(f"--floor must be at least 0, got {args.floor}")


def cmd_merge(args: argparse.Namespace) -> int:
    check_output(args.output)
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
    return 1 if result.regressions or "current" in result.incomplete else 0


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


def _check_spec_url(url: str | None) -> None:
    """--spec-url goes into every section link of the page: an http(s) address or a relative path, nothing
    that a browser would run or open elsewhere (javascript:, data:, file:)."""
    if url is None:
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return
    if not parts.scheme and not parts.netloc and url.strip() == url and url:
        return
    raise UsageError(f"--spec-url {url!r} is not an http(s) URL or a relative path; "
                     "give e.g. https://github.com/ORG/REPO/blob/main/spec or ../spec")


def cmd_report(args: argparse.Namespace) -> int:
    from conformance.report import write_report  # jinja2 and the report's helpers, only when asked for

    _thresholds(args)
    _check_spec_url(args.spec_url)
    check_output(args.output)
    written = write_report(_results_files(args.files), args.output, baseline=args.baseline, spec_url=args.spec_url,
                           factor=args.factor, floor=args.floor)
    print(f"report: {written.html} ({written.npz} .npz file(s) beside it)")
    for note in written.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_differences(args: argparse.Namespace) -> int:
    from conformance import differences
    from conformance.atomic import atomic_write

    ledger = ledgers(args.ledger)
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
