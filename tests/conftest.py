"""Shared fixtures: the supported architectures, for parametrised tests."""

from __future__ import annotations

import pytest

from parallelcomp_llm.testing import ARCHITECTURES


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param
