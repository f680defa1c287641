"""The Epic suite plays Epic's side against our engine on the simulator; with
CHARTBRIDGE_CONTRACT_BASE_URL set (`contract-test --vendor epic_haiku --base-url URL`) only
its live checks of the site's Epic (token for our assertion, published signing keys) can
run, and the run ends with the live summary of contract_tests/support/live.py."""
from __future__ import annotations

import os

from contract_tests.support.live import LiveRun, live_base_url


def pytest_configure(config):
    url = live_base_url()
    if not url or config.pluginmanager.has_plugin("chartbridge-live-run"):
        return
    creds = {"client_id": os.environ.get("CHARTBRIDGE_CONTRACT_CLIENT_ID", ""),
             "key": os.environ.get("CHARTBRIDGE_CONTRACT_KEY", ""),
             "key_id": os.environ.get("CHARTBRIDGE_CONTRACT_KEY_ID", "")}
    config.pluginmanager.register(LiveRun("epic_haiku", url, credentials=creds),
                                  "chartbridge-live-run")
