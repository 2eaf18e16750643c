"""Bad input is found before any work: exit 2, one line naming the problem and the valid choices,
no traceback, and no output file touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.cli import main
from results_sample import write

ROOT = Path(__file__).resolve().parent.parent
OK_EXAMPLE = {"d_model": 2, "num_heads": 1, "d_head": 1, "dropout": 0.0, "B": 1, "Lq": 1, "Lk": 1, "mask": "none",
              "scale_exp": 0, "seed": 0}
PLUGINS = {
    "syntax.py": "class Broken(:\n    pass\n",
    "raises.py": "import os\n\nraise RuntimeError('cannot start: no licence')\n",
    "hangs.py": "import time\n\nwhile True:\n    time.sleep(0.05)\n",
    "aborts.py": "import os\n\nos.abort()\n",
    "exits.py": "import sys\n\nsys.exit(0)\n",
    "needs_args.py": ("from impls.numpy.mha import Implementation\n\n\n"
                      "class NeedsArgs(Implementation):\n    def __init__(self, size):\n        self.size = size\n"),
}


def _example(**changes):
    return json.dumps({**OK_EXAMPLE, **changes})


def _ledger_with(tmp_path: Path, find: str, replace: str) -> str:
    text = (ROOT / "spec" / "deviations.toml").read_text()
    assert find in text
    path = tmp_path / "ledger.toml"
    path.write_text(text.replace(find, replace, 1))
    return str(path)


CHECK = ["check", "mha", "--impl", "numpy", "--dtype", "float32", "--device", "cpu", "--mode", "eager"]
CASES = {
    "plug-in with a syntax error": (lambda t: ["check", "mha", "--impl", f"{t}/syntax.py:Broken"],
                                    "syntax.py:1: SyntaxError"),
    "plug-in raising on import": (lambda t: ["check", "mha", "--impl", f"{t}/raises.py:Impl"],
                                  "raises.py:3: RuntimeError: cannot start: no licence"),
    "plug-in constructor needing arguments": (
        lambda t: ["check", "mha", "--impl", f"{t}/needs_args.py:NeedsArgs"],
        "cannot construct"),
    "plug-in hanging on import": (lambda t: ["check", "mha", "--impl", f"{t}/hangs.py:Impl", "--compile-timeout", "2"],
                                  "hangs.py:Impl: no result within 2 s while importing it"),
    "plug-in crashing on import": (lambda t: ["check", "mha", "--impl", f"{t}/aborts.py:Impl"],
                                   "aborts.py:Impl: the worker was killed by signal SIGABRT while importing it"),
    "plug-in exiting on import": (lambda t: ["check", "mha", "--impl", f"{t}/exits.py:Impl"],
                                  "exits.py:Impl: the implementation called sys.exit(0) while importing it"),
    "--example not an object": (lambda t: [*CHECK, "--example", "5"], "--example must be a JSON object"),
    "--example outside the domain": (lambda t: [*CHECK, "--example", _example(d_model=3000)],
                                     "d_model is 3000; the spec's domain is an integer in 1..32"),
    "--example of the wrong type": (lambda t: [*CHECK, "--example", _example(num_heads="1")],
                                    "num_heads is \"1\"; the spec's domain is an integer"),
    "--example with a bool for an integer": (lambda t: [*CHECK, "--example", _example(B=True)],
                                             "B is true; the spec's domain is an integer"),
    "--example with an unknown mask": (lambda t: [*CHECK, "--example", _example(mask="diagonal")],
                                       "mask is \"diagonal\"; the spec's domain is one of"),
    "--example with an unknown key": (lambda t: [*CHECK, "--example", _example(d_k=2)],
                                      "--example has unknown keys d_k; mha takes"),
    "--example with a negative seed": (lambda t: [*CHECK, "--example", _example(seed=-4)], "seed is -4"),
    "--example with another scale": (lambda t: [*CHECK, "--example", _example(scale_exp=7)], "scale_exp is 7"),
    "--example nested 100,000 deep": (lambda t: [*CHECK, "--example", "[" * 100_000 + "]" * 100_000],
                                      "--example is not valid JSON: nested too deeply"),
    "--seed -1": (lambda t: [*CHECK, "--seed", "-1"], "--seed must be 0 or more, got -1"),
    "--seed not a number": (lambda t: [*CHECK, "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    "--timeout 0": (lambda t: [*CHECK, "--timeout", "0"], "--timeout must be a positive number of seconds"),
    "--cell-timeout nan": (lambda t: ["run", "--cell-timeout", "nan"], "--cell-timeout must be a positive"),
    "--jobs 0": (lambda t: [*CHECK, "--jobs", "0"], "--jobs must be at least 1, got 0"),
    "--backend unknown": (lambda t: ["run", "--backend", "theano"], "unknown --backend 'theano'; valid: tensorflow, torch, jax"),
    "--shard 4/3": (lambda t: ["run", "--shard", "4/3"], "--shard '4/3' is not K/N with 1 <= K <= N"),
    "--shard 0/3": (lambda t: ["run", "--shard", "0/3"], "--shard '0/3' is not K/N"),
    "--resume without -o": (lambda t: [*CHECK, "--resume"], "--resume needs --output"),
    "ledger deviation = 1": (lambda t: [*CHECK, "--ledger", str(_write(t / "l.toml", b"deviation = 1\n"))],
                             "'deviation' is int, not a list of tables"),
    "ledger seen_on = 5": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(t, 'seen_on = { torch = "2.13.0" }',
                                                                       "seen_on = 5")],
                           "seen_on has the wrong type"),
    "ledger reference = 3": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(
        t, 'reference = "https://github.com/pytorch/pytorch/issues/160064"', "reference = 3")],
        "reference has the wrong type"),
    "ledger names a section its spec lacks": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(
        t, 'sections = ["7.4"]', 'sections = ["7.4", "99"]')], "names section 99 of mha, which"),
    "ledger names a condition its spec lacks": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(
        t, 'condition = "fully_masked_query_row"', 'condition = "padded_position"')],
        "unknown condition 'padded_position'; valid for mha: always, fully_masked_query_row, "
        "score_scale_inexact_in_float32"),
    "ledger parts names an unknown part": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(
        t, 'parts = ["forward", "gradients"]', 'parts = ["forward", "backward"]')],
        "parts is ['forward', 'backward']; it is a non-empty list of: forward, gradients"),
    "ledger covers gradients with a region": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(
        t, 'sections = ["7.4"]', 'sections = ["7.4"]\nparts = ["gradients"]')],
        "bound 'region' cannot cover gradients; an entry whose parts list \"gradients\" bounds them by a dtype"),
    "ledger id also in the built-in ledger": (lambda t: [*CHECK, "--ledger", _ledger_with(t, "", "")],
                                              "is in both"),
    "ledger names a plug-in file that is not there": (lambda t: [*CHECK, "--ledger", "none", "--ledger", _ledger_with(
        t, 'implementation = "torch.nn.MultiheadAttention"', 'implementation = "absent.py:Attention"')],
        "names the plug-in 'absent.py:Attention', but there is no file"),
    "ledger [[plugin]] missing built_on": (lambda t: [*CHECK, "--ledger", str(_write(
        t / "l.toml", b'[[plugin]]\nimplementation = "x.py:A"\ncomponent = "mha"\n'))],
        "it has exactly the string fields implementation, component, built_on; not so: built_on"),
    "ledger not UTF-8": (lambda t: [*CHECK, "--ledger", str(_write(t / "l.toml", b"\xff\xfe[[deviation]]\n"))],
                         "is not valid TOML: it is not UTF-8 text"),
    "-o an existing directory": (lambda t: [*CHECK, "-o", str(t)], "is a directory; give a file path"),
    "run -o an existing directory": (lambda t: ["run", "--framework", "numpy", "-o", str(t)], "is a directory"),
    "-o under a file": (lambda t: [*CHECK, "-o", str(_write(t / "f", b"")) + "/results.json"],
                        "is a file, not a folder"),
    "-o where nothing can be written": (lambda t: [*CHECK, "-o", "/proc/results.json"], "cannot be written"),
    "merge -o a directory": (lambda t: ["merge", str(write(t / "a.json")), "-o", str(t)], "is a directory"),
    "report -o a directory": (lambda t: ["report", str(write(t / "a.json")), "-o", str(t)], "is a directory"),
    "report --spec-url javascript:": (lambda t: ["report", str(write(t / "a.json")), "-o", str(t / "r.html"),
                                                 "--spec-url", "javascript:alert(1)//"],
                                      "is not an http(s) URL or a relative path"),
    "report --spec-url data:": (lambda t: ["report", str(write(t / "a.json")), "-o", str(t / "r.html"),
                                           "--spec-url", "data:text/html,<b>x</b>"], "is not an http(s) URL"),
    "report --spec-url //host": (lambda t: ["report", str(write(t / "a.json")), "-o", str(t / "r.html"),
                                            "--spec-url", "//example.org/spec"], "is not an http(s) URL"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_exit_2_with_one_line(case, tmp_path, capsys):
    for name, text in PLUGINS.items():
        (tmp_path / name).write_text(text)
    argv, words = CASES[case]
    argv = argv(tmp_path)
    def files():  # Python's own cache of the plug-ins imported is not output
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if "__pycache__" not in p.parts}

    before = files()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("conformance: error: ")
    assert files() == before  # nothing written, nothing left behind


def test_merge_refuses_two_verdicts_for_one_slot_of_one_environment(tmp_path, capsys):
    a = write(tmp_path / "a.json")
    data = json.loads(a.read_text())
    data["cells"][0]["verdict"] = "non-conformant"
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data))
    out = tmp_path / "merged.json"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mha numpy cpu eager float64" in err and str(a) in err and str(b) in err
    assert "conformant" in err and "non-conformant" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
