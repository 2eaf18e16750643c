import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # helpers: wrong_mha, torch_reference


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def mha_spec():
    from conformance.spec import load_spec

    return load_spec(ROOT / "spec" / "mha.md")
