"""Fixtures: the verifying receiver and a site that subscribes it (support.py)."""
from __future__ import annotations

import pytest

from tests.webhooks.support import SECRET, Receiver, make_site


@pytest.fixture
def receiver():
    r = Receiver(SECRET).start()
    yield r
    r.stop()


@pytest.fixture
def site(tmp_path, database_url, receiver):
    engine, jobs, fhir, mllp = make_site(tmp_path, database_url, receiver)
    yield engine, jobs, fhir, mllp
    fhir.stop()
    mllp.stop()
    engine.db.dispose()


