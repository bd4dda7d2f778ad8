"""Fixtures of the containers tests: ``harness`` (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.harness import Harness


@pytest.fixture
def harness(short_tmp: Path) -> Iterator[Harness]:
    h = Harness(short_tmp)
    try:
        yield h
    finally:
        h.close()
