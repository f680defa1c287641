"""The simulator's resources: every version of every resource, seeded Patients and
Encounters, ids, counts, and search (FHIR R4 search.html: token, reference, date, `_tag`;
what a profile allows is its rules.ServerRules.docref_search)."""
from __future__ import annotations

import copy
import secrets
import threading
from typing import Any, Callable
from urllib.parse import parse_qsl

from .answers import fail
from .rules import ServerRules
from .values import (
    DATE_PARAM_RE,
    ID_RE,
    TYPE_NAME_RE,
    date_range,
    now_instant,
    parse_instant,
    token_match,
)

WRITABLE_TYPES = ("DocumentReference", "Provenance", "Binary")
SEEDED_TYPES = ("Patient", "Encounter")
ALL_TYPES = WRITABLE_TYPES + SEEDED_TYPES
# search result parameters accepted and ignored; any other unknown parameter is refused (400)
IGNORED_SEARCH_PARAMS = ("_count", "_sort", "_format", "_elements", "_summary", "_total")
# common search parameters (search.html "Parameters for all resources") this server supports
# on every resource type besides _id: _tag, a token on Resource.meta.tag
COMMON_SEARCH_PARAMS = ("_id", "_tag")
# reference search parameters -> the types their references may point to (R4 search
# parameter registry: DocumentReference-patient, clinical-patient, DocumentReference-subject,
# clinical-encounter)
REFERENCE_TARGETS = {"patient": ("Patient",),
                     "subject": ("Patient", "Practitioner", "Group", "Device"),
                     "encounter": ("Encounter", "EpisodeOfCare")}


class Store:
    """Resource versions by type and id. The caller holds `lock` around anything that must
    be atomic (a conditional create, a transaction)."""

    def __init__(self, rules: ServerRules, *, lock: threading.RLock, clock: Callable[[], float],
                 base_url: Callable[[], str | None], max_resources: int) -> None:
        self.rules, self.lock, self.clock, self.base_url = rules, lock, clock, base_url
        self.max_resources = max_resources
        # a reference search value must name its type: `patient=Patient/p1` matches,
        # `patient=p1` finds nothing (servers that match references strictly do this,
        # although the spec defines the bare [id] form)
        self.strict_references = False
        self.data: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in ALL_TYPES}
        self.counts: dict[str, int] = {}

    def reset(self, keep_seed: bool) -> None:
        with self.lock:
            seeded = {t: self.data.get(t, {}) for t in SEEDED_TYPES} if keep_seed else {}
            self.data = {t: {} for t in ALL_TYPES}
            self.data.update(seeded)
            self.counts = {}

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def seed(self, rtype: str, resource: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            resource["meta"] = {"versionId": "1", "lastUpdated": now_instant(self.clock())}
            self.data[rtype][resource["id"]] = [resource]
            return copy.deepcopy(resource)

    def current(self, rtype: str, rid: str) -> dict[str, Any] | None:
        versions = self.data.get(rtype, {}).get(rid)
        return versions[-1] if versions else None

    def new_id(self) -> str:
        return self.rules.id_prefix + secrets.token_hex(10)

    def capacity(self, n: int) -> None:
        total = sum(len(v) for t, v in self.data.items() if t in WRITABLE_TYPES)
        if total + n > self.max_resources:
            raise fail(507, "too-costly", "simulator store is full; reset it")

    def put_version(self, rtype: str, rid: str, resource: dict[str, Any], version: int
                    ) -> dict[str, Any]:
        resource = copy.deepcopy(resource)
        resource["id"] = rid
        meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
        meta = {k: val for k, val in meta.items() if k not in ("versionId", "lastUpdated")}
        meta.update(versionId=str(version), lastUpdated=now_instant(self.clock()))
        resource["meta"] = meta
        self.data[rtype].setdefault(rid, []).append(resource)
        self.count(f"create:{rtype}" if version == 1 else f"update:{rtype}")
        return resource

    def ref(self, value: Any) -> tuple[str, str] | None:
        """(type, id) of a literal reference 'Type/id', '[base]/Type/id', '.../_history/n'."""
        if not isinstance(value, str):
            return None
        base = self.base_url()
        if base and value.startswith(base + "/"):
            value = value[len(base) + 1:]
        parts = value.split("/")
        if len(parts) == 4 and parts[2] == "_history":
            parts = parts[:2]
        if len(parts) == 2 and TYPE_NAME_RE.match(parts[0]) and ID_RE.match(parts[1]):
            return parts[0], parts[1]
        return None

    def exists(self, rtype: str, rid: str, pending: set[tuple[str, str]]) -> bool:
        return (rtype, rid) in pending or rid in self.data.get(rtype, {})

    @staticmethod
    def condition_params(rtype: str, condition: str) -> list[tuple[str, str]]:
        query = condition.strip()
        if "?" in query:
            prefix, query = query.split("?", 1)
            if prefix and prefix.rstrip("/").split("/")[-1] != rtype:
                raise fail(400, "invalid", "If-None-Exist names another resource type",
                           "If-None-Exist")
        params = parse_qsl(query, keep_blank_values=True)
        if not params:
            raise fail(400, "invalid", "If-None-Exist has no search parameters", "If-None-Exist")
        return params

    def search(self, rtype: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Current versions matching every parameter (AND); comma-separated values are OR."""
        docref = rtype == "DocumentReference"
        allowed = (self.rules.docref_search if docref else ("identifier",)) + COMMON_SEARCH_PARAMS
        tests: list[Callable[[dict[str, Any]], bool]] = []
        names = [n.partition(":")[0] for n, _ in params]
        if docref and self.rules.search_needs_one_of and not set(names) & set(
                self.rules.search_needs_one_of):
            raise fail(400, "required", "this search needs one of "
                       + ", ".join(self.rules.search_needs_one_of), "DocumentReference")
        if "period" in names and self.rules.period_needs_ge_and_lt:
            prefixes = sorted(v[:2] for n, v in params if n == "period")
            if prefixes != ["ge", "lt"]:
                raise fail(400, "invalid", "period must be given twice, with ge and with lt",
                           "period")
        for name, raw in params:
            if name in IGNORED_SEARCH_PARAMS:
                continue
            base_name, _, modifier = name.partition(":")
            # the only modifier supported is a reference's [type] (`subject:Patient=23`)
            if base_name not in allowed or (modifier and not (
                    base_name in REFERENCE_TARGETS and TYPE_NAME_RE.match(modifier))):
                raise fail(400, "not-supported", "unknown or unsupported search parameter",
                           name)
            if modifier and modifier not in REFERENCE_TARGETS[base_name]:
                raise fail(400, "invalid", "the type modifier is not a target of this parameter",
                           name)
            if raw == "":
                raise fail(400, "invalid", "empty search parameter value", name)
            if base_name in REFERENCE_TARGETS:
                tests.append(self._reference_test(base_name, raw, modifier or None))
            else:
                tests.append(self._search_test(base_name, raw))
        out = []
        for versions in self.data.get(rtype, {}).values():
            res = versions[-1]
            if all(t(res) for t in tests):
                out.append(copy.deepcopy(res))
        out.sort(key=lambda r: r["meta"]["lastUpdated"])
        return out

    def _search_test(self, name: str, raw: str) -> Callable[[dict[str, Any]], bool]:
        values = raw.split(",")

        def any_of(pred: Callable[[dict[str, Any], str], bool]) -> Callable[[dict[str, Any]], bool]:
            return lambda res: any(pred(res, val) for val in values)

        if name == "_id":
            return any_of(lambda r, val: r.get("id") == val)
        if name == "_tag":
            return any_of(lambda r, val: token_match(
                [t for t in ((r.get("meta") or {}).get("tag") or []) if isinstance(t, dict)], val))
        if name == "identifier":
            return any_of(lambda r, val: token_match(
                [i for i in r.get("identifier", []) if isinstance(i, dict)], val))
        if name == "type":
            return any_of(lambda r, val: token_match((r.get("type") or {}).get("coding", []), val))
        if name == "category":
            return any_of(lambda r, val: any(token_match(c.get("coding", []), val)
                                             for c in r.get("category", []) if isinstance(c, dict)))
        if name == "status":
            return any_of(lambda r, val: r.get("status") == val)
        if name in ("date", "period"):
            m = DATE_PARAM_RE.match(raw)
            rng = date_range(m.group(2)) if m else None
            if rng is None:
                raise fail(400, "invalid", f"{name} must be [prefix]YYYY[-MM[-DD[Thh:mm[:ss]]]]",
                           name)
            prefix, (lo, hi) = m.group(1) or "eq", rng

            def date_test(res: dict[str, Any]) -> bool:
                # date: DocumentReference.date; period: context.period (its end, else start)
                period = (res.get("context") or {}).get("period") or {}
                when = res.get("date") if name == "date" else (period.get("end")
                                                               or period.get("start"))
                t = parse_instant(when)
                if t is None:
                    return False
                return {"eq": lo <= t < hi, "ne": not lo <= t < hi, "gt": t >= hi, "ge": t >= lo,
                        "lt": t < lo, "le": t < hi}[prefix]
            return date_test
        raise fail(400, "not-supported", "unsupported search parameter", name)

    def _reference_test(self, name: str, raw: str, type_modifier: str | None
                        ) -> Callable[[dict[str, Any]], bool]:
        """A reference parameter (search.html#reference). Each comma-separated value is
        `[id]` (a local reference to any of the parameter's target types with that id; with
        `strict_references` it matches nothing), `[type]/[id]` (a local reference of that
        type), or `[url]` (an absolute URL: one of this server's own resources is the local
        reference; any other URL matches a reference written exactly so). `name:[type]=[id]`
        is the same as `name=[type]/[id]`."""
        targets = REFERENCE_TARGETS[name]

        def wanted(val: str) -> Callable[[str], bool]:
            if type_modifier:
                if "/" in val:
                    raise fail(400, "invalid", "with a [type] modifier the value is an id", name)
                val = f"{type_modifier}/{val}"
            if "://" in val:
                local = self.ref(val)   # own base stripped; None for another server's URL
                if local is None:
                    return lambda stored: stored == val
                val = f"{local[0]}/{local[1]}"
            parts = val.split("/")
            if len(parts) == 1:
                if self.strict_references:
                    return lambda stored: False
                return lambda stored: (self.ref(stored) or ("", ""))[1] == val and (
                    self.ref(stored) or ("", ""))[0] in targets
            if len(parts) == 2 and TYPE_NAME_RE.match(parts[0]):
                want = (parts[0], parts[1])
                return lambda stored: self.ref(stored) == want
            return lambda stored: False

        wants = [wanted(v) for v in raw.split(",")]

        def references(res: dict[str, Any]) -> list[str]:
            if name == "encounter":
                found = [e.get("reference") for e in
                         ((res.get("context") or {}).get("encounter") or []) if isinstance(e, dict)]
            else:
                found = [(res.get("subject") or {}).get("reference")]
            return [r for r in found if isinstance(r, str)]

        return lambda res: any(w(ref) for ref in references(res) for w in wants)

    # ------------------------------------------------------------ transaction (us-core)
