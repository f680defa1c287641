"""Settings for an HL7 v2 MDM interface over MLLP (the `targets.hl7_mdm` block)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from chartbridge.config.types import FileRef, Name, Settings, TimeoutS, field_error


class MllpTls(Settings):
    enabled: bool = False
    ca_file: FileRef | None = None     # CA bundle to verify the receiver; system store if absent
    cert_file: FileRef | None = None   # our client certificate (mutual TLS)...
    key_file: FileRef | None = None    # ...and its private key (both or neither)
    server_name: Name | None = None    # name to verify in the receiver's certificate; = host

    @model_validator(mode="after")
    def _pair(self) -> "MllpTls":
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise field_error(missing, "cert_file and key_file go together (mutual TLS)")
        return self


HdField = Annotated[str, Field(min_length=1, max_length=227, pattern=r"^[^|^~\\&\r\n]+$")]
Table0155 = Literal["AL", "ER", "NE", "SU"]


class Hl7MdmConfig(Settings):
    host: Name
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: MllpTls = MllpTls()
    timeout_s: TimeoutS = 30.0         # wait for the ACK this long (per attempt)
    connect_timeout_s: TimeoutS = 10.0
    max_resends: Annotated[int, Field(ge=0, le=10)] = 3   # same MSH-10/TXA-12 after a timeout
    # connections to the receiver, each stop-and-wait; more than 1 only where the site's
    # interface engine accepts several connections on this port (throughput after downtime)
    connections: Annotated[int, Field(ge=1, le=16)] = 1
    sending_application: HdField = "CHARTBRIDGE"    # MSH-3
    sending_facility: HdField                       # MSH-4
    receiving_application: HdField                  # MSH-5
    receiving_facility: HdField                     # MSH-6
    processing_id: Literal["P", "T", "D"] = "P"     # MSH-11 (table 0103)
    obx_mode: Literal["per_section", "per_note"] = "per_section"
    value_type: Literal["FT", "TX"] = "FT"          # OBX-2 / TXA-3
    patient_class: Annotated[str, Field(pattern=r"^[A-Z]{1,2}$")] = "U"   # PV1-2 (table 0004)
    ack_mode: Literal["original", "enhanced"] = "original"
    # enhanced mode: MSH-15 (commit ACK) and MSH-16 (application ACK, read on the same
    # connection after the commit ACK when not NE)
    accept_ack: Table0155 = "AL"
    application_ack: Table0155 = "NE"
    # the receiver recognises a resent MSH-10/TXA-12 and does not file it twice; only then
    # may a write whose ACK was lost be resent automatically (reconcile -> "not there")
    receiver_dedupes: bool = True
    # None = the org's policy.correction
    correction: Literal["replace", "append"] | None = None
