"""Fixtures for unit tests of core/."""
from __future__ import annotations

import pytest

from core import schema


# A database of its own: the session may run the whole console (tests/app starts worker, beat
# and pipeline), whose collector, alerts and heartbeats would otherwise write into the test.
@pytest.fixture
def isolated_client(redis_url):
    own = schema.connect(redis_url.rsplit("/", 1)[0] + "/11")
    own.flushdb()
    yield own
    own.flushdb()
    own.close()
