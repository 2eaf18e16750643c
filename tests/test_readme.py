"""The README's worked plug-in example runs as written, and the README names the CI command."""

from __future__ import annotations

import re

import pytest

from conformance.cli import main


def _example(root, name: str = "my_attention.py") -> str:
    text = (root / "README.md").read_text()
    m = re.search(rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README lost its plug-in example {name}"
    return m[1]


#: A post-norm block BertLayer can be, with padding: one example, replayed.
BERT_EXAMPLE = ('{"d_model":6,"num_heads":2,"d_head":3,"d_ff":5,"activation":"gelu","norm":"post","epsilon":1e-05,'
                '"dropout":0.1,"B":2,"T":4,"mask":"padding","scale_exp":0,"offset":0,"weight_exp":0,"seed":1}')


def test_readme_library_plugin_is_short_and_conforms(root, tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers", reason="the example adapts Hugging Face Transformers' BertLayer")
    code = _example(root, "my_bert_layer.py")
    assert len([line for line in code.splitlines() if line.strip()]) < 30
    (tmp_path / "my_bert_layer.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    argv = ["check", "encoder_block", "--impl", "my_bert_layer.py:MyBertLayer", "--dtype", "float64", "--dtype",
            "float32", "--device", "cpu", "--mode", "eager", "--example", BERT_EXAMPLE]
    assert main(argv) == 0
    assert "2 conformant" in capsys.readouterr().out
    # the layout helper left out: the square matrices go in transposed, and the failure says so
    (tmp_path / "my_bert_layer.py").write_text(code.replace("plugin.linear(w[name])", "w[name].copy()"))
    assert main([*argv[:-2], "--example", BERT_EXAMPLE.replace('"d_ff":5', '"d_ff":6')]) == 1
    assert "likely cause: transposed weights (W_q, W_k, W_v, W_o, W_1, W_2 read as (out, in))" in capsys.readouterr().out


def test_readme_plugin_example_conforms(root, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_attention.py").write_text(_example(root))
    monkeypatch.chdir(tmp_path)
    assert main(["check", "mha", "--impl", "my_attention.py:MyAttention"]) == 0
    assert "2 conformant" in capsys.readouterr().out


def test_readme_plugin_example_with_the_mistake_it_describes_fails(root, tmp_path, monkeypatch, capsys):
    code = _example(root)
    assert "np.sqrt(q.dtype.type(d))" in code
    (tmp_path / "my_attention.py").write_text(code.replace("np.sqrt(q.dtype.type(d))", "np.sqrt(q.dtype.type(h * d))"))
    monkeypatch.chdir(tmp_path)
    assert main(["check", "mha", "--impl", "my_attention.py:MyAttention", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "minimal example:" in out and "reproduce: conformance check mha --impl my_attention.py:MyAttention" in out


def test_ci_runs_the_readme_test_command(root):
    ci = [l for l in (root / ".ci" / "run").read_text().splitlines()
          if l.strip() and not l.lstrip().startswith(("#", "set ", "cd ", "export "))]
    assert ci[-1] in (root / "README.md").read_text()


def test_the_readme_ci_workflow_is_the_repositorys_and_its_commands_parse(root):
    """The sharded GitHub Actions workflow in README is the one in .github/, and each conformance command
    in it is one the command line accepts."""
    import shlex

    import yaml

    from conformance.cli import _parser

    text = (root / "README.md").read_text()
    m = re.search(r"<!-- workflow: (\S+) -->\n```yaml\n(.*?)```", text, re.S)
    assert m, "README lost its CI workflow"
    assert (root / m[1]).read_text() == m[2]
    workflow = yaml.safe_load(m[2])
    shards = workflow["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    commands = [line.strip() for job in workflow["jobs"].values() for step in job["steps"]
                for line in step.get("run", "").splitlines() if line.strip().startswith("conformance ")]
    run = next(c for c in commands if c.startswith("conformance run"))
    assert f"--shard ${{{{ matrix.shard }}}}/{len(shards)}" in run and shards == list(range(1, len(shards) + 1))
    assert any(c.startswith("conformance merge") for c in commands)
    for command in commands:
        argv = shlex.split(command.replace("${{ matrix.shard }}", "1"))[1:]
        _parser().parse_args([a for a in argv if "*" not in a] + (["x.json"] if "*" in command else []))
