"""Shared fixtures: the supported architectures, for parametrised tests; an unreachable PyPI."""

from __future__ import annotations

import pytest

from parallelcomp_llm.testing import ARCHITECTURES


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param


@pytest.fixture
def unreachable_pypi(monkeypatch):
    """pip sees a package index that refuses connections, and gives up at once."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
