"""The receiver's documents and the chapter 9 rules that change them: T02 files a new
document (an identical resend is not filed twice), T08 edits and T11 cancels one still
unavailable (TXA-19 UN), T10 replaces a document (the parent becomes obsolete) and T06 adds
an addendum to an available one, both linked by TXA-13."""
from __future__ import annotations

import collections
import time
from typing import Any

from .validation import _Problem


class DocumentStore:
    """Documents by TXA-12; ``stats`` counts what the rules did (shared with the receiver)."""

    def __init__(self, max_documents: int, stats: collections.Counter) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.max_documents = max_documents
        self.stats = stats

    def apply(self, event: str, facts: dict[str, Any], control_id: str) -> tuple[str, str]:
        """Change the store; returns (ack text, document key). Raises _Problem (AE)."""
        docs, key = self.documents, facts["key"]
        stamp = {"event": event, "control_id": control_id, "at": time.time()}

        def new_doc(parent: str | None) -> dict[str, Any]:
            if len(docs) >= self.max_documents:
                raise _Problem("AE", 207, "document store is full")
            if facts["availability"] not in ("AV", "UN"):
                raise _Problem("AE", 103, "TXA-19 of a new document must be AV or UN",
                               "TXA^1^19")
            return {"unique_document_number": key, "document_type": facts["document_type"],
                    "completion_status": facts["completion"],
                    "availability_status": facts["availability"], "parent": parent,
                    "replaced_by": None, "addenda": [], "patient_id": facts["patient"],
                    "text": facts["text"], "obx": facts["obx"], "version": 1,
                    "created_by": event, "history": [stamp]}

        def existing(k: str, where: str) -> dict[str, Any]:
            doc = docs.get(k)
            if doc is None:
                raise _Problem("AE", 204, f"{where} names no known document",
                               "TXA^1^" + where.split("-")[1])
            if doc["patient_id"] != facts["patient"]:
                raise _Problem("AE", 207, f"PID-3 does not match the patient of the document "
                               f"named in {where}", "PID^1^3")
            return doc

        if event == "T02":
            if key in docs:
                old = docs[key]
                same = (old["text"] == facts["text"] and old["patient_id"] == facts["patient"]
                        and old["document_type"] == facts["document_type"])
                if not same:
                    raise _Problem("AE", 205, "TXA-12 already names a different document",
                                   "TXA^1^12")
                self.stats["t02_duplicates_not_filed"] += 1
                return "document already filed; not filed twice", key
            docs[key] = new_doc(None)
            return "document filed", key

        if event == "T08":
            doc = existing(key, "TXA-12")
            if doc["availability_status"] != "UN":
                raise _Problem("AE", 207, "T08 edit is only valid while the document is "
                               "unavailable (TXA-19 UN); use T10 or T06", "TXA^1^19")
            doc.update(text=facts["text"], obx=facts["obx"],
                       completion_status=facts["completion"],
                       availability_status=facts["availability"],
                       document_type=facts["document_type"], version=doc["version"] + 1)
            doc["history"].append(stamp)
            return "document edited", key

        if event == "T11":
            doc = existing(key, "TXA-12")
            if doc["availability_status"] != "UN":
                raise _Problem("AE", 207, "T11 cancel is only valid while the document is "
                               "unavailable (TXA-19 UN)", "TXA^1^19")
            doc["availability_status"] = "CA"
            doc["history"].append(stamp)
            return "document cancelled", key

        # T06 addendum, T10 replacement: a new document linked to its parent by TXA-13
        parent_key = facts["parent"]
        if parent_key == key:
            raise _Problem("AE", 205, "TXA-12 must differ from TXA-13", "TXA^1^12")
        parent = existing(parent_key, "TXA-13")
        if key in docs:
            raise _Problem("AE", 205, "TXA-12 already names a document", "TXA^1^12")
        if event == "T10":
            if parent["availability_status"] in ("OB", "CA"):
                raise _Problem("AE", 207, "the parent document is already obsolete or "
                               "cancelled", "TXA^1^13")
            docs[key] = new_doc(parent_key)
            parent["availability_status"] = "OB"
            parent["replaced_by"] = key
            parent["history"].append(stamp)
            return "replacement filed; parent obsolete", key
        if parent["availability_status"] != "AV":
            raise _Problem("AE", 207, "T06 addendum needs an available parent (TXA-19 AV)",
                           "TXA^1^13")
        docs[key] = new_doc(parent_key)
        parent["addenda"].append(key)
        parent["history"].append(stamp)
        return "addendum filed", key
