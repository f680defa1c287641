from __future__ import annotations

import os

import pytest

from tests.api.site import ApiSite


@pytest.fixture
def site(tmp_path, database_url):
    os.environ.setdefault("ATHENA_CLIENT_SECRET", "sim-secret")    # the simulator's own
    s = ApiSite(tmp_path, database_url)
    yield s
    s.close()
