"""Fixtures for the hardening corpus (helpers live in hardening_helpers.py)."""

from __future__ import annotations

import pytest
from hardening_helpers import Cli


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)
