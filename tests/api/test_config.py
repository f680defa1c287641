"""The org file's `api` block: clients with their JWKS by file (relative to the org file's
folder) or https URL, and only the API's scopes."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from chartbridge.config.loader import EXAMPLE_ORGS
from chartbridge.config.schema import OrgConfig
from chartbridge.config.secrets import BASE_DIR


def _org(api: dict) -> OrgConfig:
    doc = yaml.safe_load((EXAMPLE_ORGS / "demo-multi.yaml").read_text())
    doc["api"] = api
    return OrgConfig.model_validate(doc, context={BASE_DIR: "/etc/orgs"})


def test_jwks_by_file_or_https_url():
    cfg = _org({"clients": [
        {"client_id": "a", "jwks": "file:clients/a.jwks.json", "scopes": ["capture", "read"]},
        {"client_id": "b", "jwks": "https://capture.example.org/jwks.json", "scopes": ["read"]}]})
    assert cfg.api.client("a").jwks == Path("/etc/orgs/clients/a.jwks.json")
    assert cfg.api.client("b").jwks == "https://capture.example.org/jwks.json"
    assert cfg.api.client("c") is None and cfg.api.token_ttl_s == 300


@pytest.mark.parametrize("api, where", [
    ({"clients": [{"client_id": "a", "jwks": "file:a.json", "scopes": ["admin"]}]}, "scopes"),
    ({"clients": [{"client_id": "a", "jwks": "http://capture.example.org/j", "scopes": ["read"]}]}, "jwks"),
    ({"token_ttl_s": 86400}, "token_ttl_s"),
])
def test_bad_api_blocks_are_refused(api, where):
    with pytest.raises(ValidationError) as err:
        _org(api)
    assert where in str(err.value)
