"""Shared fixtures: the supported architectures, for parametrised tests; an unreachable PyPI."""

from __future__ import annotations

import pytest

from parallelcomp_llm.testing import ARCHITECTURES, UNREACHABLE_PYPI


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param


@pytest.fixture
def unreachable_pypi(monkeypatch):
    """pip sees a package index that refuses connections, and gives up at once."""
    for name, value in UNREACHABLE_PYPI.items():
        monkeypatch.setenv(name, value)
