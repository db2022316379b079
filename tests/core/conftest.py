"""Fixtures for unit tests of core/."""
from __future__ import annotations

import pytest


@pytest.fixture
def isolated_client(own_db):
    """Database 11 (tests/conftest.py `own_db`) for modules without a DB constant of their own."""
    return own_db
