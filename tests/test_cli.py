"""The `conformance` command as a user runs it: list, check, run, exit codes, plug-ins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conformance.cli import main
from conformance.results import SCHEMA
from conformance.spec import list_components


def test_list_shows_components_and_availability(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mha: Multi-head attention" in out
    for name in ("numpy", "torch", "keras"):
        assert f"  {name} " in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "mha" in data["components"]
    assert data["dtypes"] == ["float64", "float32", "float16", "bfloat16"]
    assert data["devices"] == ["cpu", "cuda"] and data["modes"] == ["eager", "compiled"]
    numpy = next(i for i in data["implementations"] if i["name"] == "numpy" and i["component"] == "mha")
    assert numpy["available"] is True and numpy["reason"] is None


def test_missing_framework_is_listed_as_unavailable(monkeypatch, capsys):
    from conformance import registry

    monkeypatch.setitem(registry.FRAMEWORK_MODULES, "torch", ("no_such_torch_module",))
    assert main(["list", "--json"]) == 0
    torch = next(i for i in json.loads(capsys.readouterr().out)["implementations"] if i["name"] == "torch")
    assert torch["available"] is False and "no_such_torch_module" in torch["reason"]


@pytest.mark.parametrize("argv, message", [
    (["check", "attention", "--impl", "numpy"], "unknown component 'attention'; known: " + ", ".join(list_components())),
    (["check", "mha", "--impl", "nump"], "unknown implementation 'nump' of 'mha'; registered: numpy, torch, keras"),
    (["check", "mha", "--impl", "numpy", "--dtype", "float8"],
     "unknown --dtype 'float8'; valid: float64, float32, float16, bfloat16"),
    (["check", "mha", "--impl", "numpy", "--device", "gpu"], "unknown --device 'gpu'; valid: cpu, cuda"),
    (["run", "--mode", "jit"], "unknown --mode 'jit'; valid: eager, compiled"),
    (["check", "mha", "--impl", "no_such_pkg.mod:Impl"], "cannot import 'no_such_pkg.mod'"),
    (["check", "mha", "--impl", "missing_file.py:Impl"], "no such file 'missing_file.py'"),
    (["check", "mha", "--impl", "impls.numpy.mha:Nope"], "has no attribute 'Nope'; it has:"),
    (["check", "mha", "--impl", "impls.numpy.mha:forward"], "is not an implementation"),
    (["check", "mha", "--impl", "numpy", "--examples", "0"], "--examples must be at least 1"),
    (["check", "mha", "--impl", "numpy", "--example", "{"], "--example is not valid JSON"),
    (["check", "mha", "--impl", "numpy", "--example", '{"seed": 1}'], "--example lacks d_model"),
    (["run", "--framework", "tensorflw"], "unknown framework 'tensorflw'; known: equinox, flax, keras, keras_hub, numpy, onnxruntime, torch, transformers"),
])
def test_usage_errors_exit_2_naming_the_choices(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_check_exit_codes(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    # every cell of the matrix: numpy has no compiled mode and this machine may lack cuda;
    # those cells are shown, and they are not failures
    assert main(["check", "mha", "--impl", "numpy", "--examples", "10"]) == 0
    out = capsys.readouterr().out
    assert "unsupported" in out and out.count(" eager ") >= 4
    # nothing that can run here: not a pass
    assert main(["check", "mha", "--impl", "numpy", "--mode", "compiled", "--examples", "10"]) == 1
    captured = capsys.readouterr()
    assert "8 unsupported" in captured.out and "nothing ran" in captured.err
    assert main(["check", "mha", "--impl", "tests/wrong_mha.py:InvertedMask", "--dtype", "float32",
                 "--examples", "50"]) == 1
    out = capsys.readouterr().out
    assert "non-conformant" in out and "reproduce: conformance check mha --impl tests/wrong_mha.py:InvertedMask" in out
    assert "minimal example:" in out


def test_a_gradient_failure_fails_the_check_and_its_command_replays_it(root, monkeypatch, capsys):
    """The verdict stays the forward one; the gradients, judged apart, fail the check all the same."""
    monkeypatch.chdir(root)
    plugin = "tests/wrong_gradients.py:ScaledW1Gradient"
    cell = ["--dtype", "float32", "--device", "cpu", "--mode", "eager"]
    assert main(["check", "ffn", "--impl", plugin, *cell, "--examples", "10"]) == 1
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("ffn "))
    assert " conformant " in head and head.split("  gradients: ")[1].startswith("non-conformant (W_1)")
    assert "    gradients: gradient 'W_1' differs from the reference by" in out
    replay = re.search(r"^    reproduce the gradients: (conformance check ffn .*)$", out, re.M)[1]
    assert f"--impl {plugin} --dtype float32" in replay and '"gradients":true' in replay
    assert "1 conformant; 1 with non-conformant gradients" in out
    # the command replays that one example, and fails again
    example = re.search(r"--example '(.*)'$", replay)[1]
    assert main(["check", "ffn", "--impl", plugin, *cell, "--example", example]) == 1
    assert "gradients: non-conformant (W_1)" in capsys.readouterr().out
    # the right gradients pass, and say so beside the verdict
    assert main(["check", "ffn", "--impl", "numpy", *cell, "--examples", "10"]) == 0
    assert re.search(r" conformant .*  gradients: conformant \d", capsys.readouterr().out)


def test_plugin_by_module_path(root, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(root / "tests"))
    assert main(["check", "mha", "--impl", "wrong_mha:Correct", "--examples", "10"]) == 0
    assert main(["check", "mha", "--impl", "wrong_mha:ScaledByDModel", "--dtype", "float32",
                 "--examples", "50"]) == 1


def test_run_writes_versioned_results(tmp_path, capsys):
    out = tmp_path / "sub" / "results.json"
    assert main(["run", "--framework", "numpy", "--component", "ffn", "--examples", "5", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA
    cells = {(c["dtype"], c["device"], c["mode"]): c for c in data["cells"]}
    assert len(cells) == len(data["cells"]) == 4 * 2 * 2  # the whole matrix, every cell once
    for (dtype, device, mode), c in cells.items():
        if mode == "compiled":
            assert c["verdict"] == "unsupported" and "mode compiled not supported" in c["reason"]
        elif device == "cuda":
            assert c["verdict"] == "not-available" and "not available on this machine" in c["reason"]
        else:
            assert c["verdict"] == "conformant" and c["examples"] >= 5
            assert c["max_error"] and c["p99_error"] and c["budget"] and c["k"] is not None
            assert c["environment"]["cpu"] and c["environment"]["python"]
    assert "results:" in capsys.readouterr().out


def test_entry_point_plugin(tmp_path, root):
    """A package that declares an implementation under the entry-point group is found by name."""
    site = tmp_path / "site"
    (site / "my_attention_pkg").mkdir(parents=True)
    (site / "my_attention_pkg" / "__init__.py").write_text(textwrap.dedent("""
        from impls.numpy.mha import Implementation

        class Mine(Implementation):
            name = "my-attention"
    """))
    dist = site / "my_attention_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-attention-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[conformance.implementations]\nmy-attention = my_attention_pkg:Mine\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    run = lambda *a: subprocess.run([sys.executable, "-m", "conformance", *a], env=env, cwd=tmp_path,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    listed = json.loads(run("list", "--json").stdout)
    mine = next(i for i in listed["implementations"] if i["name"] == "my-attention")
    assert mine["source"] == "entry point" and mine["available"]
    checked = run("check", "mha", "--impl", "my-attention", "--examples", "5")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_run_leaves_nothing_in_the_working_folder(root, tmp_path):
    """Hypothesis keeps a cache of constants from local code (the engine's searches do without them, but
    anything it writes in a worker goes to our cache folder), never ./.hypothesis."""
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    env["CONFORMANCE_CACHE_DIR"] = str(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-m", "conformance", "check", "ffn", "--impl",
                           f"{root / 'tests' / 'wrong_ffn.py'}:TanhForGelu", "--dtype", "float32", "--device", "cpu",
                           "--examples", "20", "-j", "1"], cwd=work, env={**env, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert list(work.iterdir()) == []


def test_importing_the_package_leaves_hypothesis_where_the_user_has_it(tmp_path):
    """Only our worker processes move hypothesis's files; a project that imports conformance for its own tests
    keeps its hypothesis database where it was."""
    code = ("import conformance, conformance.engine\n"
            "from hypothesis.configuration import storage_directory\n"
            "print(storage_directory('examples', intent_to_write=False).path)")
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / ".hypothesis" / "examples")


def test_a_sigterm_after_the_command_has_finished_keeps_its_exit_status(tmp_path):
    """The moment between the command's end and the process's exit: the work is done and written, so a SIGTERM
    then is ignored and the exit status stays the command's (a run's 0 or 1, not death by the signal)."""
    code = ("import os, signal, sys\n"
            "from conformance.cli import main\n"
            "sys.argv = ['conformance', 'list']\n"
            "status = main()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "sys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
