"""Answers a handler raises to reply at once, and OperationOutcome bodies. A validation
collects every issue and answers with the most basic class present (400 before 422 before
404) and all the issues."""
from __future__ import annotations

from typing import Any, Mapping

from chartbridge.core.errors import ChartbridgeError

FHIR_JSON = "application/fhir+json"


class FhirAnswer(ChartbridgeError):
    """Raised inside a handler to answer at once (an error status, an OperationOutcome...)."""

    def __init__(self, status: int, body: Any = None, *, headers: Mapping[str, str] | None = None,
                 content_type: str = FHIR_JSON) -> None:
        super().__init__(f"answer {status}")
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = dict(headers or {})


def issue(code: str, diagnostics: str, expression: str | None = None,
          severity: str = "error") -> dict[str, Any]:
    item: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        item["expression"] = [expression]
    return item


def outcome(*issues: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def fail(status: int, code: str, diagnostics: str, expression: str | None = None,
         headers: Mapping[str, str] | None = None) -> FhirAnswer:
    return FhirAnswer(status, outcome(issue(code, diagnostics, expression)), headers=headers)


class Issues:
    """Collects validation issues; 400 = failed base R4 rules (structure, datatypes, required
    base elements), 422 = violated the profile / business rules, 404 = an unknown target
    where the profile says so.
    The answer is the most basic class present (400 before 422 before 404) with every issue."""

    def __init__(self) -> None:
        self.items: list[tuple[int, dict[str, Any]]] = []

    def add(self, status: int, code: str, diagnostics: str, expression: str) -> None:
        self.items.append((status, issue(code, diagnostics, expression)))

    def raise_if_any(self, prefix_from: str | None = None, prefix_to: str | None = None) -> None:
        if not self.items:
            return
        statuses = {s for s, _ in self.items}
        status = next(s for s in (400, 422, 404, 409, 412) if s in statuses)
        issues = []
        for _, item in self.items:
            item = dict(item)
            if prefix_from and item.get("expression"):
                item["expression"] = [e.replace(prefix_from, prefix_to or "", 1)
                                      for e in item["expression"]]
            issues.append(item)
        raise FhirAnswer(status, outcome(*issues))
