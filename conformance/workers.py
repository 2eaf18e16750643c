"""Cells in worker processes: whatever an implementation does, the run goes on and is recorded.

The `conformance` command (and `conformance.check`) never runs an
implementation in its own process. It hands cells to worker processes,
started with the spawn method, and watches them:

- each worker announces every example as it starts (`engine.Event`), so an
  example or a cell that takes longer than its limit (`Limits`) is stopped,
  the worker killed and replaced, and the cell ends as `error` naming the
  example it was on;
- a worker that dies (a signal, `os._exit`, `sys.exit`, the kernel's OOM
  killer) ends its cell as `error` saying how it died and on which example;
- SIGINT and SIGTERM stop every worker and raise `Interrupted`, which carries
  the cells that finished; a second signal ends the process at once.

A worker serves one group of cells (one framework and environment), so a
framework is imported once per worker, not once per cell. Plug-ins are also
imported for the first time in a worker (`Probe`), so one that cannot be
imported, or crashes on import, is reported before any cell runs. Workers
write nothing to the parent's standard output: their own (an
implementation's prints) goes to standard error, and results come back over
a pipe.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Mapping, Sequence

import cloudpickle

from conformance.deviations import Deviation
from conformance.engine import (CellResult, Event, keep_hypothesis_files_out_of_the_working_folder, machine,
                                repro_command, run_cell)
from conformance.spec import Spec
from conformance.registry import (ENTRY_POINT_GROUP, Registered, _describe, shipped, by_name, entry_point_targets,
                                  load_target)
from conformance.vocabulary import ENTRY_POINT, PLUGIN, Slot, UsageError, Verdict

#: Seconds without news from the workers after which the running cells are reported (`on_status`).
STATUS_EVERY = 60.0


@dataclass(frozen=True)
class Limits:
    """How long a worker may go without a result before it is stopped, in seconds.

    `example`: one example, from its start to the next (`--timeout`). `compile`:
    loading an implementation (importing it and its framework), and on top of
    `example` for an example that is the first call on a new shape in the
    compiled mode (`--compile-timeout`). `cell`: a whole cell (`--cell-timeout`);
    None means `default_cell_limit` of the cell's examples.
    """

    example: float = 300.0
    compile: float = 900.0
    cell: float | None = None

    def for_cell(self, max_examples: int) -> float:
        return self.cell if self.cell is not None else default_cell_limit(max_examples)


def default_cell_limit(max_examples: int) -> float:
    """A cell's limit unless one is given: an hour, plus 10 s per example asked for."""
    return 3600.0 + 10.0 * max_examples


@dataclass(frozen=True)
class ImplRef:
    """How a worker finds an implementation without the parent importing it.

    `source` is SHIPPED, ENTRY_POINT, PLUGIN (a module:attr or file.py:attr
    target) or "object" (an object given to `conformance.check`, sent pickled in
    `payload`; `module_file` is its class's file, for a module that the worker
    cannot import by name, such as a test module pytest imported by path).
    """

    component: str
    name: str
    framework: str
    target: str
    source: str
    payload: bytes | None = None
    module_file: str | None = None
    requires: tuple[str, ...] = ()  # modules beyond its framework's (Registered.requires)

    @property
    def group(self) -> str:
        """What `run --framework` selects it by: the library it adapts (its first `requires`), else its
        framework."""
        return self.requires[0] if self.requires else self.framework

    @property
    def label(self) -> str:
        """How results name it: a plug-in by its target, so that the name alone finds it again."""
        return self.target if self.source in (PLUGIN, "object") else self.name

    @classmethod
    def of(cls, r: Registered) -> "ImplRef":
        return cls(r.component, r.name, r.framework, r.target, r.source, requires=r.requires)

    @classmethod
    def of_object(cls, obj: Any) -> "ImplRef":
        """An implementation object, to be rebuilt in the worker from its pickle."""
        kind = type(obj)
        target = f"{kind.__module__}:{kind.__qualname__}"
        r = _describe(obj, target, PLUGIN, default_name=kind.__name__)
        try:  # cloudpickle: a class defined inside a function (as tests often do) travels by value
            payload = cloudpickle.dumps(obj)
        except Exception as e:
            raise UsageError(f"{target} cannot be sent to a worker process: pickling it failed "
                             f"({type(e).__name__}: {e})") from None
        module = sys.modules.get(kind.__module__)
        return cls(r.component, r.name, r.framework, target, "object", payload, getattr(module, "__file__", None))

    def registered(self) -> Registered:
        """In the worker: the implementation, loaded lazily as built-ins and plug-ins are."""
        r = Registered(self.component, self.name, self.framework, self.target,
                       PLUGIN if self.source == "object" else self.source, requires=self.requires)
        if self.payload is not None:
            r._obj = _unpickle(self.payload, self.target.rpartition(":")[0], self.module_file)
        return r


def _unpickle(payload: bytes, module_name: str, module_file: str | None) -> Any:
    """The object back; its class's module loaded from its file when it cannot be imported by name here
    (a test module that pytest imported by path, as `tests.test_x`, with no package `tests` to import)."""
    try:
        return pickle.loads(payload)
    except (ModuleNotFoundError, AttributeError):
        if not module_file:
            raise
    import importlib.util
    import types

    parts = module_name.split(".")
    for n in range(1, len(parts)):  # stand-ins for the packages above it, so that the name resolves
        sys.modules.setdefault(".".join(parts[:n]), types.ModuleType(".".join(parts[:n])))
    spec = importlib.util.spec_from_file_location(module_name, module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if len(parts) > 1:
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
    return pickle.loads(payload)


@dataclass(frozen=True)
class CellTask:
    """One cell for a worker: everything `engine.run_cell` takes, in a form that pickles."""

    impl: ImplRef
    spec: Spec
    dtype: str
    device: str
    mode: str
    max_examples: int = 100
    seed: int = 0
    example: Mapping[str, Any] | None = None
    shrink: bool = True
    ledger: tuple[Deviation, ...] | None = None  # None: the repository's spec/deviations.toml
    env: tuple[tuple[str, str], ...] = ()  # environment variables its worker needs, e.g. KERAS_BACKEND

    @property
    def group(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Cells of one group can share a worker (and its imports)."""
        return self.impl.framework, self.env

    @property
    def backend(self) -> str | None:
        """The Keras backend its worker runs, as results record it (None for other frameworks)."""
        return dict(self.env).get("KERAS_BACKEND") if self.impl.framework == "keras" else None

    @property
    def label(self) -> str:
        """The cell's slot as one line, as results files name it: `mha keras[jax] cpu eager float32`."""
        return Slot(self.spec.component, self.impl.label, self.backend, self.device, self.mode, self.dtype).label


@dataclass(frozen=True)
class Probe:
    """Import a plug-in (a target, or an entry point's value) in a worker and describe it."""

    target: str
    source: str  # PLUGIN or ENTRY_POINT
    default_name: str


class Interrupted(Exception):
    """SIGINT or SIGTERM during a run: the workers are stopped; `done` holds the cells that finished."""

    def __init__(self, signum: int, done: Mapping[int, CellResult]):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.done = signum, dict(done)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# --- the worker process ------------------------------------------------------------------------

def _serve(conn: Connection, parent: int, env: Mapping[str, str]) -> None:
    """A worker's main loop: take a task, run it, send the result, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    os.setpgrp()  # so that the parent can stop the worker together with any processes it starts
    _die_with(parent)
    os.dup2(2, 1)  # an implementation's prints go to stderr: results travel over `conn` only
    os.environ.update(env)
    keep_hypothesis_files_out_of_the_working_folder()
    loaded: dict[ImplRef, Registered] = {}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            if isinstance(task, Probe):
                conn.send(("result", _probe(task)))
            else:
                conn.send(("result", _plain(_run(conn, task, loaded).to_json())))
        except SystemExit as e:  # plug-in code called sys.exit: say so, and end as it asked
            conn.send(("exit", f"the implementation called sys.exit({e.code!r})"))
            conn.close()
            os._exit(e.code if isinstance(e.code, int) else 1)


def _run(conn: Connection, task: CellTask, loaded: dict[ImplRef, Registered]) -> CellResult:
    impl = loaded.setdefault(task.impl, task.impl.registered())
    try:
        impl.load()  # the imports, timed apart from the examples; a failure is the cell's to report
    except Exception:
        pass
    conn.send(("loaded", None))
    progress = lambda event, example: conn.send(("event", event.value, example))  # noqa: E731
    return run_cell(task.spec, impl, task.dtype, task.device, task.mode, max_examples=task.max_examples,
                    seed=task.seed, example=task.example, shrink=task.shrink,
                    ledger=None if task.ledger is None else list(task.ledger), progress=progress)


def _plain(data: Any) -> Any:
    """Data as JSON has it: nothing the parent would need a framework to unpickle (torch's version
    string is a torch class), nothing a results file cannot hold."""
    return json.loads(json.dumps(data, allow_nan=True, default=str))


def _probe(probe: Probe) -> dict[str, str]:
    """{"component", "name", "framework"} of a plug-in, or {"error": one line} when it cannot be loaded."""
    try:
        r = _describe(load_target(probe.target), probe.target, probe.source, default_name=probe.default_name)
    except UsageError as e:
        return {"error": str(e)}
    return {"component": r.component, "name": r.name, "framework": r.framework}


def _die_with(parent: int) -> None:
    """End this worker when the parent process goes away, however it went."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except Exception:
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# --- the parent's side -------------------------------------------------------------------------

@dataclass
class _Worker:
    process: Any
    conn: Connection
    group: Any
    index: int | None = None  # the job it is running
    job: Any = None
    started: float = 0.0
    deadline: float = 0.0
    cell_deadline: float = float("inf")
    limit: float = 0.0  # the limit `deadline` stands for, for the message
    example: dict[str, Any] | None = None  # what it is running: the last example announced
    examples: int = 0
    exit_message: str | None = None
    loaded: bool = False
    whole_cell: bool = False  # stopped for the cell's limit, not the example's: no example to blame


def _how_it_died(w: _Worker) -> str:
    code = w.process.exitcode
    if w.exit_message:
        return w.exit_message
    if code is None:
        return "the worker stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        extra = " (as the kernel's out-of-memory killer does)" if -code == signal.SIGKILL else ""
        return f"the worker was killed by signal {name}{extra}"
    return f"the worker exited with status {code} (os._exit or sys.exit in the implementation?)"


#: The variables that cap a framework's threads within one process (OpenMP, BLAS, TensorFlow, XLA on the CPU).
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def default_jobs() -> int:
    """The CPUs this process may use: how many cells run at once unless told otherwise."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_limits(jobs: int) -> dict[str, str]:
    """With several workers at once, each gets its share of the CPUs, so that they do not fight over them;
    variables the user has set are left alone."""
    if jobs <= 1:
        return {}
    share = str(max(1, default_jobs() // jobs))
    limits = {name: share for name in _THREAD_VARIABLES if name not in os.environ}
    if "TF_NUM_INTEROP_THREADS" not in os.environ:
        limits["TF_NUM_INTEROP_THREADS"] = "1"
    if share == "1" and "XLA_FLAGS" not in os.environ:
        limits["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false"
    return limits


def where(example: Mapping[str, Any] | None, loaded: bool = True) -> str:
    """Which example a worker was on, for a message."""
    if example is None:
        return "on its first example" if loaded else "while loading the implementation"
    if "worked_example" in example:
        return f"on the spec's worked example {example['worked_example']!r}"
    return f"on example {json.dumps(dict(example), separators=(',', ':'))}"


class Pool:
    """Up to `jobs` worker processes, each running cells of one group (`CellTask.group`) in turn."""

    def __init__(self, jobs: int = 1, limits: Limits = Limits(),
                 on_status: Callable[[list[str]], None] | None = None):
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        self.jobs, self.limits, self.on_status = jobs, limits, on_status
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._signal: int | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- starting and stopping workers

    def _spawn(self, group: Any, env: Mapping[str, str]) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        env = {**thread_limits(self.jobs), **env}
        process = self._context.Process(target=_serve, args=(child_conn, os.getpid(), env),
                                        name=f"conformance-worker-{group[0]}")
        process.start()
        child_conn.close()
        w = _Worker(process, parent_conn, group)
        self._workers.append(w)
        return w

    def _kill(self, w: _Worker) -> None:
        for kill in (lambda: os.killpg(w.process.pid, signal.SIGKILL), w.process.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass
        w.process.join(5)
        self._forget(w)

    def _stop(self, w: _Worker) -> None:
        try:
            w.conn.send(None)
        except OSError:
            pass
        w.process.join(10)
        if w.process.exitcode is None:
            self._kill(w)
        self._forget(w)

    def _forget(self, w: _Worker) -> None:
        w.conn.close()
        if w in self._workers:
            self._workers.remove(w)

    def close(self) -> None:
        for w in list(self._workers):
            self._kill(w) if w.job is not None else self._stop(w)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- signals

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the run (the loop raises Interrupted); a second one ends it at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:  # the second: no more cleaning up
                for w in list(self._workers):
                    try:
                        os.killpg(w.process.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    try:
                        w.process.kill()
                    except Exception:
                        pass
                os._exit(128 + signum)
            self._signal = signum
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -- running jobs

    def probe(self, probes: Sequence[Probe]) -> list[dict[str, str]]:
        """Import and describe plug-ins in one worker; {"error": ...} for each that cannot be loaded."""
        found: dict[int, dict[str, str]] = {}

        def failed(index: int, w: _Worker, what: str) -> None:
            found[index] = {"error": f"cannot load {probes[index].target}: {what} while importing it"}

        self._loop(list(probes), lambda i: ("probe", ()), found.__setitem__, failed, probing=True)
        return [found[i] for i in range(len(probes))]

    def run(self, tasks: Sequence[CellTask], on_result: Callable[[int, CellResult], None] | None = None,
            ) -> list[CellResult]:
        """Every task's cell, in the order given; `on_result(index, cell)` as each one finishes.

        Raises Interrupted on SIGINT or SIGTERM, after stopping the workers."""
        done: dict[int, CellResult] = {}

        def finished(index: int, data: Any) -> None:
            done[index] = CellResult.from_json(data) if isinstance(data, dict) else data
            if on_result:
                on_result(index, done[index])

        def failed(index: int, w: _Worker, what: str) -> None:
            finished(index, self._error_cell(tasks[index], w, what))

        self._loop(list(tasks), lambda i: tasks[i].group, finished, failed, done=done)
        return [done[i] for i in range(len(tasks))]

    def _error_cell(self, task: CellTask, w: _Worker, what: str) -> CellResult:
        cell = CellResult(task.spec.component, task.impl.label, task.impl.framework, task.backend,
                          task.device, task.dtype, task.mode)
        drawn = w.example if w.example and "worked_example" not in w.example and not w.whole_cell else None
        cell.verdict, cell.reason = Verdict.ERROR, f"{what} {where(w.example, w.loaded)}"
        cell.examples = max(0, w.examples - 1)
        cell.counterexample = drawn
        cell.repro = repro_command(task.spec.component, task.impl.label, task.dtype, task.device, drawn, task.mode)
        cell.seconds = round(time.monotonic() - w.started, 3)
        cell.environment = machine()
        return cell

    def _loop(self, jobs: list[Any], group_of: Callable[[int], Any], finished: Callable[[int, Any], None],
              failed: Callable[[int, _Worker, str], None], probing: bool = False,
              done: Mapping[int, Any] | None = None) -> None:
        pending = deque(range(len(jobs)))
        last_news = time.monotonic()
        with self._signals():
            while pending or any(w.job is not None for w in self._workers):
                if self._signal is not None:
                    signum = self._signal
                    for w in list(self._workers):
                        self._kill(w)
                    self._signal = None
                    raise Interrupted(signum, done or {})
                self._assign(jobs, pending, group_of, failed, probing)
                busy = [w for w in self._workers if w.job is not None]
                now = time.monotonic()
                timeout = max(0.0, min([STATUS_EVERY - (now - last_news),
                                        *(min(w.deadline, w.cell_deadline) - now for w in busy)]))
                ready = wait([self._wake_r, *(w.conn for w in busy), *(w.process.sentinel for w in busy)],
                             timeout)
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
                for w in busy:
                    if self._receive(w, finished, failed):
                        last_news = time.monotonic()
                now = time.monotonic()
                for w in [w for w in self._workers if w.job is not None]:
                    if now > w.cell_deadline:
                        w.whole_cell = True
                        self._timed_out(w, failed, f"no result within {self.limits.for_cell(w.job.max_examples):g} s "
                                                   f"(the cell's limit, --cell-timeout); it was")
                    elif now > w.deadline:
                        self._timed_out(w, failed, f"no result within {w.limit:g} s")
                if now - last_news >= STATUS_EVERY and self.on_status:
                    self.on_status([f"{jobs[w.index].label if not probing else jobs[w.index].target} for "
                                    f"{now - w.started:.0f} s ({w.examples} examples)"
                                    for w in self._workers if w.job is not None])
                    last_news = now

    def _assign(self, jobs: list[Any], pending: deque, group_of: Callable[[int], Any],
                failed: Callable[[int, _Worker, str], None], probing: bool) -> None:
        for w in [w for w in self._workers if w.job is None]:
            index = next((i for i in pending if group_of(i) == w.group), None)
            if index is None:
                self._stop(w)  # its group is done: make room for another
            else:
                pending.remove(index)
                self._start(w, index, jobs[index], failed, probing)
        while pending and len(self._workers) < self.jobs:
            # a group no worker serves yet, costliest first: each framework is imported by as few workers as
            # can keep every slot busy; a second worker joins a group only when no other group waits
            served = {w.group for w in self._workers}
            index = next((i for i in pending if group_of(i) not in served), pending[0])
            pending.remove(index)
            group = group_of(index)
            w = self._spawn(group, dict(group[1]) if not probing else {})
            self._start(w, index, jobs[index], failed, probing)

    def _start(self, w: _Worker, index: int, job: Any, failed: Callable[[int, _Worker, str], None],
               probing: bool) -> None:
        now = time.monotonic()
        w.index, w.job, w.started, w.example, w.examples, w.loaded = index, job, now, None, 0, probing
        w.deadline, w.limit = now + self.limits.compile, self.limits.compile
        w.cell_deadline = float("inf") if probing else now + self.limits.for_cell(job.max_examples)
        try:
            w.conn.send(job)
        except OSError:
            self._died(w, failed)

    def _receive(self, w: _Worker, finished: Callable[[int, Any], None],
                 failed: Callable[[int, _Worker, str], None]) -> bool:
        """Take what a worker sent; True when anything came. A worker that died ends its job as failed."""
        news = False
        try:
            while w.job is not None and w.conn.poll():
                message = w.conn.recv()
                news = True
                kind = message[0]
                now = time.monotonic()
                if kind == "result":
                    index, w.index, w.job = w.index, None, None
                    finished(index, message[1])
                elif kind == "loaded":  # the cell's limit counts from here: imports have their own
                    w.loaded = True
                    if w.cell_deadline != float("inf"):
                        w.cell_deadline = now + self.limits.for_cell(w.job.max_examples)
                        w.started = now
                elif kind == "event":
                    w.example, w.examples = message[2], w.examples + 1
                    w.limit = self.limits.example + (self.limits.compile if message[1] == Event.COMPILE.value
                                                     else 0.0)
                    w.deadline = now + w.limit
                elif kind == "exit":
                    w.exit_message = message[1]
        except (EOFError, OSError):
            pass
        if w.job is not None and w.process.exitcode is not None:
            self._died(w, failed)
            news = True
        return news

    def _died(self, w: _Worker, failed: Callable[[int, _Worker, str], None]) -> None:
        w.process.join(5)
        index = w.index
        self._kill(w)
        failed(index, w, _how_it_died(w))

    def _timed_out(self, w: _Worker, failed: Callable[[int, _Worker, str], None], what: str) -> None:
        index = w.index
        self._kill(w)  # and a fresh worker takes the next cell
        failed(index, w, what)


# --- finding implementations without importing them here ---------------------------------------

def entry_point_refs(pool: Pool) -> list[ImplRef]:
    """The implementations installed under the entry-point group, imported in a worker to learn what they are.

    One that cannot be imported or constructed is a UsageError: its file, line and error."""
    found = entry_point_targets()
    if not found:
        return []
    described = pool.probe([Probe(value, ENTRY_POINT, name) for name, value in found])
    refs = []
    for (name, value), d in zip(found, described):
        if "error" in d:
            raise UsageError(f"entry point {name!r} ({ENTRY_POINT_GROUP}): {d['error']}")
        refs.append(ImplRef(d["component"], d["name"], d["framework"], value, ENTRY_POINT))
    return refs


def resolve_ref(pool: Pool, component: str, name_or_target: str, probed: list[ImplRef] | None = None) -> ImplRef:
    """A registered implementation by name, or a plug-in given as module:attr / file.py:attr (imported in a
    worker); `probed` are the entry points, as `entry_point_refs` found them: when not given, they are
    imported only for a name that is not built in."""
    if ":" in name_or_target:
        attr = name_or_target.rpartition(":")[2]
        d = pool.probe([Probe(name_or_target, PLUGIN, attr)])[0]
        if "error" in d:
            raise UsageError(d["error"])
        if d["component"] != component:
            raise UsageError(f"{name_or_target!r} implements {d['component']!r}, not {component!r}")
        return ImplRef(component, d["name"], d["framework"], name_or_target, PLUGIN)
    known = [ImplRef.of(r) for r in shipped()]
    if probed is None:
        probed = [] if any(r.name == name_or_target and r.component == component for r in known) \
            else entry_point_refs(pool)
    return by_name(component, name_or_target, known + probed)
