"""`webhooks:` in the org file: https (http only to loopback), secrets by reference, known
events, each located by its field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from chartbridge.config.schema import OrgConfig
from chartbridge.webhooks.config import Webhooks

REPO = Path(__file__).resolve().parents[2]
GOOD = {"id": "ops", "url": "https://hooks.example.org/cb", "secret": "env:HOOK_SECRET",
        "events": ["write.failed"]}


def _errors(entry: dict) -> list[tuple]:
    with pytest.raises(ValidationError) as exc:
        TypeAdapter(Webhooks).validate_python([entry])
    return [(e["loc"][1:], e["type"]) for e in exc.value.errors()]


def test_a_subscriber_validates_and_the_org_file_carries_it():
    doc = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
    doc["webhooks"] = [GOOD, dict(GOOD, id="local", url="http://127.0.0.1:9000/h")]
    org = OrgConfig.model_validate(doc)
    assert [s.id for s in org.webhooks] == ["ops", "local"]
    assert str(org.webhooks[0].secret) == "env:HOOK_SECRET"
    assert OrgConfig.model_validate({k: v for k, v in doc.items() if k != "webhooks"}).webhooks == []


@pytest.mark.parametrize("change, field, kind", [
    ({"url": "http://hooks.example.org/cb"}, "url", "url_scheme"),
    ({"url": "https://user:pw@hooks.example.org/cb"}, "url", "url_userinfo"),
    ({"secret": "whsec_c2VjcmV0"}, "secret", "inline_secret"),
    ({"events": ["write.exploded"]}, "events", "enum"),
    ({"events": []}, "events", "too_short"),
    ({"events": ["write.failed", "write.failed"]}, "events", "value_error"),
    ({"transcript": True}, "transcript", "extra_forbidden"),
])
def test_a_bad_subscriber_is_refused_naming_its_field(change, field, kind):
    errors = _errors(dict(GOOD, **change))
    assert any(loc and loc[0] == field and t == kind for loc, t in errors), errors


def test_two_subscribers_with_one_id_are_refused():
    with pytest.raises(ValidationError, match="subscriber id is used once"):
        TypeAdapter(Webhooks).validate_python([GOOD, GOOD])


def test_org_check_names_a_webhook_secret_that_is_not_a_signing_key(monkeypatch):
    from chartbridge.webhooks.checks import subscriber_checks
    from tests.webhooks.support import SECRET

    doc = yaml.safe_load((REPO / "config/orgs/demo-multi.yaml").read_text())
    doc["webhooks"] = [GOOD, dict(GOOD, id="two", secret="env:HOOK_SECRET_TWO"),
                       dict(GOOD, id="three", secret="env:HOOK_SECRET_UNSET")]
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("HOOK_SECRET_TWO", "a-plain-password")
    monkeypatch.delenv("HOOK_SECRET_UNSET", raising=False)
    checks = subscriber_checks(OrgConfig.model_validate(doc))
    by_name = {c.name: c for c in checks}
    assert by_name["ops signing key"].ok
    assert not by_name["two signing key"].ok and "whsec_" in by_name["two signing key"].detail
    assert not by_name["secret webhooks[2].secret"].ok
    assert all("a-plain-password" not in c.detail + c.fix for c in checks)
