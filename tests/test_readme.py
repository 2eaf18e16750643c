"""The README's worked plug-in example runs as written, and the README names the CI command."""

from __future__ import annotations

import re

from conformance.cli import main


def _example(root) -> str:
    text = (root / "README.md").read_text()
    m = re.search(r"<!-- example: my_attention.py -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its plug-in example"
    return m[1]


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
