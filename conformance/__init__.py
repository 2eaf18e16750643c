"""A cross-framework conformance suite for neural-network building blocks."""

__version__ = "0.1.0"

from conformance.api import assert_conformant, check  # noqa: E402

__all__ = ["assert_conformant", "check"]
