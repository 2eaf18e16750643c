"""Speed and scale of the suite, measured on the machine it runs on (see benchmarks/README.md).

    python benchmarks/bench.py floor            # harness floor: NumPy checked against itself
    python benchmarks/bench.py jobs             # the same eager cells with -j 1 and -j 2 (and -j N)
    python benchmarks/bench.py keras-jax        # one Keras component, eager, on jax against tensorflow
    python benchmarks/bench.py tox              # `tox` (the quick start) from a fresh clone of this checkout
    python benchmarks/bench.py ci               # `.ci/run` from a fresh clone of this checkout
    python benchmarks/bench.py report           # the report of 5,000 cells: bytes, seconds to write, to open
    python benchmarks/bench.py first-failure    # examples to the first failure of each wrong implementation in tests/
    python benchmarks/bench.py baseline-matrix  # the baseline's eager runs (reports/README.md), wall time each
    python benchmarks/bench.py part-cost --part gradients  # two of them with one kind of check off and on

Each prints what it measured as one JSON line and adds it to benchmarks/figures.jsonl
with the machine's description and the compilation cache used (CONFORMANCE_CACHE_DIR;
point it at an empty folder for a cold-cache figure). Run them one at a time on a quiet machine: they are
wall-clock figures. Nothing here is a test; the figures are recorded, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "benchmarks" / "figures.jsonl"


def machine() -> dict[str, Any]:
    from conformance.engine import machine as cpu

    return {**cpu(), "cpus": len(os.sched_getaffinity(0)), "memory_gib": round(
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def record(name: str, figures: dict[str, Any]) -> None:
    line = {"benchmark": name, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "compilation_cache": os.environ.get("CONFORMANCE_CACHE_DIR", "default"),
            **figures}
    print(json.dumps(line))
    with FIGURES.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def timed(argv: list[str], **kwargs: Any) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return round(seconds, 1), proc


def cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cells"]


def conformance(*args: str) -> list[str]:
    return [sys.executable, "-m", "conformance", *args]


def bench_floor(args: argparse.Namespace) -> None:
    """Examples per second for NumPy against itself, and the share of a cell spent outside the candidate."""
    from conformance.engine import run_cell
    from conformance.spec import find_spec_dir, load_spec
    from conformance.registry import _describe
    from impls.numpy.mha import Implementation

    spent = [0.0]

    class Timed(Implementation):
        def build(self, config, *, dtype, device):
            inner = super().build(config, dtype=dtype, device=device)

            class Instance:
                def load(self, weights):
                    start = time.perf_counter()
                    inner.load(weights)
                    spent[0] += time.perf_counter() - start

                def __call__(self, inputs):
                    start = time.perf_counter()
                    try:
                        return inner(inputs)
                    finally:
                        spent[0] += time.perf_counter() - start

            return Instance()

    spec = load_spec(find_spec_dir() / "mha.md")
    impl = _describe(Timed(), "bench:Timed", "plugin", default_name="Timed")
    run_cell(spec, impl, "float64", "cpu", max_examples=20)  # warm up the imports
    spent[0] = 0.0
    cell = run_cell(spec, impl, "float64", "cpu", max_examples=args.examples)
    record("floor", {"component": "mha", "dtype": "float64", "examples": cell.examples,
                     "seconds": cell.seconds, "examples_per_second": round(cell.examples / cell.seconds, 1),
                     "candidate_seconds": round(spent[0], 3),
                     "share_outside_candidate": round(1 - spent[0] / cell.seconds, 3)})


def bench_jobs(args: argparse.Namespace) -> None:
    """The same eager CPU cells of every framework with -j 1 and -j 2 (and every CPU, if more)."""
    cpus = len(os.sched_getaffinity(0))
    figures: dict[str, Any] = {"cells": "eager, cpu, float64 and float32, numpy + torch + keras on every "
                                        f"installed backend, --examples {args.examples}"}
    verdicts = {}
    for jobs in sorted({1, 2, cpus}):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "results.json"
            seconds, _ = timed(conformance("run", "--mode", "eager", "--device", "cpu", "--dtype", "float64",
                                           "--dtype", "float32", "--examples", str(args.examples), "-j",
                                           str(jobs), "-o", str(out)), cwd=ROOT)
            figures[f"seconds_j{jobs}"] = seconds
            verdicts[jobs] = {(c["component"], c["implementation"], c["backend"], c["dtype"]): c["verdict"]
                              for c in cells(out)}
    figures["speedup_j2"] = round(figures["seconds_j1"] / figures["seconds_j2"], 2)
    if cpus > 2:
        figures[f"speedup_j{cpus}"] = round(figures["seconds_j1"] / figures[f"seconds_j{cpus}"], 2)
    figures["same_verdicts"] = all(v == verdicts[1] for v in verdicts.values())
    record("jobs", figures)


def bench_keras_jax(args: argparse.Namespace) -> None:
    """One Keras component, eager, default profile: the jax backend's time against tensorflow's."""
    figures: dict[str, Any] = {"component": args.component, "dtype": "float32"}
    for backend in ("tensorflow", "jax"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "results.json"
            seconds, _ = timed(conformance("check", args.component, "--impl", "keras", "--backend", backend,
                                           "--dtype", "float32", "--device", "cpu", "--mode", "eager", "-o",
                                           str(out)), cwd=ROOT)
            cell = cells(out)[0]
            figures[f"{backend}_cell_seconds"] = cell["seconds"]
            figures[f"{backend}_wall_seconds"] = seconds
            figures[f"{backend}_verdict"] = cell["verdict"]
    figures["ratio_jax_to_tensorflow"] = round(figures["jax_cell_seconds"] / figures["tensorflow_cell_seconds"], 2)
    record("keras-jax", figures)


def _fresh_clone(tmp: str, at: str | None) -> Path:
    """A fresh clone of HEAD, in a new temporary folder or, with --at, at that path (removed first).

    A fixed path is what a CI runner has (its workspace path does not change
    between runs), and torch's kernel cache keys on the compiler's command
    line, which names the tox environment's folder: only at a fixed path can a
    fresh clone reuse the kernels an earlier run compiled.
    """
    clone = Path(at) if at else Path(tmp) / "clone"
    if at:
        shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    return clone


def _by_framework(found: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Cell and compile seconds per framework (Keras per backend) and mode."""
    out: dict[str, dict[str, float]] = {}
    for c in found:
        key = f"{c['framework']}{'[' + c['backend'] + ']' if c['framework'] == 'keras' and c.get('backend') else ''} {c['mode']}"
        row = out.setdefault(key, {"cells": 0, "seconds": 0.0, "compile_seconds": 0.0})
        row["cells"] += c["verdict"] in ("conformant", "known-deviation", "non-conformant", "error")
        row["seconds"] = round(row["seconds"] + c["seconds"], 1)
        row["compile_seconds"] = round(row["compile_seconds"] + c["compile_seconds"], 1)
    return out


def bench_tox(args: argparse.Namespace) -> None:
    """`tox` from a fresh clone: wall time, and the seconds its cells spent compiling."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = _fresh_clone(tmp, args.at)
        seconds, proc = timed(["tox", *args.tox_args], cwd=clone)
        found = [c for p in sorted((clone / "reports").glob("results-*.json")) for c in cells(p)]
        record("tox", {"command": " ".join(["tox", *args.tox_args]), "clone": args.at or "temporary folder",
                       "seconds": seconds, "exit": proc.returncode, "cells": len(found),
                       "cell_seconds": round(sum(c["seconds"] for c in found), 1),
                       "compile_seconds": round(sum(c["compile_seconds"] for c in found), 1),
                       "by_framework": _by_framework(found),
                       "verdicts": {v: sum(c["verdict"] == v for c in found)
                                    for v in sorted({c["verdict"] for c in found})}})


def bench_ci(args: argparse.Namespace) -> None:
    """`.ci/run` from a fresh clone, as CI runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = _fresh_clone(tmp, args.at)
        seconds, proc = timed(["bash", ".ci/run"], cwd=clone, env={**os.environ, "CI": "true"})
        tail = [line for line in proc.stdout.splitlines() if " passed" in line][-1:]
        record("ci", {"seconds": seconds, "exit": proc.returncode, "clone": args.at or "temporary folder",
                      "pytest": tail[0] if tail else None})


def _open_seconds(html: Path, loads: int) -> list[float]:
    """Seconds headless Chromium takes to open the page (load event, then layout), once per load."""
    from playwright.sync_api import sync_playwright

    found = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(loads):
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                start = time.perf_counter()
                page.goto(html.as_uri(), wait_until="load", timeout=120_000)
                page.evaluate("document.body.getBoundingClientRect().height")  # layout done
                found.append(round(time.perf_counter() - start, 2))
                page.close()
        finally:
            browser.close()
    return found


def bench_report(args: argparse.Namespace) -> None:
    """`conformance report` on a results file of --cells cells made by tests/results_sample.py (real cells
    copied, with varied implementations, dtypes and verdicts), or on --results: the page's size, the
    seconds the command takes, and the median seconds Chromium takes to open the page."""
    sys.path.insert(0, str(ROOT / "tests"))
    from results_sample import many
    from conformance.results import write_results

    with tempfile.TemporaryDirectory() as tmp:
        results = Path(args.results) if args.results else write_results(Path(tmp) / "results.json", many(args.cells))
        html = Path(tmp) / "site" / "index.html"
        seconds, _ = timed(conformance("report", str(results), "-o", str(html)), cwd=ROOT)
        opened = _open_seconds(html, args.loads)
        record("report", {"results": args.results or f"tests/results_sample.py many({args.cells})",
                          "cells": len(cells(results)), "results_bytes": results.stat().st_size,
                          "bytes": html.stat().st_size, "npz_files": len(list(html.parent.glob("npz/*.npz"))),
                          "write_seconds": seconds, "open_seconds": sorted(opened)[len(opened) // 2],
                          "open_seconds_each": opened})


def bench_first_failure(args: argparse.Namespace) -> None:
    """How soon the search finds each deliberately wrong implementation of tests/wrong_*.py (those that say which
    section they break): `first_failure` in float32, eager, at the default profile's examples, without shrinking,
    for each seed; the median over all of them is the figure."""
    import importlib.util
    import statistics

    sys.path.insert(0, str(ROOT / "tests"))  # the wrong implementations import their shared base from there
    from conformance.cli import DEFAULT_PROFILE, PROFILES
    from conformance.components import COMPONENTS
    from conformance.engine import run_cell
    from conformance.registry import resolve
    from conformance.spec import load_spec

    found: dict[str, list[int | None]] = {}
    for c in [] if args.changed else COMPONENTS:
        path = ROOT / "tests" / f"wrong_{c.id}.py"
        loader = importlib.util.spec_from_file_location(f"wrong_{c.id}", path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        spec = load_spec(ROOT / "spec" / f"{c.id}.md")
        for name, cls in vars(module).items():
            if isinstance(cls, type) and cls.__module__ == module.__name__ and getattr(cls, "breaks", None) is not None:
                found[f"{c.id}:{name}"] = [run_cell(spec, resolve(c.id, f"{path}:{name}"), "float32", "cpu",
                                                    max_examples=PROFILES[DEFAULT_PROFILE], seed=seed,
                                                    shrink=False).first_failure for seed in range(args.seeds)]
    if args.changed:  # the one-constant changes of tests/changed_constants.py instead
        from changed_constants import FAMILIES

        path = ROOT / "tests" / "changed_constants.py"
        found = {f"{c}:{cls.__name__}": [run_cell(load_spec(ROOT / "spec" / f"{c}.md"), resolve(c, f"{path}:{cls.__name__}"),
                                                  "float32", "cpu", max_examples=PROFILES[DEFAULT_PROFILE], seed=seed,
                                                  shrink=False).first_failure for seed in range(args.seeds)]
                 for c, family in FAMILIES.items() for cls in family}
    every = [n for runs in found.values() for n in runs if n is not None]
    record("first-failure" + ("-changed-constants" if args.changed else ""), {"profile": DEFAULT_PROFILE, "seeds": args.seeds, "mistakes": len(found),
                             "median_first_failure": statistics.median(every),
                             "missed": sum(n is None for runs in found.values() for n in runs),
                             "per_mistake": found})


def bench_headroom(args: argparse.Namespace) -> None:
    """Each budget's headroom: the largest error / budget of our NumPy and PyTorch implementations per component,
    output and dtype, over `--examples` examples a cell, eager on the CPU (or of every conformant cell of the
    `--results` files given); prints the Markdown table spec/README.md, "Headroom", shows."""
    from conformance.components import COMPONENTS

    if args.results:
        files = [Path(r) for r in args.results]
    else:
        folder = Path(tempfile.mkdtemp())
        files = []
        for c in COMPONENTS:
            for impl in ("numpy", "torch"):
                files.append(folder / f"{c.id}-{impl}.json")
                subprocess.run(conformance("check", c.id, "--impl", impl, "--device", "cpu", "--mode", "eager",
                                           "--examples", str(args.examples), "--no-shrink", "-o", str(files[-1])),
                               check=False, stdout=subprocess.DEVNULL)
    table: dict[tuple[str, str, str], tuple[float, str]] = {}
    for cell in (c for f in files for c in cells(f)):
        if cell["verdict"] != "conformant":  # a known deviation's ratio may include elements its entry covers
            continue
        for output, ratio in (cell.get("output_ratio") or {}).items():
            key = (cell["component"], output, cell["dtype"])
            if ratio >= table.get(key, (-1.0, ""))[0]:
                table[key] = (ratio, cell["implementation"])
    dtypes = ("float64", "float32", "float16", "bfloat16")
    rows = sorted({(c, o) for c, o, _ in table})
    print("| component | output | " + " | ".join(dtypes) + " |")
    print("|---|---|" + "---|" * len(dtypes))
    for c, o in rows:
        shown = [f"{table[(c, o, d)][0]:.3g} ({table[(c, o, d)][1]})" if (c, o, d) in table else "-" for d in dtypes]
        print(f"| {c} | `{o}` | " + " | ".join(shown) + " |")
    gradients: dict[tuple[str, str], tuple[float, str, str, int]] = {}  # (component, dtype) -> the worst
    for cell in (c for f in files for c in cells(f)):
        record_ = cell.get("gradients") or {}
        if record_.get("verdict") != "conformant":
            continue
        key = (cell["component"], cell["dtype"])
        compared = gradients.get(key, (0.0, "", "", 0))[3] + record_["examples"]
        for name, ratio in record_["ratio"].items():
            if ratio >= gradients.get(key, (-1.0, "", "", 0))[0]:
                gradients[key] = (ratio, name, cell["implementation"], compared)
        if key in gradients:
            gradients[key] = (*gradients[key][:3], compared)
    print("\nGradients: the largest error / budget (gradient, implementation; examples compared)\n")
    print("| component | " + " | ".join(dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    for c in sorted({c for c, _ in gradients}):
        shown = [f"{gradients[(c, d)][0]:.3g} (`{gradients[(c, d)][1]}`, {gradients[(c, d)][2]}; "
                 f"{gradients[(c, d)][3]})" if (c, d) in gradients else "-" for d in dtypes]
        print(f"| {c} | " + " | ".join(shown) + " |")
    record("headroom", {"examples": None if args.results else args.examples, "results": [str(f) for f in files],
                        "largest_ratio": {f"{c}/{o}/{d}": v[0] for (c, o, d), v in table.items()},
                        "largest_gradient_ratio": {f"{c}/{d}": v[0] for (c, d), v in gradients.items()}})


#: The commands that make the committed baseline (reports/README.md), as (KERAS_BACKEND, conformance arguments).
BASELINE_RUNS = [(None, ["--framework", "numpy", "--framework", "torch"])] + [
    (backend, ["--framework", "keras"]) for backend in ("torch", "tensorflow", "jax")]


def bench_baseline_matrix(args: argparse.Namespace) -> None:
    """The baseline's four eager runs (dev profile, -j 2), each timed, with the checkout at `--tree` (another
    commit's tree, to compare before and after in one sitting) or this one; results go to a temporary folder."""
    tree = Path(args.tree).resolve() if args.tree else ROOT
    seconds, totals = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for backend, framework in BASELINE_RUNS:
            name = "numpy-torch" if backend is None else f"keras-{backend}"
            env = {**os.environ, "PYTHONPATH": str(tree)}
            if backend:
                env["KERAS_BACKEND"] = backend
            seconds[name], _ = timed([sys.executable, "-m", "conformance", "run", *framework, "--device", "cpu",
                                      "--mode", "eager", "--profile", "dev", "-o", f"{out}/{name}.json"],
                                     cwd=tree, env=env)
            done = cells(Path(out) / f"{name}.json")
            totals[name] = {"cells": len(done), "examples": sum(c["examples"] for c in done),
                            "property_examples": sum(r.get("examples", 0) for c in done
                                                     for r in (c.get("properties") or {}).values())}
    record("baseline-matrix", {"tree": str(tree), "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
                               "runs": totals})


#: Put first on PYTHONPATH (as sitecustomize.py), each turns one kind of check off in every process of a run,
#: workers included: the gradients (no dtype calibrated), the properties (no example is ever due one).
CHECKS_OFF = {"gradients": "from conformance import gradients\ngradients.DTYPES = ()\n",
              "properties": "from conformance import properties\nproperties.EVERY = 10**9\n"}


def bench_part_cost(args: argparse.Namespace) -> None:
    """The baseline's numpy-torch and keras-torch runs (dev profile) with one kind of check (`--part`) off and
    on, alternately, `--repeats` times each: wall seconds, the cells' own seconds, and the checks made."""
    figures: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as out:
        off = Path(out) / "off"
        off.mkdir()
        (off / "sitecustomize.py").write_text(CHECKS_OFF[args.part])
        for repeat in range(args.repeats):
            for backend, framework in BASELINE_RUNS[:2]:
                name = "numpy-torch" if backend is None else f"keras-{backend}"
                for state in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
                    path = os.pathsep.join(([str(off)] if state == "off" else []) + [str(ROOT)])
                    env = {**os.environ, "PYTHONPATH": path, **({"KERAS_BACKEND": backend} if backend else {})}
                    result = Path(out) / f"{name}-{state}.json"
                    wall, _ = timed(conformance("run", *framework, "--device", "cpu", "--mode", "eager",
                                                "--profile", "dev", "-o", str(result)), cwd=ROOT, env=env)
                    done = cells(result)
                    entry = figures.setdefault(f"{name} {args.part} {state}", {"wall": [], "cells": [], "checks": []})
                    entry["wall"].append(wall)
                    entry["cells"].append(round(sum(c["seconds"] or 0 for c in done), 1))
                    entry["checks"].append(sum((c.get("gradients") or {}).get("examples", 0) for c in done)
                                           if args.part == "gradients" else
                                           sum(r.get("examples", 0) for c in done
                                               for r in (c.get("properties") or {}).values()))
    record("part-cost", {"part": args.part, "runs": figures})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="benchmark", required=True)
    floor = sub.add_parser("floor")
    floor.add_argument("--examples", type=int, default=1000)
    floor.set_defaults(func=bench_floor)
    jobs = sub.add_parser("jobs")
    jobs.add_argument("--examples", type=int, default=25)
    jobs.set_defaults(func=bench_jobs)
    kj = sub.add_parser("keras-jax")
    kj.add_argument("--component", default="mha")
    kj.set_defaults(func=bench_keras_jax)
    tox = sub.add_parser("tox")
    tox.add_argument("--at", help="clone at this fixed path (removed first) rather than a temporary folder")
    tox.add_argument("tox_args", nargs="*", help="after --: arguments for tox")
    tox.set_defaults(func=bench_tox)
    ci = sub.add_parser("ci")
    ci.add_argument("--at", help="clone at this fixed path (removed first) rather than a temporary folder")
    ci.set_defaults(func=bench_ci)
    cost = sub.add_parser("part-cost")
    cost.add_argument("--part", choices=sorted(CHECKS_OFF), required=True)
    cost.add_argument("--repeats", type=int, default=2)
    cost.set_defaults(func=bench_part_cost)
    report = sub.add_parser("report")
    report.add_argument("--cells", type=int, default=5000)
    report.add_argument("--results", help="a results file to report on instead of made-up cells")
    report.add_argument("--loads", type=int, default=5, help="times Chromium opens the page (the median is recorded)")
    report.set_defaults(func=bench_report)
    first = sub.add_parser("first-failure")
    first.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 for each wrong implementation")
    first.add_argument("--changed", action="store_true",
                       help="the one-constant changes of tests/changed_constants.py instead of tests/wrong_*.py")
    first.set_defaults(func=bench_first_failure)
    headroom = sub.add_parser("headroom")
    headroom.add_argument("--examples", type=int, default=1000)
    headroom.add_argument("--results", nargs="*", help="results files to tabulate instead of a new run")
    headroom.set_defaults(func=bench_headroom)
    matrix = sub.add_parser("baseline-matrix")
    matrix.add_argument("--tree", help="a checkout of another commit to time instead of this one "
                                       "(e.g. made with `git worktree add`)")
    matrix.set_defaults(func=bench_baseline_matrix)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
