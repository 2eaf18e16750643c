"""The shape of the code itself: imports run one way, from the harness to the implementations."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_implementations_never_import_the_harness():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "conformance")
                 for p in sorted((ROOT / "impls").rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_harness_takes_its_words_from_its_vocabulary():
    """Axes, verdicts and UsageError come from conformance.vocabulary; from impls only what implementations declare."""
    allowed = {"OUR_FRAMEWORKS", "FrameworkLayer", "CACHE_VARIABLE", "compilation_cache_dir"}
    for path in sorted((ROOT / "conformance").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "impls":
                names = {alias.name for alias in node.names}
                assert names <= allowed, f"{path.name} imports {sorted(names - allowed)} from impls"
