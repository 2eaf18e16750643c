"""Cells in worker processes: plug-ins that raise, hang, crash or exit; interruption and --resume.

Every command here runs as a user runs it, in a subprocess (`python -m conformance`),
since what is under test is what happens to that process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conformance import check
from impls.numpy.mha import Implementation as NumpyAttention

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FAULTY = TESTS / "faulty.py"
#: How each fault must show in the faulty cell: (verdict, words in the reason).
FAULTS = {
    "raise": ("non-conformant", "raised RuntimeError: the plug-in raised on purpose"),  # an answer, not a crash
    "hang": ("error", "no result within 3 s on example {"),
    "segfault": ("error", "killed by signal SIGSEGV on example {"),
    "abort": ("error", "killed by signal SIGABRT on example {"),
    "os_exit": ("error", "exited with status 3"),
    "sys_exit": ("error", "the implementation called sys.exit(0) on example {"),
    "kill": ("error", "killed by signal SIGKILL"),
}
CLASSES = {"raise": "Raises", "hang": "Hangs", "segfault": "Segfaults", "abort": "Aborts", "os_exit": "OsExit",
           "sys_exit": "SysExit", "kill": "Killed"}
FAST = ["--device", "cpu", "--mode", "eager", "--examples", "5", "--timeout", "3"]


def conformance(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "conformance", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def cells_of(path: Path) -> dict[tuple, dict]:
    data = json.loads(path.read_text())
    return {(c["component"], c["implementation"], c["dtype"], c["mode"], c["device"]): c for c in data["cells"]}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_plugin_ends_its_own_cell_only(fault, tmp_path):
    out = tmp_path / "results.json"
    target = f"{FAULTY}:{CLASSES[fault]}"
    proc = conformance("check", "mha", "--impl", target, "--dtype", "float64", "--dtype", "float32", *FAST,
                       "-o", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cells = cells_of(out)
    assert len(cells) == 2
    good, bad = cells[("mha", target, "float64", "eager", "cpu")], cells[("mha", target, "float32", "eager", "cpu")]
    assert good["verdict"] == "conformant" and good["examples"] >= 5
    verdict, words = FAULTS[fault]
    assert bad["verdict"] == verdict and words in bad["reason"], bad["reason"]
    assert bad["repro"].startswith(f"conformance check mha --impl {target} --dtype float32")
    assert not (tmp_path / "results.json.journal").exists()  # a finished run leaves the results file only


def _entry_point(tmp_path: Path) -> dict[str, str]:
    """An installed package whose entry point is tests/faulty.py's Fault (its fault from $FAULT)."""
    site = tmp_path / "site"
    dist = site / "faulty_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[conformance.implementations]\nfaulty-attention = faulty:Fault\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_entry_point_in_a_run_beside_builtin_cells(fault, tmp_path):
    out = tmp_path / "results.json"
    proc = conformance("run", "--framework", "numpy", "--component", "mha", "--dtype", "float64", "--dtype",
                       "float32", *FAST, "-o", str(out), env={**_entry_point(tmp_path), "FAULT": fault})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cells = cells_of(out)
    assert len(cells) == 4
    for dtype in ("float64", "float32"):
        assert cells[("mha", "numpy", dtype, "eager", "cpu")]["verdict"] == "conformant"
    assert cells[("mha", "faulty-attention", "float64", "eager", "cpu")]["verdict"] == "conformant"
    bad = cells[("mha", "faulty-attention", "float32", "eager", "cpu")]
    verdict, words = FAULTS[fault]
    assert bad["verdict"] == verdict and words in bad["reason"], bad["reason"]


def test_a_cell_over_its_limit_is_stopped_and_the_next_runs(tmp_path):
    out = tmp_path / "results.json"
    target = f"{FAULTY}:Slow"  # a second per float32 example
    proc = conformance("check", "mha", "--impl", target, "--dtype", "float32", "--dtype", "float64",
                       "--device", "cpu", "--mode", "eager", "--examples", "20", "--cell-timeout", "6",
                       "-o", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cells = cells_of(out)
    slow, fine = cells[("mha", target, "float32", "eager", "cpu")], cells[("mha", target, "float64", "eager", "cpu")]
    assert slow["verdict"] == "error" and "no result within 6 s (the cell's limit, --cell-timeout)" in slow["reason"]
    assert fine["verdict"] == "conformant"


# --- interruption and --resume ------------------------------------------------------------------

RUN = ["run", "--framework", "numpy", "--dtype", "float64", "--dtype", "float32", "--device", "cpu", "--mode",
       "eager", "--examples", "12"]
#: What must be equal between an interrupted-and-resumed run and an uninterrupted one.
SAME = ("verdict", "examples", "max_ratio", "worst", "reason", "counterexample")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "results.json"
    start = time.monotonic()
    proc = conformance(*RUN, "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cells_of(out), time.monotonic() - start


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_runs_keep_finished_cells_and_resume_to_the_same_results(signum, code, uninterrupted,
                                                                            tmp_path):
    whole, seconds = uninterrupted
    rng = random.Random(signum)
    for attempt in range(3):  # at several moments, from early on to late in the run
        out = tmp_path / f"results-{attempt}.json"
        proc = subprocess.Popen([sys.executable, "-m", "conformance", *RUN, "-o", str(out)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        journal = Path(f"{out}.journal")
        while not journal.exists() and proc.poll() is None:  # the cells have started
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.7) * seconds)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
        # it finished first, or the signal came after the results were written and the journal removed, when
        # the default handler is back and ends the process by the signal: nothing to resume either way
        if proc.returncode == 0 or (proc.returncode == -signum and not journal.exists()):
            assert cells_of(out).keys() == whole.keys()
            continue
        assert proc.returncode == code, stdout + stderr
        assert out.exists(), stdout + stderr
        data = json.loads(out.read_text())
        if "incomplete" not in data:  # the signal came after the last cell: the results are whole
            assert cells_of(out).keys() == whole.keys() and not Path(f"{out}.journal").exists()
            continue
        assert data["incomplete"]["reason"] == f"interrupted by {signal.Signals(signum).name}"
        kept = cells_of(out)
        assert len(kept) + len(data["incomplete"]["missing"]) == len(whole), stdout + stderr
        for key, cell in kept.items():
            assert {k: cell[k] for k in SAME} == {k: whole[key][k] for k in SAME}
        assert Path(f"{out}.journal").exists()
        resumed = conformance(*RUN, "-o", str(out), "--resume")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"resuming: {len(kept)} of {len(whole)} cells already done" in resumed.stdout
        data = json.loads(out.read_text())
        assert "incomplete" not in data and not Path(f"{out}.journal").exists()
        done = cells_of(out)
        assert list(done) == list(whole)  # the same cells in the same order
        for key, cell in done.items():
            assert {k: cell[k] for k in SAME} == {k: whole[key][k] for k in SAME}, key


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.Popen([sys.executable, "-m", "conformance", "check", "mha", "--impl", f"{FAULTY}:Hangs",
                             "--dtype", "float64", "--dtype", "float32", "--device", "cpu", "--mode", "eager",
                             "--examples", "5", "-o", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (Path(f"{out}.journal").exists() and len(Path(f"{out}.journal").read_text().splitlines()) > 1):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)  # float32 is hanging now
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 130
    journal = Path(f"{out}.journal").read_text().splitlines()
    assert json.loads(journal[1])["cell"]["dtype"] == "float64"  # what finished is kept


def test_resume_refuses_another_runs_journal(tmp_path):
    out = tmp_path / "results.json"
    Path(f"{out}.journal").write_text(json.dumps({"journal": "conformance-journal/1", "run": {"seed": 7}}) + "\n")
    proc = conformance(*RUN, "-o", str(out), "--resume")
    assert proc.returncode == 2 and "is of a different run" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not out.exists()
    proc = conformance(*RUN, "-o", str(tmp_path / "none.json"), "--resume")
    assert proc.returncode == 2 and "no journal" in proc.stderr


# --- the parent process ---------------------------------------------------------------------------

def test_the_parent_imports_neither_frameworks_nor_plugins(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from conformance.cli import main
        code = main(["check", "mha", "--impl", {str(TESTS / 'wrong_mha.py') + ':Correct'!r}, "--dtype", "float32",
                     "--device", "cpu", "--mode", "eager", "--examples", "3"])
        code2 = main(["run", "--framework", "torch", "--component", "ffn", "--dtype", "float32", "--device", "cpu",
                      "--mode", "eager", "--examples", "3", "-o", {str(tmp_path / 'r.json')!r}])
        imported = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "keras", "tensorflow", "jax")
                          or "wrong_mha" in m or m.startswith("impls.torch") or m.startswith("impls.keras"))
        print("IMPORTED", imported, code, code2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "IMPORTED [] 0 0" in proc.stdout, proc.stdout + proc.stderr


def test_plugin_prints_go_to_stderr(tmp_path):
    plugin = tmp_path / "noisy.py"
    plugin.write_text("from impls.numpy.mha import Implementation\nprint('hello from the plug-in')\n"
                      "class Noisy(Implementation):\n    def build(self, *a, **k):\n"
                      "        print('building')\n        return super().build(*a, **k)\n")
    proc = conformance("check", "mha", "--impl", f"{plugin}:Noisy", "--dtype", "float32", "--device", "cpu",
                       "--mode", "eager", "--examples", "3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hello from the plug-in" in proc.stderr and "building" in proc.stderr
    assert "hello" not in proc.stdout and "building" not in proc.stdout
    site = tmp_path / "site"
    dist = site / "noisy-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[conformance.implementations]\nnoisy = noisy:Noisy\n")
    listed = conformance("list", "--json", env={"PYTHONPATH": os.pathsep.join([str(site), str(tmp_path)])})
    assert listed.returncode == 0 and "hello from the plug-in" in listed.stderr
    assert any(i["target"] == "noisy:Noisy" for i in json.loads(listed.stdout)["implementations"])


# --- conformance.check from a user's own tests -------------------------------------------------------

class HangsInFloat32(NumpyAttention):
    """Defined in a test module that pytest imports by path: the worker finds it from its file."""

    dtypes = ("float64", "float32")

    def build(self, config, *, dtype, device):
        built = super().build(config, dtype=dtype, device=device)
        return _Hang(built) if dtype == "float32" else built


class _Hang:
    def __init__(self, built):
        self.built = built

    def load(self, weights):
        self.built.load(weights)

    def __call__(self, inputs):
        while True:
            time.sleep(0.05)


def test_check_from_python_runs_in_workers_too():
    cells = check("mha", HangsInFloat32(), dtypes=["float64", "float32"], devices=["cpu"], modes=["eager"],
                  examples=5, timeout=2)
    by_dtype = {c.dtype: c for c in cells}
    assert by_dtype["float64"].verdict == "conformant"
    assert by_dtype["float32"].verdict == "error" and "no result within 2 s" in by_dtype["float32"].reason
