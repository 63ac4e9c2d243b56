"""Shared fixtures of the benchmark tests: an unreachable PyPI."""

from __future__ import annotations

import pytest

from parallelcomp_llm.testing import UNREACHABLE_PYPI


@pytest.fixture
def unreachable_pypi(monkeypatch):
    """pip sees a package index that refuses connections, and gives up at once."""
    for name, value in UNREACHABLE_PYPI.items():
        monkeypatch.setenv(name, value)
