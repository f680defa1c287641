"""The one error hierarchy. Adapters translate HTTP/MLLP failures into these at their edge;
the web app, CLI and worker translate these into answers, exit codes and retry decisions.

    ChartbridgeError
    ├── InputError            bad input: names the field (HTTP 400 / CLI exit 1)
    │   └── TooLarge          over a documented size/count limit (HTTP 413)
    ├── NotFound              unknown org, session, draft (HTTP 404)
    ├── StateConflict         contradicts stored state (HTTP 409)
    ├── ConfigError           bad org config: file, key path, line
    ├── RuleViolation         a domain rule refused the action (consent, protection, approval)
    ├── LedgerError
    │   ├── IdempotencyConflict   same key, different body (HTTP 422)
    │   ├── WriteInProgress       same key under a live lease (HTTP 409)
    │   └── OutcomeUnknown        cannot know whether the EHR has it: needs a person
    └── AdapterError          something a vendor said or did
        ├── TransientError    network, 429, 5xx, expired token: retried with backoff
        └── PermanentError    validation, 4xx contract errors: recorded, never retried

Messages never contain PHI: say which field or which kind of thing, never its value.
"""
from __future__ import annotations

from typing import Any


class ChartbridgeError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.message}
        body.update({k: v for k, v in self.fields.items() if v is not None})
        return body


class InputError(ChartbridgeError):
    code = "invalid_input"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, **fields: Any) -> None:
        super().__init__(message, field=field, **fields)
        self.field = field


class TooLarge(InputError):
    """Over a size or count limit (body bytes, identifiers, nesting): names the field and
    the limit, never the value."""

    code = "too_large"
    http_status = 413


class NotFound(ChartbridgeError):
    code = "not_found"
    http_status = 404


class StateConflict(ChartbridgeError):
    code = "conflict"
    http_status = 409


class ConfigError(ChartbridgeError):
    """One problem in one org config file, located by key path and line."""

    code = "config_invalid"
    http_status = 500

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message, file=file, key=key, line=line)
        self.file, self.key, self.line = file, key, line

    def __str__(self) -> str:
        where = self.file or ""
        if self.file and self.line:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}" if where else self.key
        return f"{where}: {self.message}" if where else self.message


class RuleViolation(ChartbridgeError):
    """A domain rule refused the action; `rule` names which one."""

    code = "rule_violation"
    http_status = 409

    def __init__(self, message: str, *, rule: str, **fields: Any) -> None:
        super().__init__(message, rule=rule, **fields)
        self.rule = rule


class LedgerError(ChartbridgeError):
    code = "ledger_error"


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"
    http_status = 422


class WriteInProgress(LedgerError):
    code = "write_in_progress"
    http_status = 409


class OutcomeUnknown(LedgerError):
    """The EHR may or may not hold the write; re-sending could file it twice."""

    code = "needs_reconciliation"
    http_status = 409


class AdapterError(ChartbridgeError):
    """A vendor call failed. `status` is the HTTP status (or None), `vendor_code` the
    vendor's own error code, `retry_after` seconds the vendor asked us to wait."""

    code = "adapter_error"
    http_status = 502

    def __init__(self, message: str, *, status: int | None = None,
                 vendor_code: str | None = None, retry_after: float | None = None,
                 **fields: Any) -> None:
        super().__init__(message, status=status, vendor_code=vendor_code,
                         retry_after=retry_after, **fields)
        self.status = status
        self.vendor_code = vendor_code
        self.retry_after = retry_after


class TransientError(AdapterError):
    """Retry later. `maybe_delivered` says whether the EHR may have acted on the request
    (a timeout or a 500 after the body was sent: yes; a 429, a refused connection: no).
    When it may have, the next attempt asks the adapter to reconcile before resending."""

    code = "transient"

    def __init__(self, message: str, *, maybe_delivered: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.maybe_delivered = maybe_delivered


class PermanentError(AdapterError):
    code = "permanent"


def error_class_name(exc: BaseException) -> str:
    """The short name stored in ledger rows and metrics (never the message: it may be long)."""
    return type(exc).__name__
