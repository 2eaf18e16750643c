"""A cross-framework conformance suite for neural-network building blocks."""

__version__ = "0.1.0"
