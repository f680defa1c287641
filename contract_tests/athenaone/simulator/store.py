"""athenaOne's side of the data: practices (their departments and patients) and the
clinical documents uploaded to them, with the fields athena answers on a listing or get."""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from chartbridge.core.errors import InputError

from .validation import _INT, Upload

DEFAULT_PRACTICE_ID = "195900"      # athena's public preview sandbox practice number
OTHER_PRACTICE_ID = "195901"


@dataclass
class Practice:
    practiceid: str
    departments: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)


class DocumentStore:
    """Practices and documents, under the simulator's lock; at most ``max_documents``."""

    def __init__(self, lock: threading.RLock, max_documents: int) -> None:
        self._lock = lock
        self.max_documents = max_documents
        self.practices: dict[str, Practice] = {}
        self.documents: dict[int, dict[str, Any]] = {}
        self.attachments: dict[int, bytes] = {}
        self.uploads = 0
        self._ids = itertools.count(200_001)

    def add_practice(self, practiceid: str, *, departments: Iterable[str] = (),
                     patients: Iterable[str] = ()) -> None:
        pid = str(practiceid)
        if not _INT.match(pid):
            raise InputError("practiceid must be digits", field="practiceid")
        with self._lock:
            p = self.practices.setdefault(pid, Practice(pid))
            p.departments.update(str(d) for d in departments)
            p.patients.update(str(x) for x in patients)

    def practice(self, practiceid: str) -> Practice:
        with self._lock:
            return self.practices[practiceid]

    def knows(self, practiceid: str) -> bool:
        with self._lock:
            return practiceid in self.practices

    def create(self, practiceid: str, patientid: str, upload: Upload) -> int | None:
        """File an upload that passed its checks; its clinicaldocumentid, None when full."""
        form = upload.form
        with self._lock:
            if len(self.documents) >= self.max_documents:
                return None
            docid = next(self._ids)
            now = datetime.now(timezone.utc).astimezone()
            self.documents[docid] = {
                "clinicaldocumentid": docid,
                "documentid": str(docid),
                "practiceid": practiceid,
                "patientid": patientid,
                "departmentid": form["departmentid"],
                "documentclass": "CLINICALDOCUMENT",
                "documentsubclass": form["documentsubclass"],
                "status": "CLOSED" if upload.closed else "REVIEW",
                "priority": form.get("priority") or "2",
                "internalnote": form.get("internalnote") or None,
                "documentdata": upload.text,
                "attachmenttype": upload.attachment_type,
                "originalfilename": form.get("originalfilename") or None,
                "providerid": form.get("providerid") or None,
                "clinicalproviderid": form.get("clinicalproviderid") or None,
                "documenttypeid": form.get("documenttypeid") or None,
                "observationdate": form.get("observationdate") or None,
                "observationtime": form.get("observationtime") or None,
                "autoclose": upload.closed,
                "documentsource": "INTERFACE",
                "documentroute": "INTERFACE",
                "createddatetime": now.isoformat(timespec="seconds"),
                "createddate": now.strftime("%m/%d/%Y"),
                "lastmodifieddatetime": now.isoformat(timespec="seconds"),
                "createduser": "API-SIM",
                "deleted": False,
            }
            if upload.attachment is not None:
                self.attachments[docid] = upload.attachment
            self.uploads += 1
        return docid

    @staticmethod
    def public(doc: dict[str, Any], showmetadata: bool) -> dict[str, Any]:
        """A document as athena answers it (internal fields left out)."""
        out = {k: v for k, v in doc.items()
               if v is not None and k not in ("practiceid", "autoclose", "deleted",
                                              "attachmenttype", "originalfilename")}
        if showmetadata and doc.get("attachmenttype"):
            out["filetype"] = doc["attachmenttype"]
            if doc.get("originalfilename"):
                out["originalfilename"] = doc["originalfilename"]
        return out

    def find(self, practiceid: str, patientid: str, departmentid: str, *,
             subclass: str | None, status: str | None, showdeleted: bool,
             showmetadata: bool) -> list[dict[str, Any]]:
        with self._lock:
            return [self.public(d, showmetadata) for d in self.documents.values()
                    if d["practiceid"] == practiceid and d["patientid"] == patientid
                    and d["departmentid"] == departmentid
                    and (subclass is None or d["documentsubclass"] == subclass)
                    and (status is None or d["status"] == status)
                    and (showdeleted or not d["deleted"])]

    def get(self, practiceid: str, patientid: str, docid: str,
            showmetadata: bool) -> dict[str, Any] | None:
        with self._lock:
            doc = self.documents.get(int(docid)) if _INT.match(docid) else None
            if doc is None or doc["practiceid"] != practiceid or doc["patientid"] != patientid:
                return None
            return self.public(doc, showmetadata)

    def listing(self, patientid: str | None = None, practiceid: str | None = None
                ) -> list[dict[str, Any]]:
        """Stored clinical documents (newest last), each with the attachment bytes under
        ``attachment_bytes`` when one was sent."""
        with self._lock:
            out = []
            for docid, doc in self.documents.items():
                if patientid is not None and doc["patientid"] != str(patientid):
                    continue
                if practiceid is not None and doc["practiceid"] != str(practiceid):
                    continue
                item = dict(doc)
                item["attachment_bytes"] = self.attachments.get(docid)
                out.append(item)
            return out
