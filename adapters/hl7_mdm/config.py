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

    @model_validator(mode="after")
    def _pair(self) -> "MllpTls":
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise field_error(missing, "cert_file and key_file go together (mutual TLS)")
        return self


HdField = Annotated[str, Field(min_length=1, max_length=227, pattern=r"^[^|^~\\&\r\n]+$")]


class Hl7MdmConfig(Settings):
    host: Name
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: MllpTls = MllpTls()
    timeout_s: TimeoutS = 30.0         # wait for the ACK this long
    max_resends: Annotated[int, Field(ge=0, le=10)] = 3
    sending_application: HdField = "CHARTBRIDGE"    # MSH-3
    sending_facility: HdField                       # MSH-4
    receiving_application: HdField                  # MSH-5
    receiving_facility: HdField                     # MSH-6
    obx_mode: Literal["per_section", "per_note"] = "per_section"
    ack_mode: Literal["original", "enhanced"] = "original"
    # None = the org's policy.correction
    correction: Literal["replace", "append"] | None = None
